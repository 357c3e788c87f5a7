//! Step 2 for a builder with `max_concurrent_builds`: claims that keep its
//! claimed, unfinished requests across the cluster within the limit.
//!
//! The limit is checked against the builder row's written count
//! (`claimed_requests`, kept by every claim, release and completion) inside
//! the write that raises it, never by counting claimed requests: two
//! limited claims of one builder both write its row, so on one server the
//! row lock queues them and on Galera certification aborts one (retried, it
//! then reads the other's count). A count read from the requests would let
//! two nodes each see room.
//!
//! Lock order: the requests first (a `SKIP LOCKED` pick, which never
//! waits), then the builder row. Every other transaction that writes a
//! builder's count — a claim, a completion, a release — also locks requests
//! before the builder row, so none of them can hold the builder row while
//! waiting for a request this claim holds (docs/design.md, "Lock order").

use sqlx::AssertSqlSafe;

use super::stepwise::claim_locked;
use super::{Claim, ClaimRound, sql};
use crate::db::{BeginWrite, BuilderId, DbError, MasterId, Store};

impl Store {
    /// Claims for `me` up to `want` of the best claimable requests of
    /// `builder`, whose `max_concurrent_builds` is `max`, so that its
    /// claimed, unfinished requests never exceed `max`.
    pub async fn claim_within_limit(
        &self,
        me: MasterId,
        builder: BuilderId,
        want: usize,
        max: u32,
    ) -> Result<ClaimRound, DbError> {
        let want = i64::try_from(want).unwrap_or(i64::MAX);
        let max = i64::from(max);
        if want == 0 {
            return Ok(ClaimRound::NothingToDo);
        }
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let pick = format!(
                "{}{}",
                sql::best_of_builder("id", "?", "?"),
                d.skip_locked()
            );
            let mut ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(pick))
                .bind(builder.0)
                .bind(want)
                .fetch_all(&mut *tx)
                .await?;
            if ids.is_empty() {
                tx.rollback().await?;
                return Ok(ClaimRound::NothingToDo);
            }
            let sql = format!(
                "SELECT claimed_requests FROM builders WHERE id = ?{}",
                d.for_update()
            );
            let claimed: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(builder.0)
                .fetch_optional(&mut *tx)
                .await?;
            let room = want.min(max - claimed.unwrap_or(max));
            if room <= 0 {
                tx.rollback().await?;
                return Ok(ClaimRound::NothingToDo);
            }
            // The best `room` of the locked candidates, in pick order.
            ids.truncate(usize::try_from(room).unwrap_or(usize::MAX));
            let won = Claim::all(ids.iter().map(|id| (*id, builder.0)));
            claim_locked!(tx, d, me, &won);
            let n = won.len() as i64;
            let raise = format!(
                "UPDATE builders SET claimed_requests = claimed_requests + ? \
                 WHERE id = ? AND claimed_requests + ? <= ?{}",
                d.in_tx()
            );
            let raised = sqlx::query(AssertSqlSafe(raise))
                .bind(n)
                .bind(builder.0)
                .bind(n)
                .bind(max)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if raised != 1 {
                // The count moved since it was read (only a write that did
                // not wait for our row lock can do that): claim nothing now.
                tx.rollback().await?;
                return Ok(ClaimRound::LostRaces);
            }
            commit_checked!(tx, d);
            Ok(ClaimRound::Won(won))
        })
    }
}
