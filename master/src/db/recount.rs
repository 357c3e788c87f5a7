//! Checking the written claim counts against the rows they count.
//!
//! `builders.claimed_requests` is kept by every claim, release and
//! completion, and `max_concurrent_builds` trusts it. A count that drifted
//! (a path that missed it, an abort certification reported oddly on a
//! multi-primary cluster) would make a limit tighter or looser than
//! configured for ever, so masters recount now and then: each builder in
//! its own short transaction that first locks the builder row — which every
//! claim and release of its requests also writes — so the count cannot move
//! while it is taken, and on Galera a claim committed on another node that
//! this count did not see conflicts with the write and one of them is
//! retried.

use sqlx::AssertSqlSafe;

use super::rows::DbRow;
use super::{BeginWrite, DbError, Store};

/// A builder whose count was wrong: (builder id, was, now).
pub type Drift = (i64, i64, i64);

impl Store {
    /// Set every builder's `claimed_requests` to the number of its
    /// unfinished claimed requests; returns the counts that were wrong.
    pub async fn recount_claimed(&self) -> Result<Vec<Drift>, DbError> {
        let builders: Vec<i64> = with_pool!(self, |pool, d| {
            sqlx::query_scalar("SELECT id FROM builders ORDER BY id")
                .fetch_all(pool)
                .await?
        });
        let mut drift = Vec::new();
        for id in builders {
            let fixed = with_pool_retry!(self, |pool, d| {
                let mut tx = pool.begin_write().await?;
                let sql = format!(
                    "SELECT claimed_requests FROM builders WHERE id = ?{}",
                    d.for_update()
                );
                let Some(row) = sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                let written = row.i64("claimed_requests")?;
                let sql = format!(
                    "SELECT COUNT(*) FROM buildrequests WHERE builderid = ? AND {}",
                    super::claims::sql::HELD
                );
                let actual: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                if written == actual {
                    tx.rollback().await?;
                    return Ok(None);
                }
                let sql = format!(
                    "UPDATE builders SET claimed_requests = ? WHERE id = ?{}",
                    d.in_tx()
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(actual)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                commit_checked!(tx, d);
                Ok::<_, DbError>(Some((id, written, actual)))
            })?;
            drift.extend(fixed);
        }
        Ok(drift)
    }
}
