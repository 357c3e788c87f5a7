//! Operator controls and dashboard reads that the original listings lack:
//! stop requests for builds running on another master, and each builder's
//! last result. (Claims within a builder's `max_concurrent_builds` are part
//! of the claim protocol: `claims::limited`.)
//!
//! A stop request is a row in `object_state` (object `build_stop`, name =
//! the request id): any master's API writes it, and the master running that
//! request finds it in its maintenance loop, stops the build and removes it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AssertSqlSafe;

use super::dialect::placeholders;
use super::rows::DbRow;
use super::{DbError, Results, Store};

/// `object_state.objectname` of stop requests.
const STOP_OBJECT: &str = "build_stop";

/// The last finished build of a builder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LastBuild {
    pub builder: String,
    pub build_id: i64,
    pub number: i64,
    pub results: Option<Results>,
    pub complete_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Asks whichever master runs request `request_id` to stop its build.
    pub async fn request_stop(&self, request_id: i64) -> Result<(), DbError> {
        let value = serde_json::json!({ "request": request_id });
        self.set_state(STOP_OBJECT, &request_id.to_string(), &value)
            .await
    }

    /// The stop requests among `running` (request ids); those returned are
    /// removed, so each is acted on once.
    pub async fn take_stop_requests(&self, running: &[i64]) -> Result<Vec<i64>, DbError> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = running.iter().map(i64::to_string).collect();
        with_pool!(self, |pool, d| {
            let sql = format!(
                "SELECT name FROM object_state WHERE objectname = ? AND name IN ({})",
                placeholders(names.len())
            );
            let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql)).bind(STOP_OBJECT);
            for n in &names {
                q = q.bind(n);
            }
            let found: Vec<String> = q.fetch_all(pool).await?;
            let mut taken = Vec::new();
            for name in found {
                let gone =
                    sqlx::query("DELETE FROM object_state WHERE objectname = ? AND name = ?")
                        .bind(STOP_OBJECT)
                        .bind(&name)
                        .execute(pool)
                        .await?
                        .rows_affected();
                if let (1, Ok(id)) = (gone, name.parse::<i64>()) {
                    taken.push(id);
                }
            }
            Ok(taken)
        })
    }

    /// Removes stop requests whose request has completed (its build ended
    /// before its master saw the request). Returns how many.
    pub async fn prune_stop_requests(&self) -> Result<u64, DbError> {
        let names: Vec<String> = with_pool!(self, |pool, d| {
            sqlx::query_scalar("SELECT name FROM object_state WHERE objectname = ?")
                .bind(STOP_OBJECT)
                .fetch_all(pool)
                .await?
        });
        let mut removed = 0;
        for name in names {
            let open = match name.parse::<i64>() {
                Ok(id) => self.get_request(id).await?.is_some_and(|r| !r.complete),
                Err(_) => false,
            };
            if !open {
                removed += with_pool!(self, |pool, d| {
                    sqlx::query("DELETE FROM object_state WHERE objectname = ? AND name = ?")
                        .bind(STOP_OBJECT)
                        .bind(&name)
                        .execute(pool)
                        .await?
                        .rows_affected()
                });
            }
        }
        Ok(removed)
    }

    /// The last finished build of every builder that has one.
    pub async fn last_builds(&self) -> Result<Vec<LastBuild>, DbError> {
        with_pool!(self, |pool, d| {
            let rows = sqlx::query(
                "SELECT b.name, bu.id, bu.number, bu.results, bu.complete_at \
                 FROM builders b JOIN builds bu ON bu.id = \
                 (SELECT x.id FROM builds x WHERE x.builderid = b.id \
                  AND x.complete_at IS NOT NULL ORDER BY x.number DESC LIMIT 1) \
                 ORDER BY b.name",
            )
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(LastBuild {
                    builder: r.string("name")?,
                    build_id: r.i64("id")?,
                    number: r.i64("number")?,
                    results: r.results("results")?,
                    complete_at: r.opt_time("complete_at")?,
                });
            }
            Ok(out)
        })
    }
}
