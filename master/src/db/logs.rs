//! Step logs: a `logs` row per log, content appended as numbered `logchunks`.

use super::{DbError, Store};

impl Store {
    pub async fn create_log(&self, step_id: i64, name: &str) -> Result<i64, DbError> {
        unimplemented!()
    }
    pub async fn append_log_chunk(&self, log_id: i64, seq: i64, content: &[u8]) -> Result<(), DbError> {
        unimplemented!()
    }
    pub async fn read_log(&self, log_id: i64) -> Result<Vec<u8>, DbError> {
        unimplemented!()
    }
    pub async fn step_log_id(&self, build_id: i64, step_number: i32, name: &str) -> Result<Option<i64>, DbError> {
        unimplemented!()
    }
}
