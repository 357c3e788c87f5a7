//! Read-only listings for the HTTP API and the CLI: requests, builds, steps
//! and per-builder queue counts, paginated.

use super::{BuildFilter, BuildInfo, BuilderCounts, DbError, RequestFilter, RequestRow, StepRow, Store};

impl Store {
    pub async fn list_requests(&self, f: &RequestFilter) -> Result<Vec<RequestRow>, DbError> {
        unimplemented!()
    }
    pub async fn get_request(&self, id: i64) -> Result<Option<RequestRow>, DbError> {
        unimplemented!()
    }
    pub async fn list_builds(&self, f: &BuildFilter) -> Result<Vec<BuildInfo>, DbError> {
        unimplemented!()
    }
    pub async fn get_build(&self, id: i64) -> Result<Option<BuildInfo>, DbError> {
        unimplemented!()
    }
    pub async fn list_steps(&self, build_id: i64) -> Result<Vec<StepRow>, DbError> {
        unimplemented!()
    }
    pub async fn builder_counts(&self) -> Result<Vec<BuilderCounts>, DbError> {
        unimplemented!()
    }
}
