//! Step 1, the pick: a look at the best claimable requests of some builders
//! without locking anything. The claim loop uses it to decide how many to claim of each
//! builder when its idle workers serve several builders, so that it claims
//! only what those workers can take.

use sqlx::AssertSqlSafe;

use super::sql;
use crate::db::rows::DbRow;
use crate::db::{Candidate, DbError, Store};

/// `n` builders' best claimable requests, (builder id, k) bound per builder:
/// the union of one indexed range each (columns id, builderid, priority,
/// submitted_at), never a scan of the whole queue in priority order.
fn best_per_builder_sql(n: usize) -> String {
    let one = sql::best_of_builder("id, builderid, priority, submitted_at", "?", "?");
    (0..n)
        .map(|i| format!("SELECT * FROM ({one}) AS b{i}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

impl Store {
    /// For each (builder, k): its best k claimable requests (priority, then
    /// age, then id), all builders together, unordered.
    pub async fn claim_candidates(
        &self,
        wants: &[(i64, usize)],
    ) -> Result<Vec<Candidate>, DbError> {
        let wants: Vec<(i64, i64)> = wants
            .iter()
            .filter(|(_, k)| *k > 0)
            .map(|(b, k)| (*b, i64::try_from(*k).unwrap_or(i64::MAX)))
            .collect();
        if wants.is_empty() {
            return Ok(Vec::new());
        }
        let sql = best_per_builder_sql(wants.len());
        with_pool!(self, |pool, d| {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (b, k) in &wants {
                q = q.bind(b).bind(k);
            }
            q.fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(Candidate {
                        id: r.i64("id")?,
                        builder_id: r.i64("builderid")?,
                        priority: i32::try_from(r.i64("priority")?).unwrap_or(0),
                        submitted_at: r.time("submitted_at")?,
                    })
                })
                .collect::<Result<Vec<_>, DbError>>()
        })
    }
}
