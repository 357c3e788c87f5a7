//! No claim is held that nobody runs: a claim a master holds without a build
//! (a commit whose answer was lost, a claim round cut short, an unclaim that
//! failed during an outage) goes back to the queue within moments, not when
//! its lease runs out.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, ClusterSpec, eventually};
use sqlx::Row;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_held_but_not_run_is_given_back_long_before_its_lease() {
    let toml = r#"
[[builders]]
name = "b"
workers = []
  [[builders.steps]]
  name = "s"
  command = ["true"]
"#;
    // The harness's lease is 60 s.
    let cluster = Cluster::start("orphans", ClusterSpec::new(1, 0, toml)).await;
    let id = cluster.force(0, "b", "r1").await;
    let mut db = cluster.connect_db().await;
    // As if a claim had committed while its answer was lost: the master
    // holds the request but runs nothing for it.
    let claimed = sqlx::query(
        "UPDATE buildrequests SET claimed_by_masterid = \
         (SELECT id FROM masters WHERE name = 'm1' AND active = 1), claimed_at = NOW(6) \
         WHERE id = ? AND claimed_by_masterid IS NULL",
    )
    .bind(id)
    .execute(&mut db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(claimed, 1);
    let start = Instant::now();
    eventually("the orphaned claim to be given back", Duration::from_secs(15), || {
        let url = cluster.db_url.clone();
        async move {
            use sqlx::Connection;
            let mut c = sqlx::mysql::MySqlConnection::connect(&url).await.ok()?;
            let row = sqlx::query(
                "SELECT claimed_by_masterid IS NULL AS free, complete FROM buildrequests WHERE id = ?",
            )
            .bind(id)
            .fetch_one(&mut c)
            .await
            .ok()?;
            (row.get::<i64, _>("free") == 1 && row.get::<i64, _>("complete") == 0).then_some(())
        }
    })
    .await;
    println!("orphaned claim given back after {:?}", start.elapsed());
    assert!(
        cluster.masters[0]
            .proc
            .output()
            .contains("gave back claims held here but not run"),
        "{}",
        cluster.dump()
    );
}
