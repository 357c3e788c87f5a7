//! Store tests for the change and ownership listings of the HTTP API and for
//! the janitor's pruning of old master incarnations, each run against
//! MariaDB (a fresh database) and SQLite (a temporary file).

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestDb, builder, master, outlive, seed};
use flotilla_master::config::{Dur, RetentionConfig};
use flotilla_master::db::{Backend, ChangeFilter, MasterId, NewChange};
use flotilla_master::janitor;

const SHORT: Duration = Duration::from_secs(1);

store_suite!(
    changes_list_newest_first_and_filter,
    object_owners_list_with_their_masters,
    janitor_prunes_old_unreferenced_master_incarnations,
    janitor_keeps_masters_without_a_build_horizon,
    a_reference_made_after_the_pick_keeps_the_master,
);

/// SQL for the database's now minus `days` days, in the column format.
fn days_ago(db: &TestDb, days: i64) -> String {
    match db.backend {
        Backend::MySql => format!("(NOW(6) - INTERVAL {days} DAY)"),
        Backend::Sqlite => format!("strftime('%Y-%m-%d %H:%M:%f','now','-{days} days')"),
    }
}

/// Marks master `id` inactive and last seen `days` days ago.
async fn retire(db: &TestDb, id: MasterId, days: i64) {
    db.exec(&format!(
        "UPDATE masters SET active = 0, last_active = {} WHERE id = {id}",
        days_ago(db, days)
    ))
    .await;
}

async fn masters_left(db: &TestDb) -> i64 {
    db.scalar_i64("SELECT COUNT(*) FROM masters").await
}

async fn exists(db: &TestDb, id: MasterId) -> bool {
    db.scalar_i64(&format!("SELECT COUNT(*) FROM masters WHERE id = {id}"))
        .await
        == 1
}

fn retention(builds_days: Option<u64>) -> RetentionConfig {
    RetentionConfig {
        builds: builds_days.map(|d| Dur::secs(d * 86_400)),
        changes: Some(Dur::secs(365 * 86_400)),
        pause: Dur::millis(1),
        batch_size: 2,
        ..Default::default()
    }
}

async fn changes_list_newest_first_and_filter(db: &TestDb) {
    let s = db.upgraded_store().await;
    let mut props = BTreeMap::new();
    props.insert("k".to_owned(), serde_json::json!({"n": 1}));
    let a = s
        .add_change(&NewChange {
            author: "alice".into(),
            comments: "first".into(),
            branch: Some("main".into()),
            revision: Some("aaa".into()),
            repository: "repo-one".into(),
            project: "proj".into(),
            codebase: "cb".into(),
            files: vec!["a.txt".into(), "b/c.rs".into()],
            properties: props.clone(),
            category: Some("push".into()),
            when: None,
        })
        .await
        .unwrap();
    let b = s
        .add_change(&NewChange {
            branch: Some("feature".into()),
            revision: Some("bbb".into()),
            repository: "repo-one".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let c = s
        .add_change(&NewChange {
            branch: None,
            repository: "repo-two".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids = |f: ChangeFilter| {
        let s = s.clone();
        async move {
            s.list_changes(&f)
                .await
                .unwrap()
                .iter()
                .map(|c| c.change.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(ChangeFilter::default()).await, vec![c, b, a]);
    assert_eq!(
        ids(ChangeFilter {
            branch: Some("main".into()),
            ..Default::default()
        })
        .await,
        vec![a]
    );
    assert_eq!(
        ids(ChangeFilter {
            repository: Some("repo-one".into()),
            ..Default::default()
        })
        .await,
        vec![b, a]
    );
    assert_eq!(
        ids(ChangeFilter {
            branch: Some("feature".into()),
            repository: Some("repo-two".into()),
            ..Default::default()
        })
        .await,
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(ChangeFilter {
            limit: 1,
            offset: 1,
            ..Default::default()
        })
        .await,
        vec![b]
    );
    let info = s.get_change(a).await.unwrap().expect("change a");
    let got = &info.change;
    assert_eq!(got.id, a);
    assert_eq!(
        (got.author.as_str(), got.comments.as_str()),
        ("alice", "first")
    );
    assert_eq!(
        (got.branch.as_deref(), got.revision.as_deref()),
        (Some("main"), Some("aaa"))
    );
    assert_eq!(
        (
            got.repository.as_str(),
            got.project.as_str(),
            got.codebase.as_str()
        ),
        ("repo-one", "proj", "cb")
    );
    assert_eq!(got.files, vec!["a.txt".to_owned(), "b/c.rs".to_owned()]);
    assert_eq!(got.properties, props);
    assert_eq!(got.category.as_deref(), Some("push"));
    assert!(got.when <= info.created_at + chrono::Duration::seconds(1));
    let json = serde_json::to_value(&info).unwrap();
    for key in [
        "id",
        "author",
        "comments",
        "branch",
        "revision",
        "repository",
        "project",
        "codebase",
        "files",
        "properties",
        "when_timestamp",
        "category",
        "created_at",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["properties"]["k"]["n"], 1);
    assert!(s.get_change(c + 1000).await.unwrap().is_none());
}

async fn object_owners_list_with_their_masters(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let long = Duration::from_secs(600);
    assert!(
        s.claim_object(a, "scheduler", "nightly", long)
            .await
            .unwrap()
    );
    assert!(
        s.claim_object(b, "changesource", "poller", long)
            .await
            .unwrap()
    );
    assert!(s.claim_object(b, "janitor", "janitor", long).await.unwrap());
    let rows = s
        .list_object_owners(&["scheduler", "changesource"], long)
        .await
        .unwrap();
    let seen: Vec<_> = rows
        .iter()
        .map(|o| {
            (
                o.kind.as_str(),
                o.name.as_str(),
                o.master_id,
                o.master_name.as_deref(),
                o.master_active,
                o.lease_current,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("changesource", "poller", b, Some("b"), true, true),
            ("scheduler", "nightly", a, Some("a"), true, true),
        ]
    );
    assert_eq!(s.list_object_owners(&[], long).await.unwrap().len(), 3);
    // A lease not renewed within the given lease is no longer current.
    outlive(SHORT).await;
    let rows = s.list_object_owners(&["scheduler"], SHORT).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].master_active && !rows[0].lease_current, "{rows:?}");
    // The owner's master went inactive (its row not yet released).
    db.exec(&format!("UPDATE masters SET active = 0 WHERE id = {a}"))
        .await;
    let rows = s.list_object_owners(&["scheduler"], long).await.unwrap();
    assert!(!rows[0].master_active && rows[0].lease_current, "{rows:?}");
}

async fn janitor_prunes_old_unreferenced_master_incarnations(db: &TestDb) {
    let s = db.upgraded_store().await;
    let bl = builder(&s, "unit").await;
    let reqs = seed(&s, bl, 3, 0).await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();

    // Goes: inactive, silent for 100 days, nothing refers to it.
    let unreferenced = master(&s, "m").await;
    retire(db, unreferenced, 100).await;
    // Goes: its only build is past the build horizon and goes first.
    let old_build_only = master(&s, "m").await;
    retire(db, old_build_only, 100).await;
    // Stays: still active, however long silent.
    let active = master(&s, "m").await;
    db.exec(&format!(
        "UPDATE masters SET last_active = {} WHERE id = {active}",
        days_ago(db, 100)
    ))
    .await;
    // Stays: inactive, but only for a day (inside the horizon).
    let recently_dead = master(&s, "m").await;
    retire(db, recently_dead, 1).await;
    // Stay: inactive and old, but still referenced.
    let by_build = master(&s, "m").await;
    retire(db, by_build, 100).await;
    let by_claim = master(&s, "m").await;
    retire(db, by_claim, 100).await;
    let by_worker = master(&s, "m").await;
    retire(db, by_worker, 100).await;
    let by_owner = master(&s, "m").await;
    assert!(
        s.claim_object(by_owner, "scheduler", "sched", SHORT)
            .await
            .unwrap()
    );
    retire(db, by_owner, 100).await;

    let build = |number: i64, req: i64, m: MasterId, age: i64| {
        format!(
            "INSERT INTO builds (number, builderid, buildrequestid, masterid, workerid, \
             started_at, complete_at, results, state_string) \
             VALUES ({number}, {bl}, {req}, {m}, {w}, {t}, {t}, 0, '')",
            t = days_ago(db, age)
        )
    };
    db.exec(&build(1, reqs[0], old_build_only, 100)).await;
    db.exec(&build(2, reqs[1], by_build, 1)).await;
    db.exec(&format!(
        "UPDATE buildrequests SET claimed_by_masterid = {by_claim}, claimed_at = {} \
         WHERE id = {}",
        days_ago(db, 100),
        reqs[2]
    ))
    .await;
    s.worker_attached("w1", by_worker, 1, 1).await.unwrap();

    let before = masters_left(db).await;
    assert_eq!(before, 8);
    let cfg = retention(Some(30));

    // Dry run: counts what the real run removes, deletes nothing.
    let dry = janitor::run_once(&s, &cfg, true).await.unwrap();
    assert_eq!(dry.masters, 2, "{dry:?}");
    assert_eq!(dry.builds, 1, "{dry:?}");
    assert_eq!(masters_left(db).await, before);

    let done = janitor::run_once(&s, &cfg, false).await.unwrap();
    assert_eq!(done.masters, 2, "{done:?}");
    assert_eq!(done.builds, 1, "{done:?}");
    assert!(done.total() >= 3, "{done:?}");
    assert!(!exists(db, unreferenced).await);
    assert!(!exists(db, old_build_only).await);
    for (what, id) in [
        ("active", active),
        ("recently dead", recently_dead),
        ("referenced by a build", by_build),
        ("referenced by a claim", by_claim),
        ("referenced by a worker", by_worker),
        ("owning an object", by_owner),
    ] {
        assert!(exists(db, id).await, "the master {what} was deleted");
    }
    // The references are intact.
    assert_eq!(
        s.object_owner("scheduler", "sched").await.unwrap(),
        Some(by_owner)
    );
    assert_eq!(
        s.get_request(reqs[2])
            .await
            .unwrap()
            .unwrap()
            .claimed_by_masterid,
        Some(by_claim)
    );

    // Nothing more to do; a dry run agrees.
    assert_eq!(janitor::run_once(&s, &cfg, true).await.unwrap().masters, 0);
    assert_eq!(janitor::run_once(&s, &cfg, false).await.unwrap().masters, 0);
    assert_eq!(masters_left(db).await, 6);
}

async fn janitor_keeps_masters_without_a_build_horizon(db: &TestDb) {
    let s = db.upgraded_store().await;
    let old = master(&s, "m").await;
    retire(db, old, 1000).await;
    let cfg = retention(None);
    assert_eq!(janitor::run_once(&s, &cfg, true).await.unwrap().masters, 0);
    assert_eq!(janitor::run_once(&s, &cfg, false).await.unwrap().masters, 0);
    assert!(exists(db, old).await);
    // With a horizon it goes.
    let cfg = retention(Some(30));
    assert_eq!(janitor::run_once(&s, &cfg, false).await.unwrap().masters, 1);
    assert!(!exists(db, old).await);
}

async fn a_reference_made_after_the_pick_keeps_the_master(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "m").await;
    let b = master(&s, "m").await;
    retire(db, a, 100).await;
    retire(db, b, 100).await;
    let cutoffs = janitor::cutoffs(&s, &retention(Some(30))).await.unwrap();
    let mut picked = s.janitor_old_masters(&cutoffs, 10).await.unwrap();
    picked.sort();
    assert_eq!(picked, vec![a, b]);
    // Between the pick and the delete, a row comes to refer to `a`.
    db.exec(&format!(
        "INSERT INTO object_owners (kind, name, masterid, claimed_at) \
         VALUES ('scheduler', 'late', {a}, {})",
        days_ago(db, 0)
    ))
    .await;
    assert_eq!(
        s.janitor_delete_masters(&cutoffs, &picked).await.unwrap(),
        1
    );
    assert!(exists(db, a).await, "a referenced master was deleted");
    assert!(!exists(db, b).await);
    assert_eq!(s.object_owner("scheduler", "late").await.unwrap(), Some(a));
}
