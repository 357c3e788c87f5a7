//! The store suite, the schema: status and upgrades, and that every store
//! future can be spawned.
//! Every case runs on MariaDB (with and without the one-trip scripts) and
//! SQLite (`store_suite!`).

#[macro_use]
mod common;

use std::time::Duration;

use common::TestDb;
use flotilla_master::db::{
    BuildFilter, BuilderId, DbError, NewBuildset, NewChange, RequestFilter, Results,
};

store_suite!(schema_status_and_upgrade_are_idempotent,);

async fn schema_status_and_upgrade_are_idempotent(db: &TestDb) {
    let s = db.store().await;
    let st = s.schema_status().await.unwrap();
    assert_eq!(st.current, None);
    assert!(!st.is_current());
    assert_eq!(st.pending.len() as i64, st.latest);
    match s.ensure_current().await {
        Err(e @ DbError::SchemaNotCurrent { .. }) => {
            assert!(e.to_string().contains("flotilla db upgrade"), "{e}")
        }
        other => panic!("expected SchemaNotCurrent, got {other:?}"),
    }
    let applied = s.upgrade().await.unwrap();
    assert_eq!(applied.len() as i64, st.latest);
    let st = s.schema_status().await.unwrap();
    assert!(st.is_current(), "{st:?}");
    assert_eq!(st.current, Some(st.latest));
    assert!(s.upgrade().await.unwrap().is_empty());
    s.ensure_current().await.unwrap();
}

/// Every store future must be `Send`, so masters can spawn them on tokio.
/// Compiling is the test.
#[allow(dead_code, clippy::let_underscore_future)]
fn store_futures_are_send(s: flotilla_master::db::Store, m: flotilla_master::db::MasterRow) {
    fn send<T: Send>(_: T) {}
    let d = Duration::from_secs(1);
    let v = serde_json::json!({});
    send(flotilla_master::db::Store::connect("sqlite::memory:"));
    send(s.close());
    send(s.upgrade());
    send(s.schema_status());
    send(s.ensure_current());
    send(s.db_now());
    send(s.register_master("m"));
    send(s.heartbeat(1));
    send(s.set_draining(1, true));
    send(s.set_draining_by_name("m", true));
    send(s.master_flags(1));
    send(s.deactivate_master(1));
    send(s.list_masters(true));
    send(s.release_older_incarnations(&m));
    send(s.active_heartbeats());
    send(s.declare_dead(1, chrono::Utc::now()));
    send(s.release_inactive());
    send(s.release_expired_claims(d));
    send(s.ensure_builders(&[]));
    send(s.ensure_worker("w", &v));
    send(s.add_change(&NewChange::default()));
    send(s.add_buildset(&NewBuildset::default()));
    send(s.add_buildsets_with_state(&[], "o", "n", None, &v));
    send(s.cas_state("o", "n", None, &v));
    send(s.add_changes_with_state(&[], "o", "n", None, &v));
    send(s.request_details(&[]));
    send(s.claim_candidates(&[]));
    send(s.pick_and_claim_per_builder(1, &[]));
    send(s.claim_within_limit(1, BuilderId(1), 1, 1));
    send(s.claims_held(1));
    send(s.release_orphaned_claims(1, &[]));
    send(s.renew_claims(1, &[]));
    send(s.unclaim(1, &[]));
    send(s.complete_requests(1, &[], Results::Success));
    send(s.cancel_pending_request(1));
    send(s.start_build(1, 1, 1, 1));
    send(s.finish_build(1, 1, 1, Results::Success, true));
    send(s.add_step(1, 0, "s"));
    send(s.start_step(1));
    send(s.finish_step(1, Results::Success, ""));
    send(s.create_log(1, "l"));
    send(s.append_log_chunk(1, 0, b""));
    send(s.read_log(1));
    send(s.step_log_id(1, 0, "l"));
    send(s.list_requests(&RequestFilter::default()));
    send(s.get_request(1));
    send(s.list_builds(&BuildFilter::default()));
    send(s.get_build(1));
    send(s.list_steps(1));
    send(s.builder_counts());
    send(s.get_state("o", "n"));
    send(s.set_state("o", "n", &v));
    send(s.claim_object(1, "k", "n", d));
    send(s.release_objects(1));
}
