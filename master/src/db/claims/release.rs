//! Step 7, releasing others' claims: a claim whose lease ran out, or whose
//! master is dead (or an older incarnation of a restarted one), goes back
//! to the queue. Each row is one compare-and-swap naming the old owner and
//! the old `claimed_at`, so of several releasers exactly one wins it; the
//! winner also marks the old owner's unfinished build of it Retry. Rows
//! another session holds locked are skipped, never waited on.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use super::counts::count_claims;
use super::reap::end_as_retry;
use super::sql;
use crate::db::dialect::placeholders;
use crate::db::rows::DbRow;
use crate::db::{BeginWrite, DbError, MasterId, Store};

impl Store {
    /// Release claims not renewed for `lease`, whoever holds them. Each row is
    /// won by exactly one caller; returns the ids this call released.
    pub async fn release_expired_claims(&self, lease: Duration) -> Result<Vec<i64>, DbError> {
        let rows = with_pool!(self, |pool, d| {
            let sql = format!(
                "SELECT id, claimed_by_masterid, claimed_at FROM buildrequests \
                 WHERE {} AND claimed_at < {} ORDER BY id",
                sql::HELD,
                d.now_minus()
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(d.ago_arg(lease))
                .fetch_all(pool)
                .await?;
            claim_rows(&rows)?
        });
        let released = self.release_claims_cas(rows).await?;
        if !released.is_empty() {
            tracing::warn!(count = released.len(), "released expired claims");
        }
        Ok(released)
    }

    /// Release (per-row compare-and-swap) the claims held by these masters.
    pub(crate) async fn release_claims_of(
        &self,
        masters: &[MasterId],
    ) -> Result<Vec<i64>, DbError> {
        if masters.is_empty() {
            return Ok(Vec::new());
        }
        let rows = with_pool!(self, |pool, d| {
            let sql = format!(
                "SELECT id, claimed_by_masterid, claimed_at FROM buildrequests \
                 WHERE {} ORDER BY id",
                sql::held_by_one_of(&placeholders(masters.len()))
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for m in masters {
                q = q.bind(m);
            }
            claim_rows(&q.fetch_all(pool).await?)?
        });
        self.release_claims_cas(rows).await
    }

    /// Release (per-row compare-and-swap) the claims held by inactive or
    /// unknown masters.
    pub(crate) async fn release_claims_of_inactive(&self) -> Result<Vec<i64>, DbError> {
        let sql = format!(
            "SELECT br.id, br.claimed_by_masterid, br.claimed_at FROM buildrequests br \
             LEFT JOIN masters m ON m.id = br.claimed_by_masterid \
             WHERE {} AND (m.id IS NULL OR m.active = 0) ORDER BY br.id",
            sql::HELD
        );
        let rows = with_pool!(self, |pool, d| {
            let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await?;
            claim_rows(&rows)?
        });
        self.release_claims_cas(rows).await
    }

    /// One compare-and-swap per (request, old owner, old claimed_at); the
    /// winner also marks the old owner's unfinished build of it Retry.
    pub(super) async fn release_claims_cas(
        &self,
        rows: Vec<(i64, MasterId, DateTime<Utc>)>,
    ) -> Result<Vec<i64>, DbError> {
        let mut released = Vec::new();
        for (id, owner, claimed_at) in rows {
            let won = with_pool_retry!(self, |pool, d| {
                let mut tx = pool.begin_write().await?;
                let unchanged = format!(
                    "id = ? AND {} AND claimed_at = {}",
                    sql::held_by("?"),
                    d.time_param()
                );
                // Never wait on a row another session holds: that may be a
                // frozen master inside a transaction, and waiting would stall
                // this reaper (and everything queued behind it). A skipped row
                // is taken on a later call, once its lock is gone.
                let sql = format!(
                    "SELECT id FROM buildrequests WHERE {unchanged}{}",
                    d.skip_locked()
                );
                let free: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
                    .bind(id)
                    .bind(owner)
                    .bind(d.time_arg(claimed_at))
                    .fetch_optional(&mut *tx)
                    .await?;
                if free.is_none() {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let guarded = format!("{unchanged}{}", d.in_tx());
                let won = sqlx::query(AssertSqlSafe(sql::unclaim(&guarded)))
                    .bind(id)
                    .bind(owner)
                    .bind(d.time_arg(claimed_at))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if won {
                    count_claims!(tx, d, &[id], -1);
                    let open: Vec<i64> = sqlx::query_scalar(
                        "SELECT id FROM builds \
                         WHERE buildrequestid = ? AND masterid = ? AND complete_at IS NULL",
                    )
                    .bind(id)
                    .bind(owner)
                    .fetch_all(&mut *tx)
                    .await?;
                    end_as_retry!(self, tx, d, &open);
                }
                commit_checked!(tx, d);
                Ok::<bool, DbError>(won)
            })?;
            if won {
                released.push(id);
            }
        }
        Ok(released)
    }
}

/// (request id, holder, claimed_at) of claim rows.
pub(super) fn claim_rows<R: DbRow>(
    rows: &[R],
) -> Result<Vec<(i64, MasterId, DateTime<Utc>)>, sqlx::Error> {
    rows.iter()
        .map(|r| {
            Ok((
                r.i64("id")?,
                r.i64("claimed_by_masterid")?,
                r.time("claimed_at")?,
            ))
        })
        .collect()
}
