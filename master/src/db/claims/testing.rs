//! Claims that only tests make: production claims through
//! [`Store::pick_and_claim_per_builder`] and [`Store::claim_within_limit`],
//! which choose the requests themselves. Tests that need a particular
//! request held by a particular master (to fence it, release it, race a
//! completion against it) claim it here, with the same compare-and-swap
//! and counts.

use sqlx::AssertSqlSafe;

use super::stepwise::claim_picked;
use super::{Claim, ClaimRound, dedup, sql};
use crate::db::dialect::placeholders;
use crate::db::{BeginWrite, DbError, MasterId, Store};

/// Claim exactly these requests for `me`: the round's outcome, whose won
/// claims are those of `ids` that were claimable (the rest — complete,
/// claimed by anyone, being claimed, missing — are left out).
pub async fn claim_exactly(
    store: &Store,
    me: MasterId,
    ids: &[i64],
) -> Result<ClaimRound, DbError> {
    let ids = &dedup(ids);
    if ids.is_empty() {
        return Ok(ClaimRound::NothingToDo);
    }
    with_pool_retry!(store, |pool, d| {
        let mut tx = pool.begin_write().await?;
        let pick = format!(
            "SELECT id, builderid FROM buildrequests WHERE id IN ({}) AND {} ORDER BY id{}",
            placeholders(ids.len()),
            sql::CLAIMABLE,
            d.skip_locked()
        );
        let mut q = sqlx::query_as::<_, (i64, i64)>(AssertSqlSafe(pick));
        for id in ids {
            q = q.bind(id);
        }
        let won = Claim::all(q.fetch_all(&mut *tx).await?);
        claim_picked!(tx, d, me, won)
    })
}

/// The ids [`claim_exactly`] won (none when refused or nothing was
/// claimable).
pub async fn claim_requests(store: &Store, me: MasterId, ids: &[i64]) -> Result<Vec<i64>, DbError> {
    Ok(claim_exactly(store, me, ids).await?.request_ids())
}
