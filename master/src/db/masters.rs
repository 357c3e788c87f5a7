//! The `masters` table: one row per boot, heartbeats, draining, and declaring
//! masters dead so that their claims go back to the queue.
//!
//! A master that stops heartbeating for `master_timeout` is marked inactive
//! by whichever live master reaps first (a compare-and-swap on its
//! `last_active`). Claims held by any inactive master are then released one
//! row at a time with a compare-and-swap on (`claimed_by_masterid`,
//! `claimed_at`), so two reapers never both release the same request.

use std::time::Duration;

use sqlx::AssertSqlSafe;

use chrono::{DateTime, Utc};

use super::dialect::placeholders;
use super::rows::{DbRow, InsertId};
use super::{BeginWrite, DbError, MasterId, MasterRow, ReapReport, Store};

const MASTER_COLUMNS: &str = "id, name, boot_time, nonce, active, draining, last_active";

fn master_row<R: DbRow>(r: &R) -> Result<MasterRow, sqlx::Error> {
    Ok(MasterRow {
        id: r.i64("id")?,
        name: r.string("name")?,
        boot_time: r.time("boot_time")?,
        nonce: r.string("nonce")?,
        active: r.flag("active")?,
        draining: r.flag("draining")?,
        last_active: r.time("last_active")?,
    })
}

impl Store {
    /// A new incarnation of `name`: boot time and last activity are the
    /// database's now, with a random nonce so two boots in one tick differ.
    pub async fn register_master(&self, name: &str) -> Result<MasterRow, DbError> {
        let nonce = format!("{:016x}", rand::random::<u64>());
        let id = with_pool!(self, |pool, d| {
            let sql = format!(
                "INSERT INTO masters (name, boot_time, nonce, active, draining, last_active) \
                 VALUES (?, {now}, ?, 1, 0, {now})",
                now = d.now()
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(name)
                .bind(&nonce)
                .execute(pool)
                .await?
                .insert_id()
        });
        self.master_flags(id)
            .await?
            .ok_or_else(|| DbError::Other(format!("master row {id} vanished after insert")))
    }

    /// Refresh `last_active`. `false` means we were declared dead (inactive):
    /// the caller must stop its builds and may register anew.
    pub async fn heartbeat(&self, me: MasterId) -> Result<bool, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "UPDATE masters SET last_active = {} WHERE id = ? AND active = 1",
                d.now()
            );
            let r = sqlx::query(AssertSqlSafe(sql))
                .bind(me)
                .execute(pool)
                .await?;
            Ok(r.rows_affected() > 0)
        })
    }

    pub async fn set_draining(&self, me: MasterId, draining: bool) -> Result<(), DbError> {
        with_pool!(self, |pool, d| {
            sqlx::query("UPDATE masters SET draining = ? WHERE id = ?")
                .bind(i64::from(draining))
                .bind(me)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Set `draining` on every active incarnation named `name`; returns how many.
    pub async fn set_draining_by_name(&self, name: &str, draining: bool) -> Result<u64, DbError> {
        with_pool!(self, |pool, d| {
            let r = sqlx::query("UPDATE masters SET draining = ? WHERE name = ? AND active = 1")
                .bind(i64::from(draining))
                .bind(name)
                .execute(pool)
                .await?;
            Ok(r.rows_affected())
        })
    }

    pub async fn master_flags(&self, me: MasterId) -> Result<Option<MasterRow>, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!("SELECT {MASTER_COLUMNS} FROM masters WHERE id = ?");
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(me)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(master_row).transpose()?)
        })
    }

    /// Clean exit: mark inactive, give back unfinished claims, mark unfinished
    /// builds Retry and release owned schedulers/change sources.
    pub async fn deactivate_master(&self, me: MasterId) -> Result<(), DbError> {
        with_pool!(self, |pool, d| {
            sqlx::query("UPDATE masters SET active = 0 WHERE id = ?")
                .bind(me)
                .execute(pool)
                .await?;
        });
        self.release_claims_of(&[me]).await?;
        self.retry_builds_of_inactive().await?;
        self.release_objects(me).await?;
        Ok(())
    }

    /// Active masters (or all rows with `all`), oldest first.
    pub async fn list_masters(&self, all: bool) -> Result<Vec<MasterRow>, DbError> {
        with_pool!(self, |pool, d| {
            let filter = if all { "" } else { " WHERE active = 1" };
            let sql = format!("SELECT {MASTER_COLUMNS} FROM masters{filter} ORDER BY id");
            let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await?;
            Ok(rows.iter().map(master_row).collect::<Result<_, _>>()?)
        })
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

    /// Declare dead every active master silent for `master_timeout`, then
    /// release the claims of every inactive master, mark their builds Retry and
    /// free their objects. Safe to run on every master at once: each dead
    /// master and each request is won by exactly one caller.
    pub async fn reap_dead_masters(&self, master_timeout: Duration) -> Result<ReapReport, DbError> {
        let mut report = ReapReport::default();
        let silent = with_pool!(self, |pool, d| {
            let sql = format!(
                "SELECT id, last_active FROM masters WHERE active = 1 AND last_active < {}",
                d.now_minus()
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(d.ago_arg(master_timeout))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| Ok((r.i64("id")?, r.time("last_active")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        for (id, last_active) in silent {
            let won = with_pool!(self, |pool, d| {
                let sql = format!(
                    "UPDATE masters SET active = 0 \
                     WHERE id = ? AND active = 1 AND last_active = {}",
                    d.time_param()
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .bind(d.time_arg(last_active))
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            });
            if won {
                tracing::warn!(master_id = id, "declared master dead");
                report.dead_masters.push(id);
            }
        }
        report.released = self.release_claims_of_inactive().await?;
        self.retry_builds_of_inactive().await?;
        self.release_objects_of_inactive().await?;
        Ok(report)
    }

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

    /// The latest incarnation named `name`, if any.
    pub async fn latest_incarnation(&self, name: &str) -> Result<Option<MasterRow>, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "SELECT {MASTER_COLUMNS} FROM masters WHERE name = ? ORDER BY id DESC LIMIT 1"
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(name)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(master_row).transpose()?)
        })
    }

    /// Mark Retry the unfinished builds of inactive masters, skipping rows
    /// another session holds locked.
    async fn retry_builds_of_inactive(&self) -> Result<u64, DbError> {
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
            let mut n = 0;
            if !ids.is_empty() {
                let sql = format!(
                    "UPDATE builds SET complete_at = {}, results = ? \
                     WHERE complete_at IS NULL AND id IN ({})",
                    d.now(),
                    placeholders(ids.len())
                );
                let mut q = sqlx::query(AssertSqlSafe(sql)).bind(super::Results::Retry.as_i64());
                for id in &ids {
                    q = q.bind(id);
                }
                n = q.execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(n)
        })
    }

    async fn release_objects_of_inactive(&self) -> Result<u64, DbError> {
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
            tx.commit().await?;
            Ok(n)
        })
    }
}
