//! The `masters` table: one row per boot, heartbeats, draining, listing.
//! Declaring masters dead and giving back what they held is part of the
//! claim protocol (`claims::reap`).

use sqlx::AssertSqlSafe;

use super::rows::{DbRow, InsertId};
use super::{DbError, MasterId, MasterRow, Store};

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
}
