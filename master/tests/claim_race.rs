//! Many masters, each with its own pool, race over one queue until it is
//! empty, running what the claim loop runs: `pick_and_claim_per_builder`
//! for a builder without a limit and `claim_within_limit` for one with
//! `max_concurrent_builds`, every won request built (`start_build`) and
//! finished (`finish_build`). On MariaDB a third of the masters go through
//! the stored procedures (batches: scripts), a third through the one-trip
//! scripts only and a third statement by statement, at once; an
//! incarnation declared dead before the race keeps trying every claim path
//! on all three and must win nothing.
//!
//! The verdict comes from the database's rows, not from what the masters
//! say: every request complete with exactly one build, none by the dead
//! incarnation, and the limited builder's builds never overlapping more
//! than its limit.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestDb, builder, master};
use flotilla_master::db::claims::testing::claim_exactly;
use flotilla_master::db::{
    BuilderId, ClaimRound, MasterId, NewBuildset, RequestFilter, Results, Store,
};
use sqlx::Connection;

const MASTERS: usize = 8;
const FREE: i64 = 1500;
const LIMITED: i64 = 150;
const MAX: u32 = 3;
const BATCH: usize = 5;

/// The two builders raced over.
#[derive(Clone, Copy)]
struct Builders {
    free: BuilderId,
    limited: BuilderId,
}

#[derive(Default)]
struct Tally {
    built: usize,
    rounds: usize,
    lost_races: usize,
    transient_errors: usize,
}

/// Retry a store call on transient errors (deadlock victim, lock wait),
/// counting them.
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

/// One master: claim as the claim loop does (the free builder, then the
/// limited one within its limit), build every request won, until the
/// queue is empty.
async fn run_master(store: Store, name: String, b: Builders, worker: i64) -> Tally {
    let me = master(&store, &name).await;
    let mut t = Tally::default();
    let mut idle_rounds = 0;
    loop {
        let free = retrying!(t, store.pick_and_claim_per_builder(me, &[(b.free, BATCH)]));
        let limited = retrying!(t, store.claim_within_limit(me, b.limited, 2, MAX));
        t.rounds += 1;
        let won = match free.and(limited) {
            ClaimRound::Won(won) => won,
            ClaimRound::LostRaces => {
                t.lost_races += 1;
                continue;
            }
            ClaimRound::RefusedInactive => panic!("{name}: a live master was refused"),
            ClaimRound::NothingToDo => {
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
        };
        idle_rounds = 0;
        // Start every build first, then finish them: the limited builder's
        // builds run side by side as a busy master's would.
        let mut builds = Vec::new();
        for c in &won {
            let build = retrying!(t, store.start_build(me, c.request.0, c.builder.0, worker));
            let build =
                build.unwrap_or_else(|| panic!("{name}: lost request {:?} it had won", c.request));
            builds.push((build.id, c.request.0));
        }
        for (build, request) in builds {
            let done = retrying!(
                t,
                store.finish_build(me, build, request, Results::Success, true)
            );
            assert!(done, "{name}: request {request} was not its own to finish");
            t.built += 1;
        }
    }
}

/// The dead incarnation: tries every claim path on every store until the
/// race is over; each must refuse it (or find nothing left).
async fn run_ghost(
    stores: Vec<Store>,
    ghost: MasterId,
    b: Builders,
    over: Arc<AtomicBool>,
) -> usize {
    let mut tries = 0;
    while !over.load(Ordering::Relaxed) {
        for s in &stores {
            let pending: Vec<i64> = s
                .list_requests(&RequestFilter {
                    complete: Some(false),
                    limit: 4,
                    ..Default::default()
                })
                .await
                .unwrap()
                .iter()
                .filter(|r| r.claimed_by_masterid.is_none())
                .map(|r| r.id)
                .collect();
            let rounds = [
                (
                    "pick_and_claim_per_builder, one",
                    s.pick_and_claim_per_builder(ghost, &[(b.free, 1)]).await,
                ),
                (
                    "pick_and_claim_per_builder, several",
                    s.pick_and_claim_per_builder(ghost, &[(b.free, 3), (b.limited, 1)])
                        .await,
                ),
                (
                    "claim_within_limit",
                    s.claim_within_limit(ghost, b.limited, 2, MAX).await,
                ),
                ("claim_exactly", claim_exactly(s, ghost, &pending).await),
            ];
            for (path, round) in rounds {
                match round {
                    Ok(
                        ClaimRound::RefusedInactive
                        | ClaimRound::NothingToDo
                        | ClaimRound::LostRaces,
                    ) => {}
                    Ok(won @ ClaimRound::Won(_)) => {
                        panic!("the dead incarnation won {won:?} by {path}")
                    }
                    Err(e) if e.is_transient() => {}
                    Err(e) => panic!("{path}: {e}"),
                }
                tries += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    tries
}

/// Requests inserted in bulk into one buildset, behind the store's back.
async fn seed_bulk(conn: &mut sqlx::MySqlConnection, bs: i64, builder: BuilderId, n: i64) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO buildrequests (buildsetid, builderid, priority, complete, submitted_at) \
         SELECT ?, ?, seq MOD 3, 0, NOW(6) FROM seq_1_to_{n}"
    )))
    .bind(bs)
    .bind(builder.0)
    .execute(&mut *conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn masters_race_over_one_queue() {
    let db = TestDb::mysql().await;
    let seed_store = db.upgraded_store().await;
    let b = Builders {
        free: BuilderId(builder(&seed_store, "race").await),
        limited: BuilderId(builder(&seed_store, "limited").await),
    };
    let worker = seed_store
        .ensure_worker("w", &serde_json::json!({}))
        .await
        .unwrap();
    let (bs, _) = seed_store
        .add_buildset(&NewBuildset {
            reason: "race".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut conn = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    seed_bulk(&mut conn, bs, b.free, FREE).await;
    seed_bulk(&mut conn, bs, b.limited, LIMITED).await;
    sqlx::query("UPDATE buildsets SET open_requests = ? WHERE id = ?")
        .bind(FREE + LIMITED)
        .bind(bs)
        .execute(&mut conn)
        .await
        .unwrap();

    // The dead incarnation, declared dead before the race begins.
    let ghost = master(&seed_store, "ghost").await;
    let seen = seed_store
        .master_flags(ghost)
        .await
        .unwrap()
        .unwrap()
        .last_active;
    assert!(seed_store.declare_dead(ghost, seen).await.unwrap());

    let procedures = db.store_with(2).await;
    let scripts = db.store_with(2).await.without_procedures();
    let stepwise = db.store_with(2).await.stepwise();
    let over = Arc::new(AtomicBool::new(false));
    let ghost_task = tokio::spawn(run_ghost(
        vec![procedures, scripts, stepwise],
        ghost,
        b,
        over.clone(),
    ));

    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..MASTERS {
        let s = db.store_with(2).await;
        let s = match i % 3 {
            0 => s,
            1 => s.without_procedures(),
            _ => s.stepwise(),
        };
        tasks.push(tokio::spawn(run_master(s, format!("m{i}"), b, worker)));
    }
    let mut tallies = Vec::new();
    for t in tasks {
        tallies.push(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    over.store(true, Ordering::Relaxed);
    let ghost_tries = ghost_task.await.unwrap();

    // The verdict, from the rows.
    let (requests, complete): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(complete = 1 AND results = 0), 0) AS SIGNED) \
         FROM buildrequests",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((requests, complete), (FREE + LIMITED, FREE + LIMITED));
    let twice: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT buildrequestid, COUNT(*) AS n FROM builds GROUP BY buildrequestid HAVING n <> 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(twice.is_empty(), "requests built more than once: {twice:?}");
    let (builds, good): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(results = 0 AND complete_at IS NOT NULL), 0) AS SIGNED) \
         FROM builds",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        (builds, good),
        (FREE + LIMITED, FREE + LIMITED),
        "one successful build each"
    );
    let by_ghost: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM builds WHERE masterid = ?")
        .bind(ghost)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(by_ghost, 0, "the dead incarnation built");
    let peak = peak_overlap(&mut conn, b.limited).await;
    assert!(
        peak <= MAX as usize,
        "{peak} builds of the limited builder ran at once (limit {MAX})"
    );
    let (open, claimed): (i64, i64) = sqlx::query_as(
        "SELECT bs.open_requests, CAST(SUM(b.claimed_requests) AS SIGNED) FROM buildsets bs, builders b \
         WHERE bs.id = ? GROUP BY bs.open_requests",
    )
    .bind(bs)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((open, claimed), (0, 0), "the written counts end at zero");
    let bs_complete: i64 = sqlx::query_scalar("SELECT complete FROM buildsets WHERE id = ?")
        .bind(bs)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        bs_complete, 1,
        "the buildset completes with its last request"
    );
    let _ = conn.close().await;

    for (i, t) in tallies.iter().enumerate() {
        println!(
            "m{i} ({}): built {:5} in {:5} rounds, lost races {}, transient errors {}",
            ["procedures", "scripts", "stepwise"][i % 3],
            t.built,
            t.rounds,
            t.lost_races,
            t.transient_errors
        );
    }
    println!(
        "{MASTERS} masters built {} requests in {elapsed:.2?}; the limited builder peaked at \
         {peak} of {MAX}; the dead incarnation tried {ghost_tries} claims and won none",
        FREE + LIMITED
    );
}

/// The most builds of `builder` that ran at once, by their stored start
/// and end times (an end at the very microsecond of a start counts first).
async fn peak_overlap(conn: &mut sqlx::MySqlConnection, builder: BuilderId) -> usize {
    let rows: Vec<(chrono::NaiveDateTime, chrono::NaiveDateTime)> =
        sqlx::query_as("SELECT started_at, complete_at FROM builds WHERE builderid = ?")
            .bind(builder.0)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    let mut events: Vec<(chrono::NaiveDateTime, i32)> = Vec::new();
    for (start, end) in rows {
        events.push((start, 1));
        events.push((end, -1));
    }
    events.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, step) in events {
        now += step;
        peak = peak.max(now);
    }
    peak as usize
}

/// The same race on one SQLite file (smaller): writers queue on
/// `BEGIN IMMEDIATE` and the busy timeout instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn masters_race_on_sqlite() {
    let db = TestDb::sqlite();
    let seed_store = db.upgraded_store().await;
    let b = Builders {
        free: BuilderId(builder(&seed_store, "race").await),
        limited: BuilderId(builder(&seed_store, "limited").await),
    };
    let worker = seed_store
        .ensure_worker("w", &serde_json::json!({}))
        .await
        .unwrap();
    let mut wanted = vec![(b.free.0, 0); 400];
    wanted.extend(vec![(b.limited.0, 0); 60]);
    let (_, ids) = seed_store
        .add_buildset(&NewBuildset {
            reason: "race".into(),
            builders: wanted,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let s = db.store_with(2).await;
        tasks.push(tokio::spawn(run_master(s, format!("m{i}"), b, worker)));
    }
    let mut built = 0;
    for t in tasks {
        built += t.await.unwrap().built;
    }
    assert_eq!(built, ids.len());
    for id in &ids {
        let r = seed_store.get_request(*id).await.unwrap().unwrap();
        assert!(r.complete && r.results == Some(Results::Success), "{r:?}");
    }
    let builds = db
        .scalar_i64("SELECT COUNT(DISTINCT buildrequestid) FROM builds")
        .await;
    assert_eq!(builds, ids.len() as i64, "one build per request");
    assert_eq!(
        db.scalar_i64("SELECT COUNT(*) FROM builds").await,
        ids.len() as i64
    );
    println!(
        "sqlite: 4 masters built {} requests in {:.2?}",
        ids.len(),
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
            let wants: Vec<(BuilderId, usize)> = ids.iter().map(|b| (BuilderId(*b), 10)).collect();
            let won = s.pick_and_claim_per_builder(me, &wants).await.unwrap();
            assert_eq!(won.won().len(), 10 * ids.len());
        }
        let per = started.elapsed() / rounds;
        println!(
            "pick_and_claim_per_builder({label}, 10 each) with 100k pending: {per:.2?} per call"
        );
        times.push(per);
    }
    let wants: Vec<(BuilderId, usize)> = all.iter().map(|b| (BuilderId(*b), 2)).collect();
    let started = Instant::now();
    assert_eq!(
        s.pick_and_claim_per_builder(me, &wants)
            .await
            .unwrap()
            .won()
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
