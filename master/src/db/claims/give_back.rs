//! Step 6, giving back: requests a master won but cannot run, and claims
//! it holds that nothing here runs any more, go back to the queue.

use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use super::counts::count_claims;
use super::{dedup, sql};
use crate::db::dialect::placeholders;
use crate::db::{BeginWrite, DbError, MasterId, Store};

impl Store {
    /// Give back requests `me` holds and has not completed; returns those released.
    pub async fn unclaim(&self, me: MasterId, ids: &[i64]) -> Result<Vec<i64>, DbError> {
        let ids = &dedup(ids);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!("{}{}", sql::those_held("id", ids.len()), d.for_update());
            let mut q = sqlx::query_scalar(AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            let mine: Vec<i64> = q.bind(me).fetch_all(&mut *tx).await?;
            if !mine.is_empty() {
                let which = format!(
                    "id IN ({}) AND {}{}",
                    placeholders(mine.len()),
                    sql::held_by("?"),
                    d.in_tx()
                );
                let mut q = sqlx::query(AssertSqlSafe(sql::unclaim(&which)));
                for id in &mine {
                    q = q.bind(id);
                }
                q.bind(me).execute(&mut *tx).await?;
                count_claims!(tx, d, &mine, -1);
            }
            commit_checked!(tx, d);
            Ok(mine)
        })
    }

    /// Give back claims of `me` that nothing here runs, each only if its
    /// `claimed_at` is still the one given (compare-and-swap, skipping rows
    /// another session holds locked). Returns the ids released.
    pub async fn release_orphaned_claims(
        &self,
        me: MasterId,
        claims: &[(i64, DateTime<Utc>)],
    ) -> Result<Vec<i64>, DbError> {
        self.release_claims_cas(claims.iter().map(|(id, at)| (*id, me, *at)).collect())
            .await
    }
}
