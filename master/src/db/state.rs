//! Generic key/value state (`object_state`, Buildbot's object state) and
//! ownership of schedulers and change sources (`object_owners`), so each runs
//! on exactly one live master.

use std::time::Duration;

use super::{DbError, MasterId, Store};

impl Store {
    pub async fn get_state(&self, object: &str, name: &str) -> Result<Option<serde_json::Value>, DbError> {
        unimplemented!()
    }
    pub async fn set_state(&self, object: &str, name: &str, value: &serde_json::Value) -> Result<(), DbError> {
        unimplemented!()
    }
    pub async fn claim_object(&self, me: MasterId, kind: &str, name: &str, lease: Duration) -> Result<bool, DbError> {
        unimplemented!()
    }
    pub async fn release_objects(&self, me: MasterId) -> Result<u64, DbError> {
        unimplemented!()
    }
}
