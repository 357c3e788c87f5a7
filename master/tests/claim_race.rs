//! Many masters, each with its own pool, race over one queue on MariaDB until
//! it is empty; every request must be completed exactly once.
//!
//! Half the masters use `pick_and_claim` (locking pick, `SKIP LOCKED`); the
//! other half peek at pending requests without locks and then try
//! `claim_requests` on them, so the plain compare-and-swap path is raced too.
//! Prints lost races (ids tried for but not won) and throughput.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{TestDb, builder, master};
use flotilla_master::db::{RequestFilter, Results, Store};
use sqlx::Connection;

const MASTERS: usize = 8;
const REQUESTS: i64 = 5000;
const BATCH: usize = 25;

#[derive(Default)]
struct Tally {
    completed: Vec<i64>,
    tried: usize,
    won: usize,
    transient_errors: usize,
}

/// Retry a store call on transient errors (deadlock victim, lock wait), counting them.
macro_rules! retrying {
    ($tally:expr, $call:expr) => {
        loop {
            match $call.await {
                Ok(v) => break v,
                Err(e) if e.is_transient() => {
                    if $tally.transient_errors < 2 {
                        eprintln!("transient: {e}");
                    }
                    $tally.transient_errors += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("store error: {e}"),
            }
        }
    };
}

async fn run_master(store: Store, name: String, builder: i64, peek: bool) -> Tally {
    let me = master(&store, &name).await;
    let mut t = Tally::default();
    let mut idle_rounds = 0;
    loop {
        let won = if peek {
            let pending = retrying!(
                t,
                store.list_requests(&RequestFilter {
                    complete: Some(false),
                    limit: 4 * BATCH as i64,
                    ..Default::default()
                })
            );
            let candidates: Vec<i64> = pending
                .iter()
                .filter(|r| r.claimed_by_masterid.is_none())
                .map(|r| r.id)
                .take(BATCH)
                .collect();
            t.tried += candidates.len();
            retrying!(t, store.claim_requests(me, &candidates))
        } else {
            let won = retrying!(t, store.pick_and_claim(me, &[builder], BATCH));
            t.tried += won.len();
            won
        };
        t.won += won.len();
        if won.is_empty() {
            idle_rounds += 1;
            if idle_rounds > 3 {
                let left = retrying!(
                    t,
                    store.list_requests(&RequestFilter {
                        complete: Some(false),
                        limit: 1,
                        ..Default::default()
                    })
                );
                if left.is_empty() {
                    return t;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        idle_rounds = 0;
        let done = retrying!(t, store.complete_requests(me, &won, Results::Success));
        assert_eq!(
            done.len(),
            won.len(),
            "{name}: a claim we won was not ours to complete"
        );
        t.completed.extend(done);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn masters_race_over_one_queue() {
    let db = TestDb::mysql().await;
    let seed_store = db.upgraded_store().await;
    let b = builder(&seed_store, "race").await;
    let (bs, _) = seed_store
        .add_buildset(&flotilla_master::db::NewBuildset {
            reason: "race".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut conn = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO buildrequests (buildsetid, builderid, priority, complete, submitted_at) \
         SELECT ?, ?, seq MOD 3, 0, NOW(6) FROM seq_1_to_5000",
    )
    .bind(bs)
    .bind(b)
    .execute(&mut conn)
    .await
    .unwrap();
    // Requests inserted behind the store's back: give the buildset their count.
    sqlx::query("UPDATE buildsets SET open_requests = ? WHERE id = ?")
        .bind(REQUESTS)
        .bind(bs)
        .execute(&mut conn)
        .await
        .unwrap();
    println!("seeded {REQUESTS} requests in {:?}", started.elapsed());

    let mut stores = Vec::new();
    for _ in 0..MASTERS {
        stores.push(db.store_with(2).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(run_master(s, format!("m{i}"), b, i % 2 == 1)))
        .collect();
    let mut tallies = Vec::new();
    for t in tasks {
        tallies.push(t.await.unwrap());
    }
    let elapsed = started.elapsed();

    let mut seen = BTreeSet::new();
    for t in &tallies {
        for id in &t.completed {
            assert!(seen.insert(*id), "request {id} completed twice");
        }
    }
    assert_eq!(seen.len() as i64, REQUESTS);
    let complete: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM buildrequests WHERE complete = 1 AND results = 0")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(complete, REQUESTS);
    let bs_complete: i64 = sqlx::query_scalar("SELECT complete FROM buildsets WHERE id = ?")
        .bind(bs)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        bs_complete, 1,
        "the buildset completes with its last request"
    );
    let (open, claimed): (i64, i64) = sqlx::query_as(
        "SELECT bs.open_requests, b.claimed_requests FROM buildsets bs, builders b \
         WHERE bs.id = ? AND b.id = ?",
    )
    .bind(bs)
    .bind(b)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((open, claimed), (0, 0), "the written counts end at zero");
    let _ = conn.close().await;

    for (i, t) in tallies.iter().enumerate() {
        println!(
            "m{i} ({}): completed {:5}, tried {:5}, lost races {:5}, transient errors {}",
            if i % 2 == 1 {
                "peek+claim"
            } else {
                "pick     "
            },
            t.completed.len(),
            t.tried,
            t.tried - t.won,
            t.transient_errors
        );
    }
    let lost: usize = tallies.iter().map(|t| t.tried - t.won).sum();
    let transient: usize = tallies.iter().map(|t| t.transient_errors).sum();
    println!(
        "{MASTERS} masters completed {REQUESTS} requests in {elapsed:.2?}: {:.0} requests/s, \
         {lost} lost CAS races, {transient} transient errors retried",
        REQUESTS as f64 / elapsed.as_secs_f64()
    );
}

/// The same race on one SQLite file (smaller): writers queue on
/// `BEGIN IMMEDIATE` and the busy timeout instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn masters_race_on_sqlite() {
    const N: usize = 600;
    let db = TestDb::sqlite();
    let seed_store = db.upgraded_store().await;
    let b = builder(&seed_store, "race").await;
    let (_, ids) = seed_store
        .add_buildset(&flotilla_master::db::NewBuildset {
            reason: "race".into(),
            builders: vec![(b, 0); N],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids.len(), N);
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(db.store_with(2).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(run_master(s, format!("m{i}"), b, i % 2 == 1)))
        .collect();
    let mut seen = BTreeSet::new();
    let (mut lost, mut transient) = (0, 0);
    for t in tasks {
        let t = t.await.unwrap();
        lost += t.tried - t.won;
        transient += t.transient_errors;
        for id in t.completed {
            assert!(seen.insert(id), "request {id} completed twice");
        }
    }
    assert_eq!(seen, ids.into_iter().collect());
    println!(
        "sqlite: 4 masters completed {N} requests in {:.2?}, {lost} lost CAS races, \
         {transient} transient errors retried",
        started.elapsed()
    );
}

/// The claim query must stay cheap with a deep queue (GitLab's lesson):
/// 100k pending requests over 20 builders, then timed picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_stays_cheap_with_100k_pending() {
    let db = TestDb::mysql().await;
    let s = db.upgraded_store().await;
    let names: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
    let builders = s.ensure_builders(&names).await.unwrap();
    let first = builders["b0"];
    let (bs, _) = s
        .add_buildset(&flotilla_master::db::NewBuildset {
            reason: "deep".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut conn = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO buildrequests (buildsetid, builderid, priority, complete, submitted_at) \
         SELECT ?, ? + seq MOD 20, seq MOD 5, 0, NOW(6) - INTERVAL seq SECOND \
         FROM seq_1_to_100000",
    )
    .bind(bs)
    .bind(first)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("ANALYZE TABLE buildrequests")
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    println!("seeded 100k requests in {:.2?}", started.elapsed());

    let me = master(&s, "deep").await;
    let all: Vec<i64> = builders.values().copied().collect();
    let one = [builders["b7"]];
    let rounds = 20;
    let mut times = Vec::new();
    for (label, ids) in [
        ("one builder", &one[..]),
        ("all builders", &all[..]),
        ("one builder", &one[..]),
    ] {
        let started = Instant::now();
        for _ in 0..rounds {
            assert_eq!(s.pick_and_claim(me, ids, 10).await.unwrap().len(), 10);
        }
        let per = started.elapsed() / rounds;
        println!("pick_and_claim({label}, 10) with 100k pending: {per:.2?} per call");
        times.push(per);
    }
    let wants: Vec<(i64, usize)> = all.iter().map(|b| (*b, 2)).collect();
    let started = Instant::now();
    assert_eq!(
        s.pick_and_claim_per_builder(me, &wants)
            .await
            .unwrap()
            .len(),
        40
    );
    let per = started.elapsed();
    println!("pick_and_claim_per_builder(20 builders x 2): {per:.2?}");
    times.push(per);
    let started = Instant::now();
    let counts = s.builder_counts().await.unwrap();
    assert_eq!(counts.iter().map(|c| c.pending).sum::<i64>(), 100_000);
    println!("builder_counts: {:.2?}", started.elapsed());
    // Figures only: speed is measured by `flotilla-bench scale`, never asserted in a test.
    let slowest = times.iter().max().copied().unwrap_or_default();
    println!("slowest pick at 100k pending: {slowest:.2?}");
}
