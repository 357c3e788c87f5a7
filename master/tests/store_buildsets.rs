//! The store suite, buildsets: creating them with their requests, creating
//! them together with scheduler state, and completing each once with its last
//! request.
//! Every case runs on MariaDB (with and without the one-trip scripts) and
//! SQLite (`store_suite!`).

#[macro_use]
mod common;

use std::collections::BTreeMap;

use common::{TestClaims, TestDb, builder, master, seed};
use flotilla_master::db::{NewBuildset, NewChange, Patch, RequestFilter, Results, SourceStamp};

store_suite!(
    add_buildset_creates_requests,
    buildsets_with_state_commit_together,
    buildsets_with_state_race,
    a_buildset_completes_once_when_its_requests_finish_together,
);

async fn add_buildset_creates_requests(db: &TestDb) {
    let s = db.upgraded_store().await;
    let ids = s
        .ensure_builders(&["unit".to_string(), "lint".to_string()])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    // Idempotent, also concurrently.
    let s2 = db.store().await;
    let names = vec!["unit".to_string(), "lint".to_string(), "docs".to_string()];
    let (i1, i2) = tokio::join!(s.ensure_builders(&names), s2.ensure_builders(&names));
    let (i1, i2) = (i1.unwrap(), i2.unwrap());
    assert_eq!(i1, i2);
    assert_eq!(i1["unit"], ids["unit"]);
    let mut props = BTreeMap::new();
    props.insert("owner".to_string(), serde_json::json!("alice"));
    props.insert("n".to_string(), serde_json::json!([1, 2]));
    let stamps = vec![
        SourceStamp {
            repository: "https://example.com/r.git".into(),
            branch: Some("main".into()),
            revision: Some("abc123".into()),
            project: "p".into(),
            codebase: "".into(),
            patch: Some(Patch {
                body: b"--- a\n+++ b\n\xff".to_vec(),
                level: 1,
                subdir: Some("sub".into()),
                author: "bob".into(),
                comment: "try".into(),
            }),
        },
        SourceStamp {
            repository: "https://example.com/lib.git".into(),
            codebase: "lib".into(),
            ..Default::default()
        },
    ];
    let (bs, reqs) = s
        .add_buildset(&NewBuildset {
            reason: "force".into(),
            external_idstring: Some("ext-1".into()),
            scheduler: Some("force".into()),
            sourcestamps: stamps.clone(),
            properties: props.clone(),
            builders: vec![(ids["unit"], 3), (ids["lint"], 0)],
            parent_buildid: None,
            change_ids: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(reqs.len(), 2);
    let details = s.request_details(&reqs).await.unwrap();
    assert_eq!(details.len(), 2);
    assert_eq!(details[0].id, reqs[0]);
    assert_eq!(details[0].buildset_id, bs);
    assert_eq!(details[0].builder, "unit");
    assert_eq!(details[0].builder_id, ids["unit"]);
    assert_eq!(details[0].priority, 3);
    assert_eq!(details[0].reason, "force");
    assert_eq!(details[0].sourcestamps, stamps);
    assert_eq!(details[0].properties, props);
    assert_eq!(details[1].builder, "lint");
    let listed = s
        .list_requests(&RequestFilter {
            buildset_id: Some(bs),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|r| !r.complete && r.claimed_by_master.is_none())
    );
    let change = s
        .add_change(&NewChange {
            author: "alice".into(),
            comments: "fix".into(),
            branch: Some("main".into()),
            revision: Some("abc".into()),
            repository: "r".into(),
            files: vec!["a.rs".into()],
            when: Some(chrono::Utc::now()),
            ..Default::default()
        })
        .await
        .unwrap();
    let change2 = s.add_change(&NewChange::default()).await.unwrap();
    assert!(change2 > change);
}

/// Rows in every table a buildset writes, to see that a lost move wrote none.
async fn buildset_rows(db: &TestDb) -> [i64; 5] {
    let mut out = [0; 5];
    let tables = [
        "buildsets",
        "sourcestamps",
        "buildset_sourcestamps",
        "buildset_properties",
        "buildrequests",
    ];
    for (n, t) in out.iter_mut().zip(tables) {
        *n = db.scalar_i64(&format!("SELECT COUNT(*) FROM {t}")).await;
    }
    out
}

async fn buildsets_with_state_commit_together(db: &TestDb) {
    let s = db.upgraded_store().await;
    let ids = s
        .ensure_builders(&["unit".to_string(), "lint".to_string()])
        .await
        .unwrap();
    let fired = |rev: &str| NewBuildset {
        reason: format!("nightly {rev}"),
        scheduler: Some("nightly".into()),
        sourcestamps: vec![SourceStamp {
            repository: "https://example.com/r.git".into(),
            branch: Some("main".into()),
            revision: Some(rev.into()),
            ..Default::default()
        }],
        properties: BTreeMap::from([("rev".to_string(), serde_json::json!(rev))]),
        builders: vec![(ids["unit"], 1), (ids["lint"], 0)],
        ..Default::default()
    };
    let obj = "scheduler:nightly";
    let (v1, v2) = (
        serde_json::json!({"checked": "01:00"}),
        serde_json::json!({"checked": "02:00"}),
    );

    // Absent state, the move wins: state and buildsets both there.
    let made = s
        .add_buildsets_with_state(&[fired("a"), fired("b")], obj, "state", None, &v1)
        .await
        .unwrap()
        .expect("creating absent state wins");
    assert_eq!(made.len(), 2);
    assert!(made[0].0 < made[1].0);
    for ((bs, reqs), rev) in made.iter().zip(["a", "b"]) {
        assert_eq!(reqs.len(), 2);
        let details = s.request_details(reqs).await.unwrap();
        assert_eq!(details.len(), 2);
        assert!(details.iter().all(|d| d.buildset_id == *bs));
        assert_eq!(details[0].builder, "unit");
        assert_eq!(details[0].priority, 1);
        assert_eq!(details[1].builder, "lint");
        assert_eq!(details[0].reason, format!("nightly {rev}"));
        assert_eq!(details[0].sourcestamps, fired(rev).sourcestamps);
        assert_eq!(details[0].properties, fired(rev).properties);
    }
    assert_eq!(s.get_state(obj, "state").await.unwrap(), Some(v1.clone()));
    assert_eq!(buildset_rows(db).await, [2, 2, 2, 2, 4]);

    // Absent expected but present: lost, nothing written.
    assert_eq!(
        s.add_buildsets_with_state(&[fired("c")], obj, "state", None, &v2)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get_state(obj, "state").await.unwrap(), Some(v1.clone()));
    assert_eq!(buildset_rows(db).await, [2, 2, 2, 2, 4]);

    // Present state, the move wins.
    let (bs, reqs) = s
        .add_buildsets_with_state(&[fired("d")], obj, "state", Some(&v1), &v2)
        .await
        .unwrap()
        .expect("the move from the current value wins")
        .pop()
        .unwrap();
    assert_eq!(s.get_state(obj, "state").await.unwrap(), Some(v2.clone()));
    assert_eq!(buildset_rows(db).await, [3, 3, 3, 3, 6]);
    let listed = s
        .list_requests(&RequestFilter {
            buildset_id: Some(bs),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut listed: Vec<i64> = listed.iter().map(|r| r.id).collect();
    listed.sort_unstable();
    assert_eq!(listed, reqs);
    let status = s.buildset_status(bs).await.unwrap().unwrap();
    assert!(!status.complete);

    // Someone else moved the state: lost, no buildset, source stamp,
    // property or request, the state untouched.
    assert_eq!(
        s.add_buildsets_with_state(&[fired("e"), fired("f")], obj, "state", Some(&v1), &v2)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get_state(obj, "state").await.unwrap(), Some(v2.clone()));
    assert_eq!(buildset_rows(db).await, [3, 3, 3, 3, 6]);

    // Expecting a value where there is no state: lost, and no state created.
    assert_eq!(
        s.add_buildsets_with_state(&[fired("g")], "scheduler:other", "state", Some(&v1), &v2)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get_state("scheduler:other", "state").await.unwrap(), None);
    assert_eq!(buildset_rows(db).await, [3, 3, 3, 3, 6]);

    // No buildset: just the move, in the same way.
    assert_eq!(
        s.add_buildsets_with_state(&[], obj, "state", Some(&v2), &v1)
            .await
            .unwrap(),
        Some(vec![])
    );
    assert_eq!(s.get_state(obj, "state").await.unwrap(), Some(v1));
    assert_eq!(buildset_rows(db).await, [3, 3, 3, 3, 6]);
}

/// Two masters that both believe they own a scheduler fire the same tick at
/// once: exactly one buildset is created each time.
async fn buildsets_with_state_race(db: &TestDb) {
    let s1 = db.upgraded_store().await;
    let s2 = db.store().await;
    let b = builder(&s1, "unit").await;
    let bs = NewBuildset {
        reason: "periodic".into(),
        scheduler: Some("periodic".into()),
        sourcestamps: vec![SourceStamp {
            repository: "r".into(),
            ..Default::default()
        }],
        builders: vec![(b, 0)],
        ..Default::default()
    };
    let mut expected: Option<serde_json::Value> = None;
    for tick in 0..6 {
        let new = serde_json::json!({ "tick": tick });
        let (r1, r2) = tokio::join!(
            s1.add_buildsets_with_state(
                std::slice::from_ref(&bs),
                "scheduler:p",
                "state",
                expected.as_ref(),
                &new
            ),
            s2.add_buildsets_with_state(
                std::slice::from_ref(&bs),
                "scheduler:p",
                "state",
                expected.as_ref(),
                &new
            ),
        );
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        assert!(
            r1.is_some() != r2.is_some(),
            "tick {tick}: exactly one wins, got {r1:?} and {r2:?}"
        );
        assert_eq!(
            db.scalar_i64("SELECT COUNT(*) FROM buildsets").await,
            tick + 1
        );
        assert_eq!(
            s1.get_state("scheduler:p", "state").await.unwrap(),
            Some(new.clone())
        );
        expected = Some(new);
    }
    assert_eq!(buildset_rows(db).await, [6, 6, 6, 0, 6]);
}

/// Masters finishing the requests of one buildset at the same moment, through
/// both completion paths: the buildset completes with its last request, once,
/// with the worst results by rank (Warnings is worse than Skipped although
/// its code is lower).
async fn a_buildset_completes_once_when_its_requests_finish_together(db: &TestDb) {
    let setup = db.upgraded_store().await;
    let bl = builder(&setup, "unit").await;
    let w = setup
        .ensure_worker("w1", &serde_json::json!({}))
        .await
        .unwrap();
    let outcomes = [
        Results::Success,
        Results::Skipped,
        Results::Warnings,
        Results::Success,
    ];
    for round in 0..6 {
        let r = seed(&setup, bl, outcomes.len(), 0).await;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(outcomes.len()));
        let mut tasks = Vec::new();
        for (i, (id, outcome)) in r.iter().copied().zip(outcomes).enumerate() {
            let s = db.store().await;
            let m = master(&s, &format!("m{round}-{i}")).await;
            assert_eq!(s.claim_requests(m, &[id]).await.unwrap(), vec![id]);
            let build = if i % 2 == 1 {
                Some(s.start_build(m, id, bl, w).await.unwrap().unwrap())
            } else {
                None
            };
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let done = match build {
                    Some(b) => s.finish_build(m, b.id, id, outcome, true).await.unwrap(),
                    None => s.complete_requests(m, &[id], outcome).await.unwrap() == vec![id],
                };
                s.close().await;
                done
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap(), "every completion is accepted");
        }
        let bs = setup.get_request(r[0]).await.unwrap().unwrap().buildset_id;
        assert_eq!(
            db.scalar_i64(&format!("SELECT complete FROM buildsets WHERE id = {bs}"))
                .await,
            1,
            "round {round}: the buildset completes with its last request"
        );
        assert_eq!(
            db.scalar_i64(&format!("SELECT results FROM buildsets WHERE id = {bs}"))
                .await,
            Results::Warnings.as_i64(),
            "round {round}: worst results by rank"
        );
    }
}
