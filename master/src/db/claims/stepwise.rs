//! The claim and the completion statement by statement, on every backend:
//! the path SQLite always takes, and MySQL when the one-trip scripts are
//! off (a server that rejects them, a Galera node). Same arguments and
//! outcomes as `script`.
//!
//! Winning is decided in a write transaction that first locks the candidate
//! rows and then updates exactly those: on MySQL the pick is
//! `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent masters skip each
//! other's candidates instead of queueing on the oldest row; on SQLite
//! `BEGIN IMMEDIATE` holds the database's single write lock. The `UPDATE`
//! repeats the compare-and-swap condition and must touch every locked row.

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;

use super::counts::count_claims;
use super::{Claim, ClaimRound, sql};
use crate::db::buildset_finish::count_down_buildsets;
use crate::db::dialect::placeholders;
use crate::db::rows::DbRow;
use crate::db::{BeginWrite, DbError, MasterId, Results, Store};

/// In an open write transaction `$tx`, claim for `$me` the rows of
/// `$claims` that the caller has just locked (the caller then counts them
/// on their builders). Unless every one of them changed, roll back (releasing the
/// locked candidates now: a transaction merely dropped rolls back only
/// when its connection is next used, and until then other masters' picks
/// would skip those rows) and return the round's outcome from the caller.
macro_rules! claim_locked {
    ($tx:expr, $d:expr, $me:expr, $claims:expr) => {{
        let claims: &[$crate::db::claims::Claim] = $claims;
        let ids: Vec<i64> = claims.iter().map(|c| c.request.0).collect();
        let cas = $crate::db::claims::sql::claim(
            "buildrequests",
            &format!(
                "id IN ({}){}",
                $crate::db::dialect::placeholders(ids.len()),
                $d.in_tx()
            ),
            "?",
            $d.now(),
        );
        // Binds follow the text: the new owner, the ids, then the owner
        // whose activity is checked.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(cas)).bind($me);
        for id in &ids {
            q = q.bind(id);
        }
        let n = q.bind($me).execute(&mut *$tx).await?.rows_affected();
        if n != ids.len() as u64 {
            $tx.rollback().await?;
            return Ok($crate::db::claims::ClaimRound::of_cas(claims.to_vec(), n));
        }
        ids
    }};
}
pub(crate) use claim_locked;

/// In an open write transaction `$tx` that has just locked the claims
/// `$won` picked: nothing to do when there are none; else claim them (as
/// `claim_locked!`), count them on their builders and commit. The round's
/// outcome.
macro_rules! claim_picked {
    ($tx:expr, $d:expr, $me:expr, $won:expr) => {{
        let won: Vec<$crate::db::claims::Claim> = $won;
        if won.is_empty() {
            $tx.rollback().await?;
            return Ok($crate::db::claims::ClaimRound::NothingToDo);
        }
        let ids = $crate::db::claims::stepwise::claim_locked!($tx, $d, $me, &won);
        $crate::db::claims::counts::count_claims!($tx, $d, &ids, 1);
        commit_checked!($tx, $d);
        Ok($crate::db::claims::ClaimRound::Won(won))
    }};
}
pub(crate) use claim_picked;

/// `pick_and_claim_per_builder`: for each (builder id, max), lock up to max
/// of its best claimable requests and claim them.
pub(super) async fn pick_and_claim_per_builder(
    store: &Store,
    me: MasterId,
    wants: &[(i64, i64)],
) -> Result<ClaimRound, DbError> {
    with_pool_retry!(store, |pool, d| {
        let mut tx = pool.begin_write().await?;
        let pick = format!(
            "{}{}",
            sql::best_of_builder("id", "?", "?"),
            d.skip_locked()
        );
        let mut won = Vec::new();
        for (builder, max) in wants {
            let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(pick.clone()))
                .bind(builder)
                .bind(max)
                .fetch_all(&mut *tx)
                .await?;
            won.extend(Claim::all(ids.into_iter().map(|id| (id, *builder))));
        }
        claim_picked!(tx, d, me, won)
    })
}

/// `complete_requests`: lock the requests `me` holds among `ids`, complete
/// them, count them down on their buildsets and off their builders.
pub(super) async fn complete_requests(
    store: &Store,
    me: MasterId,
    ids: &[i64],
    results: Results,
) -> Result<Vec<i64>, DbError> {
    with_pool_retry!(store, |pool, d| {
        let mut tx = pool.begin_write().await?;
        let sql = format!(
            "{}{}",
            sql::those_held("id, buildsetid", ids.len()),
            d.for_update()
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in ids {
            q = q.bind(id);
        }
        let rows = q.bind(me).fetch_all(&mut *tx).await?;
        let mut done = Vec::with_capacity(rows.len());
        let mut buildsets: BTreeMap<i64, i64> = BTreeMap::new();
        for r in &rows {
            done.push(r.i64("id")?);
            *buildsets.entry(r.i64("buildsetid")?).or_default() += 1;
        }
        if !done.is_empty() {
            let which = format!(
                "id IN ({}) AND {}{}",
                placeholders(done.len()),
                sql::held_by("?"),
                d.in_tx()
            );
            let mut q = sqlx::query(AssertSqlSafe(sql::complete(&which, "?", d.now())))
                .bind(results.as_i64());
            for id in &done {
                q = q.bind(id);
            }
            q.bind(me).execute(&mut *tx).await?;
            count_down_buildsets!(tx, d, &buildsets, results);
            count_claims!(tx, d, &done, -1);
        }
        commit_checked!(tx, d);
        Ok(done)
    })
}
