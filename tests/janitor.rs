//! Retention on MariaDB: a database holding 10,000 old builds with logs
//! (seeded in bulk from MariaDB's `seq_1_to_N` tables, times backdated)
//! shrinks to the horizons with `flotilla janitor`, while a live cluster
//! keeps claiming and running builds on the same database; nothing inside
//! the horizons is touched, and `--dry-run` counts exactly what then goes.
//! Old inactive master incarnations go too once nothing refers to them.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, ClusterSpec, flotilla_bin};
use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Row};

const RETENTION: &str = r#"
[retention]
logs = "7days"
builds = "30days"
requests = "60days"
changes = "30days"
interval = "10h"
batch_size = 500
pause = "5ms"
"#;

/// Seed sets: (first id, rows, age in days).
const OLD: (i64, i64, i64) = (1_000_000, 10_000, 100); // everything goes
const MIDDLE: (i64, i64, i64) = (2_000_000, 300, 40); // builds go, requests stay
const RECENT: (i64, i64, i64) = (3_000_000, 300, 10); // only log contents go
const FRESH: (i64, i64, i64) = (4_000_000, 300, 1); // untouched
const CHUNKS_PER_LOG: i64 = 2;

async fn exec(conn: &mut MySqlConnection, sql: String) {
    sqlx::query(AssertSqlSafe(sql.clone()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn count(conn: &mut MySqlConnection, sql: &str) -> i64 {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get::<i64, _>(0)
}

/// Ids of a set: `col BETWEEN first+1 AND first+n`.
fn in_set(col: &str, (first, n, _): (i64, i64, i64)) -> String {
    format!("{col} BETWEEN {} AND {}", first + 1, first + n)
}

/// One complete build per row of the set, with a request, a buildset (with a
/// property and a source stamp), a step and a log of two 1 KiB chunks, all
/// finished `age` days ago.
async fn seed(conn: &mut MySqlConnection, builder: i64, (first, n, age): (i64, i64, i64)) {
    let t = format!("(NOW(6) - INTERVAL {age} DAY)");
    let from = format!("FROM seq_1_to_{n}");
    let id = format!("{first} + seq");
    exec(
        conn,
        format!(
            "INSERT INTO buildsets (id, reason, submitted_at, complete, complete_at, results) \
         SELECT {id}, 'seeded', {t}, 1, {t}, 0 {from}"
        ),
    )
    .await;
    exec(
        conn,
        format!(
            "INSERT INTO buildset_properties (buildsetid, name, value, source) \
         SELECT {id}, 'p', '\"v\"', 'seed' {from}"
        ),
    )
    .await;
    exec(
        conn,
        format!(
            "INSERT INTO sourcestamps (id, branch, revision, repository, created_at) \
         SELECT {id}, 'main', CONCAT('rev', seq), 'repo', {t} {from}"
        ),
    )
    .await;
    exec(
        conn,
        format!(
            "INSERT INTO buildset_sourcestamps (buildsetid, sourcestampid) SELECT {id}, {id} {from}"
        ),
    )
    .await;
    exec(
        conn,
        format!(
            "INSERT INTO buildrequests (id, buildsetid, builderid, priority, complete, results, \
         submitted_at, complete_at) SELECT {id}, {id}, {builder}, 0, 1, 0, {t}, {t} {from}"
        ),
    )
    .await;
    exec(conn, format!(
        "INSERT INTO builds (id, number, builderid, buildrequestid, masterid, workerid, \
         started_at, complete_at, results) SELECT {id}, {id}, {builder}, {id}, 0, NULL, {t}, {t}, 0 {from}"
    )).await;
    exec(
        conn,
        format!(
            "INSERT INTO steps (id, buildid, number, name, started_at, complete_at, results) \
         SELECT {id}, {id}, 0, 'work', {t}, {t}, 0 {from}"
        ),
    )
    .await;
    exec(
        conn,
        format!(
            "INSERT INTO logs (id, stepid, name, type, num_chunks, complete) \
         SELECT {id}, {id}, 'stdio', 's', {CHUNKS_PER_LOG}, 1 {from}"
        ),
    )
    .await;
    for chunk in 0..CHUNKS_PER_LOG {
        exec(conn, format!(
            "INSERT INTO logchunks (logid, seq, content) SELECT {id}, {chunk}, REPEAT('x', 1024) {from}"
        )).await;
    }
}

async fn seed_changes(conn: &mut MySqlConnection, n: i64, age: i64, tag: &str) {
    exec(conn, format!(
        "INSERT INTO changes (author, comments, branch, revision, repository, project, codebase, \
         files, properties, when_timestamp, category, created_at) \
         SELECT 'a', '{tag}', 'main', CONCAT('{tag}', seq), 'repo', '', '', '[]', '{{}}', \
         NOW(6) - INTERVAL {age} DAY, NULL, NOW(6) - INTERVAL {age} DAY FROM seq_1_to_{n}"
    )).await;
}

/// An inactive master incarnation last seen `age` days ago; returns its id.
async fn old_master(conn: &mut MySqlConnection, name: &str, age: i64) -> i64 {
    exec(
        conn,
        format!(
            "INSERT INTO masters (name, boot_time, nonce, active, draining, last_active) \
             VALUES ('{name}', NOW(6) - INTERVAL {boot} DAY, '{name}', 0, 0, \
             NOW(6) - INTERVAL {age} DAY)",
            boot = age + 1
        ),
    )
    .await;
    count(
        conn,
        &format!("SELECT id FROM masters WHERE nonce = '{name}'"),
    )
    .await
}

async fn master_exists(conn: &mut MySqlConnection, id: i64) -> bool {
    count(
        conn,
        &format!("SELECT COUNT(*) FROM masters WHERE id = {id}"),
    )
    .await
        == 1
}

fn janitor(config: &std::path::Path, dry_run: bool) -> Command {
    let mut cmd = Command::new(flotilla_bin());
    cmd.arg("janitor").arg("--config").arg(config);
    if dry_run {
        cmd.arg("--dry-run");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn reported(out: &str, what: &str) -> i64 {
    out.lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix(what)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {what} in {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_old_builds_shrink_to_the_horizons_while_builds_run() {
    let builders = format!(
        r#"
[[builders]]
name = "echo"
workers = ["w1", "w2"]
  [[builders.steps]]
  name = "print"
  command = ["sh", "-c", "echo live build $FLOTILLA_REVISION"]
{RETENTION}"#
    );
    let cluster = Cluster::start("janitor", ClusterSpec::new(1, 2, &builders)).await;
    let mut conn = cluster
        .db
        .as_ref()
        .expect("a fresh MariaDB database")
        .connect()
        .await;
    exec(
        &mut conn,
        "INSERT INTO builders (name) VALUES ('archive')".into(),
    )
    .await;
    let builder = count(&mut conn, "SELECT id FROM builders WHERE name = 'archive'").await;
    let seeding = Instant::now();
    for set in [OLD, MIDDLE, RECENT, FRESH] {
        seed(&mut conn, builder, set).await;
    }
    seed_changes(&mut conn, 1000, 100, "old").await;
    seed_changes(&mut conn, 10, 1, "new").await;
    // Master incarnations: one nothing refers to and one that ran only old
    // builds go; one that ran fresh builds, and one dead for only a day, stay.
    let retired = old_master(&mut conn, "retired", 100).await;
    let ran_old = old_master(&mut conn, "ran-old", 100).await;
    let ran_fresh = old_master(&mut conn, "ran-fresh", 100).await;
    let recently_dead = old_master(&mut conn, "recently-dead", 1).await;
    exec(
        &mut conn,
        format!(
            "UPDATE builds SET masterid = {ran_old} WHERE {}",
            in_set("id", OLD)
        ),
    )
    .await;
    exec(
        &mut conn,
        format!(
            "UPDATE builds SET masterid = {ran_fresh} WHERE {}",
            in_set("id", FRESH)
        ),
    )
    .await;
    println!(
        "seeded 10,900 builds with logs in {:.1?}",
        seeding.elapsed()
    );

    // A live build from before the clean-up, which must survive it.
    let before = cluster.force(0, "echo", "before").await;
    cluster
        .wait_complete(0, &[before], Duration::from_secs(60))
        .await;

    // Dry run: exact counts, nothing deleted.
    let out = janitor(&cluster.config, true)
        .output()
        .expect("run janitor");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old_builds = OLD.1 + MIDDLE.1;
    assert_eq!(
        reported(&text, "log chunks"),
        (old_builds + RECENT.1) * CHUNKS_PER_LOG,
        "{text}"
    );
    assert_eq!(reported(&text, "builds"), old_builds, "{text}");
    assert_eq!(reported(&text, "buildsets"), OLD.1, "{text}");
    assert_eq!(reported(&text, "sourcestamps"), OLD.1, "{text}");
    assert_eq!(reported(&text, "changes"), 1000, "{text}");
    assert_eq!(reported(&text, "masters"), 2, "{text}");
    assert_eq!(
        count(&mut conn, "SELECT COUNT(*) FROM builds").await,
        10_901
    );
    for id in [retired, ran_old, ran_fresh, recently_dead] {
        assert!(
            master_exists(&mut conn, id).await,
            "a dry run deleted master {id}"
        );
    }

    // The real run, with builds forced and run meanwhile.
    let started = Instant::now();
    let mut child = janitor(&cluster.config, false)
        .spawn()
        .expect("run janitor");
    let mut live = Vec::new();
    let mut finished_while_cleaning = 0;
    for i in 0..6 {
        let id = cluster.force(0, "echo", &format!("during{i}")).await;
        cluster
            .wait_complete(0, &[id], Duration::from_secs(60))
            .await;
        if child.try_wait().expect("janitor status").is_none() {
            finished_while_cleaning += 1;
        }
        live.push(id);
    }
    let status = child.wait().expect("janitor exit");
    let took = started.elapsed();
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        std::io::Read::read_to_string(&mut s, &mut out).ok();
    }
    println!("{out}");
    println!(
        "janitor finished in {took:.1?}; {finished_while_cleaning} of {} live builds completed while it ran",
        live.len()
    );
    assert!(status.success(), "janitor failed: {out}");
    for r in cluster
        .wait_complete(0, &live, Duration::from_secs(60))
        .await
    {
        assert_eq!(r["results"], "success", "{r}");
    }

    // Past the horizons: gone.
    let sets = [
        ("old", OLD),
        ("middle", MIDDLE),
        ("recent", RECENT),
        ("fresh", FRESH),
    ];
    let mut left = Vec::new();
    for (name, set) in sets {
        let q = |table: &str, col: &str| {
            format!("SELECT COUNT(*) FROM {table} WHERE {}", in_set(col, set))
        };
        left.push((
            name,
            count(&mut conn, &q("buildsets", "id")).await,
            count(&mut conn, &q("buildrequests", "id")).await,
            count(&mut conn, &q("buildset_properties", "buildsetid")).await,
            count(&mut conn, &q("sourcestamps", "id")).await,
            count(&mut conn, &q("builds", "id")).await,
            count(&mut conn, &q("steps", "id")).await,
            count(&mut conn, &q("logs", "id")).await,
            count(&mut conn, &q("logchunks", "logid")).await,
        ));
    }
    let (n_mid, n_rec, n_fresh) = (MIDDLE.1, RECENT.1, FRESH.1);
    assert_eq!(
        left,
        vec![
            // set, buildsets, requests, properties, sourcestamps, builds, steps, logs, chunks
            ("old", 0, 0, 0, 0, 0, 0, 0, 0),
            ("middle", n_mid, n_mid, n_mid, n_mid, 0, 0, 0, 0),
            ("recent", n_rec, n_rec, n_rec, n_rec, n_rec, n_rec, n_rec, 0),
            (
                "fresh",
                n_fresh,
                n_fresh,
                n_fresh,
                n_fresh,
                n_fresh,
                n_fresh,
                n_fresh,
                n_fresh * CHUNKS_PER_LOG
            ),
        ]
    );
    let recent_logs = format!(
        "SELECT COUNT(*) FROM logs WHERE num_chunks = 0 AND {}",
        in_set("id", RECENT)
    );
    assert_eq!(
        count(&mut conn, &recent_logs).await,
        n_rec,
        "emptied logs stay listed"
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT COUNT(*) FROM changes WHERE comments = 'old'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT COUNT(*) FROM changes WHERE comments = 'new'"
        )
        .await,
        10
    );

    assert!(!master_exists(&mut conn, retired).await);
    assert!(!master_exists(&mut conn, ran_old).await);
    assert!(master_exists(&mut conn, ran_fresh).await);
    assert!(master_exists(&mut conn, recently_dead).await);
    assert_eq!(
        count(
            &mut conn,
            "SELECT COUNT(*) FROM masters WHERE active = 1 AND name = 'm1'"
        )
        .await,
        1,
        "the live master stays"
    );
    assert_eq!(reported(&out, "masters"), 2, "{out}");

    // Live builds and their logs are untouched.
    for id in std::iter::once(before).chain(live) {
        let b = &cluster.builds_of(0, id).await[0];
        let log = cluster.step_log(0, b["id"].as_i64().unwrap(), 0).await;
        assert!(log.contains("live build"), "request {id}: {log:?}");
    }

    // A second run finds nothing more.
    let out = janitor(&cluster.config, false)
        .output()
        .expect("run janitor");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("janitor: 0 rows"), "{text}");
}
