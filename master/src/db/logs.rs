//! Step logs: a `logs` row per log, its content appended as numbered
//! `logchunks` rows and read back in order.

use sqlx::AssertSqlSafe;

use super::{BeginWrite, DbError, Store};

impl Store {
    /// Create log `name` of a step; creating it again returns the same log.
    pub async fn create_log(&self, step_id: i64, name: &str) -> Result<i64, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "{} INTO logs (stepid, name, type, num_chunks) VALUES (?, ?, 's', 0)",
                d.insert_ignore()
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(step_id)
                .bind(name)
                .execute(pool)
                .await?;
            Ok(
                sqlx::query_scalar("SELECT id FROM logs WHERE stepid = ? AND name = ?")
                    .bind(step_id)
                    .bind(name)
                    .fetch_one(pool)
                    .await?,
            )
        })
    }

    /// Store chunk `seq` of a log. Writing the same `seq` again replaces it, so
    /// a retried append is harmless.
    pub async fn append_log_chunk(
        &self,
        log_id: i64,
        seq: i64,
        content: &[u8],
    ) -> Result<(), DbError> {
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            sqlx::query("REPLACE INTO logchunks (logid, seq, content) VALUES (?, ?, ?)")
                .bind(log_id)
                .bind(seq)
                .bind(content)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE logs SET num_chunks = CASE WHEN num_chunks > ? THEN num_chunks ELSE ? END \
                 WHERE id = ?",
            )
            .bind(seq)
            .bind(seq + 1)
            .bind(log_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The whole log, chunks concatenated in `seq` order.
    pub async fn read_log(&self, log_id: i64) -> Result<Vec<u8>, DbError> {
        with_pool!(self, |pool, d| {
            let chunks: Vec<Vec<u8>> =
                sqlx::query_scalar("SELECT content FROM logchunks WHERE logid = ? ORDER BY seq")
                    .bind(log_id)
                    .fetch_all(pool)
                    .await?;
            Ok(chunks.concat())
        })
    }

    /// The log `name` of step `step_number` (from 0) of a build.
    pub async fn step_log_id(
        &self,
        build_id: i64,
        step_number: i32,
        name: &str,
    ) -> Result<Option<i64>, DbError> {
        with_pool!(self, |pool, d| {
            Ok(sqlx::query_scalar(
                "SELECT l.id FROM logs l JOIN steps s ON s.id = l.stepid \
                 WHERE s.buildid = ? AND s.number = ? AND l.name = ?",
            )
            .bind(build_id)
            .bind(step_number)
            .bind(name)
            .fetch_optional(pool)
            .await?)
        })
    }
}
