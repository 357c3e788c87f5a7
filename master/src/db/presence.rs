//! Where each worker is connected, recorded by the master it is routed to,
//! so that every master lists the workers of the whole cluster
//! (`/api/v1/workers`) from the database.
//!
//! A master writes a row when a worker attaches and clears it when that same
//! session leaves (the clear names the master, gateway link and session, so
//! a late detach cannot erase a newer attach elsewhere). A row whose master
//! is no longer active counts as disconnected, so a master that dies does
//! not leave its workers listed as connected. Busy or idle is not written
//! on every build: a connected worker is busy while a build on it is
//! incomplete.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AssertSqlSafe;

use super::rows::DbRow;
use super::{DbError, MasterId, Store};

/// One worker as the database knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerPresence {
    pub name: String,
    /// The active master it is attached to, if any.
    pub master: Option<String>,
    pub connected_at: Option<DateTime<Utc>>,
    /// Connected and running an incomplete build.
    pub busy: bool,
    /// The facts it registered with last (JSON object text).
    pub info: Option<String>,
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Records that worker `name` is attached to master `me` on (link, session).
    pub async fn worker_attached(
        &self,
        name: &str,
        me: MasterId,
        link: u64,
        session: u64,
    ) -> Result<(), DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "UPDATE workers SET masterid = ?, master_link = ?, master_session = ?, \
                 connected_at = {} WHERE name = ?",
                d.now()
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(me)
                .bind(as_i64(link))
                .bind(as_i64(session))
                .bind(name)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Records that the worker on (link, session) of master `me` left.
    pub async fn worker_detached(
        &self,
        me: MasterId,
        link: u64,
        session: u64,
    ) -> Result<(), DbError> {
        with_pool!(self, |pool, d| {
            sqlx::query(
                "UPDATE workers SET masterid = NULL, master_link = NULL, master_session = NULL, \
                 connected_at = NULL WHERE masterid = ? AND master_link = ? AND master_session = ?",
            )
            .bind(me)
            .bind(as_i64(link))
            .bind(as_i64(session))
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Records that every worker on gateway link `link` of master `me` left.
    pub async fn workers_detached_link(&self, me: MasterId, link: u64) -> Result<(), DbError> {
        with_pool!(self, |pool, d| {
            sqlx::query(
                "UPDATE workers SET masterid = NULL, master_link = NULL, master_session = NULL, \
                 connected_at = NULL WHERE masterid = ? AND master_link = ?",
            )
            .bind(me)
            .bind(as_i64(link))
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Every worker that ever connected, by name.
    pub async fn list_worker_presence(&self) -> Result<Vec<WorkerPresence>, DbError> {
        with_pool!(self, |pool, d| {
            let rows = sqlx::query(
                "SELECT w.name, m.name AS master_name, w.connected_at, w.info, \
                 CASE WHEN m.id IS NOT NULL AND EXISTS (SELECT 1 FROM builds b \
                      WHERE b.complete_at IS NULL AND b.workerid = w.id) \
                 THEN 1 ELSE 0 END AS busy \
                 FROM workers w LEFT JOIN masters m ON m.id = w.masterid AND m.active = 1 \
                 ORDER BY w.name",
            )
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let master = r.opt_string("master_name")?;
                out.push(WorkerPresence {
                    connected_at: if master.is_some() {
                        r.opt_time("connected_at")?
                    } else {
                        None
                    },
                    name: r.string("name")?,
                    master,
                    busy: r.flag("busy")?,
                    info: r.opt_string("info")?,
                });
            }
            Ok(out)
        })
    }
}
