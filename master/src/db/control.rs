//! Operator controls and dashboard reads that the original listings lack:
//! stop requests for builds running on another master, claims that respect
//! a builder's `max_concurrent_builds` across the cluster, and each
//! builder's last result.
//!
//! A stop request is a row in `object_state` (object `build_stop`, name =
//! the request id): any master's API writes it, and the master running that
//! request finds it in its maintenance loop, stops the build and removes it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AssertSqlSafe;

use super::claims::check_claimed;
use super::dialect::placeholders;
use super::rows::DbRow;
use super::{BeginWrite, DbError, MasterId, Results, Store};

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

    /// Claims up to `want` pending requests of a builder with
    /// `max_concurrent_builds = max`, so that its claimed, incomplete
    /// requests across the cluster never exceed `max`.
    ///
    /// The limit is checked against the builder row's written count
    /// (`claimed_requests`, kept by every claim, release and completion)
    /// inside the write that raises it, never by counting claimed requests:
    /// two limited claims of one builder both write its row, so on one
    /// server the row lock queues them and on Galera certification aborts
    /// one (retried, it then reads the other's count). A count read from
    /// the requests would let two nodes each see room.
    pub async fn claim_within_limit(
        &self,
        me: MasterId,
        builder_id: i64,
        want: usize,
        max: u32,
    ) -> Result<Vec<i64>, DbError> {
        let want = i64::try_from(want).unwrap_or(i64::MAX);
        let max = i64::from(max);
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!(
                "SELECT claimed_requests FROM builders WHERE id = ?{}",
                d.for_update()
            );
            let claimed: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(builder_id)
                .fetch_optional(&mut *tx)
                .await?;
            let room = want.min(max - claimed.unwrap_or(max));
            if room <= 0 {
                tx.commit().await?;
                return Ok(Vec::new());
            }
            let sql = format!(
                "SELECT id FROM buildrequests \
                 WHERE complete = 0 AND claimed_by_masterid IS NULL AND builderid = ? \
                 ORDER BY priority DESC, submitted_at, id LIMIT ?{}",
                d.skip_locked()
            );
            let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(builder_id)
                .bind(room)
                .fetch_all(&mut *tx)
                .await?;
            if ids.is_empty() {
                tx.commit().await?;
                return Ok(Vec::new());
            }
            let sql = format!(
                "UPDATE buildrequests SET claimed_by_masterid = ?, claimed_at = {} \
                 WHERE id IN ({}) AND claimed_by_masterid IS NULL AND complete = 0 \
                 AND EXISTS (SELECT 1 FROM masters WHERE masters.id = ? AND masters.active = 1)",
                d.now(),
                placeholders(ids.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(me);
            for id in &ids {
                q = q.bind(id);
            }
            let n = q.bind(me).execute(&mut *tx).await?.rows_affected();
            if let Err(e) = check_claimed(ids.len(), n) {
                // Release the locks now rather than when the connection is
                // next used.
                tx.rollback().await?;
                return Err(e);
            }
            let n = ids.len() as i64;
            let raised = sqlx::query(
                "UPDATE builders SET claimed_requests = claimed_requests + ? \
                 WHERE id = ? AND claimed_requests + ? <= ?",
            )
            .bind(n)
            .bind(builder_id)
            .bind(n)
            .bind(max)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if raised != 1 {
                // The count moved since it was read (only a write that did
                // not wait for our row lock can do that): claim nothing now.
                tx.rollback().await?;
                return Ok(Vec::new());
            }
            tx.commit().await?;
            Ok(ids)
        })
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
