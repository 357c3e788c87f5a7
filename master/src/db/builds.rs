//! Builds and steps. Starting and finishing a build are fenced on the
//! request's claim: a master that lost the claim cannot record an outcome.

use super::{BuildRow, DbError, MasterId, Results, Store};

impl Store {
    pub async fn start_build(&self, me: MasterId, request_id: i64, builder_id: i64, worker_id: i64) -> Result<Option<BuildRow>, DbError> {
        unimplemented!()
    }
    pub async fn finish_build(&self, me: MasterId, build_id: i64, request_id: i64, results: Results, complete_request: bool) -> Result<bool, DbError> {
        unimplemented!()
    }
    pub async fn add_step(&self, build_id: i64, number: i32, name: &str) -> Result<i64, DbError> {
        unimplemented!()
    }
    pub async fn start_step(&self, step_id: i64) -> Result<(), DbError> {
        unimplemented!()
    }
    pub async fn finish_step(&self, step_id: i64, results: Results, state: &str) -> Result<(), DbError> {
        unimplemented!()
    }
}
