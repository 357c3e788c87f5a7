//! Store tests for provenance, on MariaDB and SQLite: a buildset records
//! the changes behind it, reads back whole (source stamps, changes,
//! properties, requests), shows its reason and first source stamp on its
//! requests and builds, filters builds by branch and revision, and gives
//! the source a builder last built.

#[macro_use]
mod common;

use std::collections::BTreeMap;

use common::{TestClaims, TestDb, builder, master};
use flotilla_master::db::{BuildFilter, NewBuildset, NewChange, Patch, SourceStamp};

store_suite!(a_buildset_reads_back_with_its_provenance);

fn change(rev: &str) -> NewChange {
    NewChange {
        author: "ada".into(),
        comments: format!("commit {rev}"),
        branch: Some("main".into()),
        revision: Some(rev.into()),
        repository: "https://example.com/app.git".into(),
        files: vec!["src/lib.rs".into()],
        ..Default::default()
    }
}

async fn a_buildset_reads_back_with_its_provenance(db: &TestDb) {
    let s = db.upgraded_store().await;
    let b = builder(&s, "unit").await;
    let c1 = s.add_change(&change("r1")).await.unwrap();
    let c2 = s.add_change(&change("r2")).await.unwrap();
    let mut props = BTreeMap::new();
    props.insert("tier".to_owned(), serde_json::json!("gold"));
    let (bs, reqs) = s
        .add_buildset(&NewBuildset {
            reason: "two changes on main".into(),
            scheduler: Some("on-main".into()),
            sourcestamps: vec![
                SourceStamp {
                    repository: "https://example.com/app.git".into(),
                    branch: Some("main".into()),
                    revision: Some("r2".into()),
                    ..Default::default()
                },
                SourceStamp {
                    repository: "https://example.com/lib.git".into(),
                    branch: Some("stable".into()),
                    revision: Some("l9".into()),
                    codebase: "lib".into(),
                    patch: Some(Patch {
                        body: b"diff".to_vec(),
                        level: 1,
                        author: "bob".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            properties: props,
            builders: vec![(b, 0)],
            // A repeat is recorded once.
            change_ids: vec![c2, c1, c2],
            ..Default::default()
        })
        .await
        .unwrap();
    let info = s.get_buildset(bs).await.unwrap().unwrap();
    assert_eq!(info.reason, "two changes on main");
    assert_eq!(info.scheduler.as_deref(), Some("on-main"));
    assert_eq!(info.buildrequest_ids, reqs);
    assert_eq!(info.properties["tier"], "gold");
    let ids: Vec<i64> = info.changes.iter().map(|c| c.change.id).collect();
    assert_eq!(ids, vec![c1, c2]);
    assert_eq!(info.changes[1].change.files, vec!["src/lib.rs".to_owned()]);
    assert_eq!(info.sourcestamps.len(), 2);
    assert!(!info.sourcestamps[0].patch);
    assert!(info.sourcestamps[1].patch);
    assert_eq!(info.sourcestamps[1].patch_author.as_deref(), Some("bob"));
    assert!(s.get_buildset(bs + 1000).await.unwrap().is_none());
    let details = s.request_details(&reqs).await.unwrap();
    assert_eq!(details[0].change_ids, vec![c1, c2]);

    // Requests and builds show the reason and the first source stamp.
    let req = s.get_request(reqs[0]).await.unwrap().unwrap();
    assert_eq!(req.source.reason, "two changes on main");
    assert_eq!(req.source.branch.as_deref(), Some("main"));
    assert_eq!(req.source.revision.as_deref(), Some("r2"));
    let m = master(&s, "a").await;
    assert_eq!(s.claim_requests(m, &reqs).await.unwrap(), reqs);
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let build = s.start_build(m, reqs[0], b, w).await.unwrap().unwrap();
    let filter = |branch: Option<&str>, revision: Option<&str>| BuildFilter {
        branch: branch.map(str::to_owned),
        revision: revision.map(str::to_owned),
        ..Default::default()
    };
    let found = s.list_builds(&filter(Some("main"), None)).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, build.id);
    assert_eq!(found[0].buildset_id, bs);
    assert_eq!(
        found[0].source.repository.as_deref(),
        Some("https://example.com/app.git")
    );
    // Any source stamp of the buildset matches, not only the first.
    assert_eq!(
        s.list_builds(&filter(Some("stable"), Some("l9")))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.list_builds(&filter(Some("main"), Some("l9")))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.list_builds(&filter(None, Some("nope")))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.get_build(build.id)
            .await
            .unwrap()
            .unwrap()
            .source
            .revision
            .as_deref(),
        Some("r2")
    );

    let last = s.last_source_of_builder(b).await.unwrap().unwrap();
    assert_eq!(last.repository, "https://example.com/app.git");
    assert_eq!(last.branch.as_deref(), Some("main"));
}
