//! Step 5 for requests nobody has claimed: cancelling one, or collapsing it
//! into a newer request, completes it and counts it down on its buildset
//! as a claimed request's completion does (`stepwise`, `script`).

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;

use super::sql;
use crate::db::buildset_finish::count_down_buildsets;
use crate::db::{BeginWrite, DbError, Results, Store};

impl Store {
    /// Cancel a request nobody has claimed yet: it completes as Cancelled.
    pub async fn cancel_pending_request(&self, id: i64) -> Result<bool, DbError> {
        self.complete_unclaimed(id, Results::Cancelled).await
    }

    /// Complete a request nobody has claimed (cancelled, or collapsed into a
    /// newer one), finishing its buildset if it was the last open request.
    /// False when it was claimed, complete or missing.
    pub(crate) async fn complete_unclaimed(
        &self,
        id: i64,
        results: Results,
    ) -> Result<bool, DbError> {
        let which = format!("id = ? AND {}", sql::CLAIMABLE);
        let which = &which;
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!(
                "SELECT buildsetid FROM buildrequests WHERE {which}{}",
                d.for_update()
            );
            let bs: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(bs) = bs else {
                tx.rollback().await?;
                return Ok(false);
            };
            let guarded = format!("{which}{}", d.in_tx());
            sqlx::query(AssertSqlSafe(sql::complete(&guarded, "?", d.now())))
                .bind(results.as_i64())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            count_down_buildsets!(tx, d, &BTreeMap::from([(bs, 1)]), results);
            commit_checked!(tx, d);
            Ok(true)
        })
    }
}
