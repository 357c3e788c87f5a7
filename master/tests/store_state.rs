//! The store suite, key/value state, object ownership, and changes recorded
//! with their source's state.
//! Every case runs on MariaDB (with and without the one-trip scripts) and
//! SQLite (`store_suite!`).

#[macro_use]
mod common;

use std::time::Duration;

use common::{TestDb, master, outlive};
use flotilla_master::db::NewChange;

const SHORT: Duration = Duration::from_secs(1);

store_suite!(
    object_ownership,
    object_state,
    cas_state_and_changes_with_state,
);

async fn object_ownership(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let lease = SHORT;
    assert!(s.claim_object(a, "scheduler", "main", lease).await.unwrap());
    assert!(!s.claim_object(b, "scheduler", "main", lease).await.unwrap());
    assert!(
        s.claim_object(a, "scheduler", "main", lease).await.unwrap(),
        "renew"
    );
    assert!(
        s.claim_object(b, "scheduler", "other", lease)
            .await
            .unwrap()
    );
    outlive(lease).await;
    // a did not renew: b may take it; then a may not.
    assert!(s.claim_object(b, "scheduler", "main", lease).await.unwrap());
    assert!(!s.claim_object(a, "scheduler", "main", lease).await.unwrap());
    assert_eq!(s.object_owner("scheduler", "main").await.unwrap(), Some(b));
    assert_eq!(s.release_objects(b).await.unwrap(), 2);
    assert!(s.claim_object(a, "scheduler", "main", lease).await.unwrap());
    // Owned by an inactive master: free at once.
    s.deactivate_master(a).await.unwrap();
    assert!(
        !s.claim_object(a, "scheduler", "x", lease).await.unwrap(),
        "inactive"
    );
    assert!(s.claim_object(b, "scheduler", "main", lease).await.unwrap());
}

async fn object_state(db: &TestDb) {
    let s = db.upgraded_store().await;
    assert_eq!(s.get_state("sched", "last").await.unwrap(), None);
    let v = serde_json::json!({"rev": "abc", "n": [1, 2, 3]});
    s.set_state("sched", "last", &v).await.unwrap();
    assert_eq!(s.get_state("sched", "last").await.unwrap(), Some(v));
    s.set_state("sched", "last", &serde_json::json!(7))
        .await
        .unwrap();
    assert_eq!(
        s.get_state("sched", "last").await.unwrap(),
        Some(serde_json::json!(7))
    );
}

async fn cas_state_and_changes_with_state(db: &TestDb) {
    let s = db.upgraded_store().await;
    let (v1, v2) = (serde_json::json!({"n": 1}), serde_json::json!({"n": 2}));
    // Absent: created once; a second creator loses.
    assert!(s.cas_state("src", "revs", None, &v1).await.unwrap());
    assert!(!s.cas_state("src", "revs", None, &v2).await.unwrap());
    assert_eq!(s.get_state("src", "revs").await.unwrap(), Some(v1.clone()));
    // Present: moved only from the value it holds.
    assert!(!s.cas_state("src", "revs", Some(&v2), &v1).await.unwrap());
    assert!(s.cas_state("src", "revs", Some(&v1), &v2).await.unwrap());
    assert_eq!(s.get_state("src", "revs").await.unwrap(), Some(v2.clone()));
    // Expecting a value where there is none creates nothing.
    assert!(!s.cas_state("src", "other", Some(&v1), &v2).await.unwrap());
    assert_eq!(s.get_state("src", "other").await.unwrap(), None);

    let change = |rev: &str| NewChange {
        author: "alice".into(),
        revision: Some(rev.into()),
        repository: "r".into(),
        ..Default::default()
    };
    let v3 = serde_json::json!({"n": 3});
    let ids = s
        .add_changes_with_state(&[change("a"), change("b")], "src", "revs", Some(&v2), &v3)
        .await
        .unwrap()
        .expect("the move from the current value wins");
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    // A stale or absent expectation records nothing.
    assert_eq!(
        s.add_changes_with_state(&[change("c")], "src", "revs", Some(&v2), &v1)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.add_changes_with_state(&[change("c")], "src", "revs", None, &v1)
            .await
            .unwrap(),
        None
    );
    assert_eq!(db.scalar_i64("SELECT COUNT(*) FROM changes").await, 2);
    assert_eq!(s.get_state("src", "revs").await.unwrap(), Some(v3));
    let fresh = s
        .add_changes_with_state(&[change("d")], "src2", "revs", None, &v1)
        .await
        .unwrap()
        .expect("absent state is created");
    assert_eq!(fresh.len(), 1);
    assert_eq!(s.get_state("src2", "revs").await.unwrap(), Some(v1));
}
