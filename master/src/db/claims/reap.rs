//! Step 7 for masters: declaring a master dead, and giving back what dead
//! and older incarnations hold (their claims, their unfinished builds,
//! their schedulers and change sources).
//!
//! Death is judged by the observer's own clock (`runtime::reaper`); the
//! declaration is a compare-and-swap on the very `last_active` the observer
//! watched stand still, so a master that beat in between survives and of
//! several observers one wins. Claims of inactive masters are then released
//! row by row (`release`).

use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use crate::db::dialect::placeholders;
use crate::db::rows::DbRow;
use crate::db::{BeginWrite, DbError, MasterId, MasterRow, Store};

/// In the write transaction `$tx` of store `$store`: end the unfinished
/// builds among `$ids` as Retry (taken from a master that is gone or whose
/// claim ran out) and enqueue their end for reporters, so a reporter that
/// heard a build start hears it end. The number of builds ended.
macro_rules! end_as_retry {
    ($store:expr, $tx:expr, $d:expr, $ids:expr) => {{
        let ids: &[i64] = $ids;
        let mut n: u64 = 0;
        if !ids.is_empty() {
            let which = format!(
                "id IN ({}){}",
                $crate::db::dialect::placeholders(ids.len()),
                $d.in_tx()
            );
            let sql = $crate::db::claims::sql::end_builds(&which, "?", $d.now());
            let mut q =
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind($crate::db::Results::Retry.as_i64());
            for id in ids {
                q = q.bind(id);
            }
            n = q.execute(&mut *$tx).await?.rows_affected();
            for id in ids {
                $crate::db::outbox::enqueue_for_build!(
                    $store,
                    $tx,
                    $d,
                    *id,
                    $crate::db::outbox::Phase::Finished
                );
            }
        }
        n
    }};
}
pub(super) use end_as_retry;

impl Store {
    /// The active incarnations and their `last_active` as stored: what an
    /// observer compares round after round (see `runtime::reaper`).
    pub async fn active_heartbeats(&self) -> Result<Vec<(MasterId, DateTime<Utc>)>, DbError> {
        with_pool!(self, |pool, d| {
            let rows = sqlx::query("SELECT id, last_active FROM masters WHERE active = 1")
                .fetch_all(pool)
                .await?;
            Ok(rows
                .iter()
                .map(|r| Ok((r.i64("id")?, r.time("last_active")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }

    /// Declare `id` dead if its `last_active` is still the value the caller
    /// watched stand still (compare-and-swap: a master that beat meanwhile,
    /// or that another reaper already declared dead, is left alone).
    pub async fn declare_dead(
        &self,
        id: MasterId,
        last_active: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "UPDATE masters SET active = 0 WHERE id = ? AND active = 1 AND last_active = {}",
                d.time_param()
            );
            Ok(sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .bind(d.time_arg(last_active))
                .execute(pool)
                .await?
                .rows_affected()
                == 1)
        })
    }

    /// Give back what inactive incarnations still hold: their claims (per-row
    /// compare-and-swap), their unfinished builds (Retry) and their
    /// schedulers. Rows another session has locked — a frozen master inside a
    /// transaction — are skipped, never waited on, and taken on a later call.
    pub async fn release_inactive(&self) -> Result<Vec<i64>, DbError> {
        let released = self.release_claims_of_inactive().await?;
        self.retry_builds_of_inactive().await?;
        self.release_objects_of_inactive().await?;
        Ok(released)
    }

    /// Earlier boots of `me.name` are certainly dead: mark them inactive and
    /// release their claims (compare-and-swap); returns the released request ids.
    pub async fn release_older_incarnations(&self, me: &MasterRow) -> Result<Vec<i64>, DbError> {
        let older: Vec<i64> = with_pool!(self, |pool, d| {
            let sql = format!(
                "SELECT id FROM masters WHERE name = ? AND id < ? AND boot_time <= {}",
                d.time_param()
            );
            sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(&me.name)
                .bind(me.id)
                .bind(d.time_arg(me.boot_time))
                .fetch_all(pool)
                .await?
        });
        if older.is_empty() {
            return Ok(Vec::new());
        }
        with_pool!(self, |pool, d| {
            let sql = format!(
                "UPDATE masters SET active = 0 WHERE active = 1 AND id IN ({})",
                placeholders(older.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in &older {
                q = q.bind(id);
            }
            q.execute(pool).await?;
        });
        let released = self.release_claims_of(&older).await?;
        self.retry_builds_of_inactive().await?;
        self.release_objects_of_inactive().await?;
        Ok(released)
    }

    /// Mark Retry the unfinished builds of inactive masters, skipping rows
    /// another session holds locked, and enqueue their end for reporters.
    pub(crate) async fn retry_builds_of_inactive(&self) -> Result<u64, DbError> {
        let open: Vec<i64> = with_pool!(self, |pool, d| {
            sqlx::query_scalar(
                "SELECT b.id FROM builds b JOIN masters m ON m.id = b.masterid \
                 WHERE b.complete_at IS NULL AND m.active = 0",
            )
            .fetch_all(pool)
            .await?
        });
        if open.is_empty() {
            return Ok(0);
        }
        let open = &open;
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!(
                "SELECT id FROM builds WHERE id IN ({}) AND complete_at IS NULL{}",
                placeholders(open.len()),
                d.skip_locked()
            );
            let mut q = sqlx::query_scalar(AssertSqlSafe(sql));
            for id in open {
                q = q.bind(id);
            }
            let ids: Vec<i64> = q.fetch_all(&mut *tx).await?;
            let n = end_as_retry!(self, tx, d, &ids);
            commit_checked!(tx, d);
            Ok(n)
        })
    }

    pub(crate) async fn release_objects_of_inactive(&self) -> Result<u64, DbError> {
        let owners: Vec<i64> = with_pool!(self, |pool, d| {
            sqlx::query_scalar(
                "SELECT DISTINCT o.masterid FROM object_owners o \
                 JOIN masters m ON m.id = o.masterid WHERE m.active = 0",
            )
            .fetch_all(pool)
            .await?
        });
        if owners.is_empty() {
            return Ok(0);
        }
        let owners = &owners;
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!(
                "SELECT kind, name, masterid FROM object_owners WHERE masterid IN ({}){}",
                placeholders(owners.len()),
                d.skip_locked()
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in owners {
                q = q.bind(id);
            }
            let rows = q.fetch_all(&mut *tx).await?;
            let mut n = 0;
            for r in &rows {
                n += sqlx::query(
                    "DELETE FROM object_owners WHERE kind = ? AND name = ? AND masterid = ?",
                )
                .bind(r.string("kind")?)
                .bind(r.string("name")?)
                .bind(r.i64("masterid")?)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            commit_checked!(tx, d);
            Ok(n)
        })
    }
}
