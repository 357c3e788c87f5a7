//! Builders, workers, changes and buildsets: everything that creates build
//! requests, and reading back what a claimed request is about.

use std::collections::HashMap;

use super::{DbError, NewBuildset, NewChange, RequestDetails, Store};

impl Store {
    pub async fn ensure_builders(&self, names: &[String]) -> Result<HashMap<String, i64>, DbError> {
        unimplemented!()
    }
    pub async fn ensure_worker(&self, name: &str, info: &serde_json::Value) -> Result<i64, DbError> {
        unimplemented!()
    }
    pub async fn add_change(&self, c: &NewChange) -> Result<i64, DbError> {
        unimplemented!()
    }
    pub async fn add_buildset(&self, b: &NewBuildset) -> Result<(i64, Vec<i64>), DbError> {
        unimplemented!()
    }
    pub async fn request_details(&self, ids: &[i64]) -> Result<Vec<RequestDetails>, DbError> {
        unimplemented!()
    }
}
