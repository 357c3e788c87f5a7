//! Steps of builds and the build's one-line state. Starting and finishing
//! a build belong to the claim protocol (`claims::build`): both are fenced
//! on the request's claim.

use sqlx::AssertSqlSafe;

use super::{DbError, Results, Store};

impl Store {
    /// Add step `number` (from 0) of a build, not started yet. Adding the
    /// same number again returns the existing step.
    pub async fn add_step(&self, build_id: i64, number: i32, name: &str) -> Result<i64, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "{} INTO steps (buildid, number, name, state_string) VALUES (?, ?, ?, '')",
                d.insert_ignore()
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(build_id)
                .bind(number)
                .bind(name)
                .execute(pool)
                .await?;
            Ok(
                sqlx::query_scalar("SELECT id FROM steps WHERE buildid = ? AND number = ?")
                    .bind(build_id)
                    .bind(number)
                    .fetch_one(pool)
                    .await?,
            )
        })
    }

    pub async fn start_step(&self, step_id: i64) -> Result<(), DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "UPDATE steps SET started_at = {}, state_string = 'running' WHERE id = ?",
                d.now()
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(step_id)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    pub async fn finish_step(
        &self,
        step_id: i64,
        results: Results,
        state: &str,
    ) -> Result<(), DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "UPDATE steps SET complete_at = {now}, started_at = COALESCE(started_at, {now}), \
                 results = ?, state_string = ? WHERE id = ?",
                now = d.now()
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(results.as_i64())
                .bind(state)
                .bind(step_id)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Set the one-line summary shown for a build (e.g. "running test").
    pub async fn set_build_state(&self, build_id: i64, state: &str) -> Result<(), DbError> {
        with_pool!(self, |pool, d| {
            sqlx::query("UPDATE builds SET state_string = ? WHERE id = ?")
                .bind(state)
                .bind(build_id)
                .execute(pool)
                .await?;
            Ok(())
        })
    }
}
