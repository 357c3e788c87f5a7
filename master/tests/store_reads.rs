//! The store suite, the API's reads and counts.
//! Every case runs on MariaDB (with and without the one-trip scripts) and
//! SQLite (`store_suite!`).

#[macro_use]
mod common;

use std::collections::BTreeMap;

use common::{TestClaims, TestDb, builder, master, seed};
use flotilla_master::db::{BuildFilter, RequestFilter, Results};

store_suite!(reads_and_counts,);

async fn reads_and_counts(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let x = builder(&s, "x").await;
    let y = builder(&s, "y").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let rx = seed(&s, x, 3, 0).await;
    seed(&s, y, 1, 0).await;
    s.claim_requests(a, &rx[..2]).await.unwrap();
    let b1 = s.start_build(a, rx[0], x, w).await.unwrap().unwrap();
    s.complete_requests(a, &[rx[1]], Results::Success)
        .await
        .unwrap();
    let counts = s.builder_counts().await.unwrap();
    let by: BTreeMap<_, _> = counts
        .iter()
        .map(|c| (c.name.as_str(), (c.pending, c.running)))
        .collect();
    assert_eq!(by["x"], (1, 1));
    assert_eq!(by["y"], (1, 0));
    let pending = s
        .list_requests(&RequestFilter {
            complete: Some(false),
            builder: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        pending.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![rx[2], rx[0]],
        "newest first"
    );
    let page = s
        .list_requests(&RequestFilter {
            limit: 1,
            offset: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    let json = serde_json::to_value(&pending[1]).unwrap();
    assert_eq!(json["claimed_by_master"], "a");
    assert_eq!(json["builder"], "x");
    let done = s.get_request(rx[1]).await.unwrap().unwrap();
    assert_eq!(serde_json::to_value(&done).unwrap()["results"], "success");
    let builds = s
        .list_builds(&BuildFilter {
            builder: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(builds.len(), 1);
    let info = &builds[0];
    assert_eq!(
        (info.id, info.number, info.buildrequest_id),
        (b1.id, 1, rx[0])
    );
    assert_eq!(
        (info.master.as_str(), info.worker.as_deref()),
        ("a", Some("w1"))
    );
    assert_eq!(info.started_at, b1.started_at);
    assert!(info.complete_at.is_none() && info.results.is_none());
    assert!(
        s.list_builds(&BuildFilter {
            request_id: Some(rx[2]),
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
    assert!(s.get_build(987_654).await.unwrap().is_none());
}
