//! Generic key/value state (`object_state`, Buildbot's object state) and
//! ownership of schedulers and change sources (`object_owners`), so that each
//! runs on exactly one live master.
//!
//! Ownership is a lease like a request claim: taken with a compare-and-swap,
//! renewed by claiming again, and free for the taking once the owner is
//! inactive or has not renewed for the lease.

use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::{DbError, MasterId, Store};

/// Move state `$object`/`$name` from `$expected` (JSON text, `None`: absent)
/// to `$new` (JSON text) through `$exec` — a pool, or `&mut *tx` inside an
/// open write transaction — and evaluate to whether this move won. Absent
/// state is created with an insert that leaves a concurrent creator's row
/// alone; present state is updated only where it still holds `$expected`.
macro_rules! cas_state_row {
    // In the write transaction `$tx`: the writes guarded by `in_tx`, and a
    // compare-and-swap that changed nothing is a lost race only if the
    // transaction is still open (else `DbError::TransactionEnded`).
    (in_tx $tx:expr, $d:expr, $object:expr, $name:expr, $expected:expr, $new:expr) => {{
        let guards = ($d.in_tx(), $d.in_tx_select());
        let won = cas_state_row!(
            &mut *$tx, $d, guards.0, guards.1, $object, $name, $expected, $new
        );
        if !won {
            ensure_in_tx!($tx, $d);
        }
        won
    }};
    ($exec:expr, $d:expr, $object:expr, $name:expr, $expected:expr, $new:expr) => {{ cas_state_row!($exec, $d, "", "", $object, $name, $expected, $new) }};
    // In a transaction: `$guard` is `$d.in_tx()` for the `UPDATE`,
    // `$select_guard` `$d.in_tx_select()` for the `INSERT ... SELECT`.
    ($exec:expr, $d:expr, $guard:expr, $select_guard:expr, $object:expr, $name:expr, $expected:expr, $new:expr) => {{
        let object: &str = $object;
        let name: &str = $name;
        let expected: Option<&str> = $expected;
        let new: &str = $new;
        let changed = match expected {
            None => {
                let sql = format!(
                    "{} INTO object_state (objectname, name, value_json) SELECT ?, ?, ?{}",
                    $d.insert_ignore(),
                    $select_guard
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(object)
                    .bind(name)
                    .bind(new)
                    .execute($exec)
                    .await?
                    .rows_affected()
            }
            Some(old) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE object_state SET value_json = ? \
                 WHERE objectname = ? AND name = ? AND value_json = ?{}",
                $guard
            )))
            .bind(new)
            .bind(object)
            .bind(name)
            .bind(old)
            .execute($exec)
            .await?
            .rows_affected(),
        };
        changed == 1
    }};
}
pub(crate) use cas_state_row;

impl Store {
    pub async fn get_state(
        &self,
        object: &str,
        name: &str,
    ) -> Result<Option<serde_json::Value>, DbError> {
        let text: Option<String> = with_pool!(self, |pool, d| {
            sqlx::query_scalar(
                "SELECT value_json FROM object_state WHERE objectname = ? AND name = ?",
            )
            .bind(object)
            .bind(name)
            .fetch_optional(pool)
            .await?
        });
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| DbError::Other(format!("object_state {object}/{name}: {e}")))
        })
        .transpose()
    }

    pub async fn set_state(
        &self,
        object: &str,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<(), DbError> {
        let text = value.to_string();
        with_pool!(self, |pool, d| {
            sqlx::query(
                "REPLACE INTO object_state (objectname, name, value_json) VALUES (?, ?, ?)",
            )
            .bind(object)
            .bind(name)
            .bind(&text)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Own (kind, name) if it is unowned, already ours (renews the lease), or
    /// its owner is inactive or has not renewed for `lease`. An inactive `me`
    /// owns nothing.
    pub async fn claim_object(
        &self,
        me: MasterId,
        kind: &str,
        name: &str,
        lease: Duration,
    ) -> Result<bool, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "{} INTO object_owners (kind, name, masterid, claimed_at) \
                 SELECT ?, ?, id, {} FROM masters WHERE id = ? AND active = 1",
                d.insert_ignore(),
                d.now()
            );
            let inserted = sqlx::query(AssertSqlSafe(sql))
                .bind(kind)
                .bind(name)
                .bind(me)
                .execute(pool)
                .await?
                .rows_affected();
            if inserted == 1 {
                return Ok(true);
            }
            let sql = format!(
                "UPDATE object_owners SET masterid = ?, claimed_at = {now} \
                 WHERE kind = ? AND name = ? \
                 AND EXISTS (SELECT 1 FROM masters me WHERE me.id = ? AND me.active = 1) \
                 AND (masterid = ? OR claimed_at < {ago} \
                      OR NOT EXISTS (SELECT 1 FROM masters m \
                                     WHERE m.id = object_owners.masterid AND m.active = 1))",
                now = d.now(),
                ago = d.now_minus()
            );
            let updated = sqlx::query(AssertSqlSafe(sql))
                .bind(me)
                .bind(kind)
                .bind(name)
                .bind(me)
                .bind(me)
                .bind(d.ago_arg(lease))
                .execute(pool)
                .await?
                .rows_affected();
            Ok(updated == 1)
        })
    }

    /// Give up every object `me` owns; returns how many.
    pub async fn release_objects(&self, me: MasterId) -> Result<u64, DbError> {
        with_pool!(self, |pool, d| {
            Ok(sqlx::query("DELETE FROM object_owners WHERE masterid = ?")
                .bind(me)
                .execute(pool)
                .await?
                .rows_affected())
        })
    }

    /// The master currently owning (kind, name), if any.
    pub async fn object_owner(&self, kind: &str, name: &str) -> Result<Option<MasterId>, DbError> {
        with_pool!(self, |pool, d| {
            Ok(
                sqlx::query_scalar(
                    "SELECT masterid FROM object_owners WHERE kind = ? AND name = ?",
                )
                .bind(kind)
                .bind(name)
                .fetch_optional(pool)
                .await?,
            )
        })
    }
}
