//! Steps 3 and 5 for one build: starting it and finishing it, fenced on the
//! request's claim — a master that lost the claim (or was declared dead)
//! can neither start a build for the request nor record its outcome.

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;

use super::counts::count_claims;
use super::{script, sql};
use crate::db::buildset_finish::count_down_buildsets;
use crate::db::error::is_unique_violation;
use crate::db::rows::{DbRow, InsertId};
use crate::db::{BeginWrite, BuildRow, DbError, MasterId, Results, Store, outbox};

/// Attempts at picking the next build number when the builder's row lock
/// did not keep another start out: on Galera the lock holds on one node, and
/// a number another node committed may arrive between the read and the
/// insert.
const BUILD_NUMBER_ATTEMPTS: usize = 20;

impl Store {
    /// Record a new build of `request_id` if `me` still holds its claim;
    /// `None` means the claim is lost. Numbers are per builder, max + 1.
    pub async fn start_build(
        &self,
        me: MasterId,
        request_id: i64,
        builder_id: i64,
        worker_id: i64,
    ) -> Result<Option<BuildRow>, DbError> {
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!(
                "SELECT id FROM buildrequests WHERE id = ? AND {} AND {}{}",
                sql::held_by("?"),
                sql::active_master("buildrequests.claimed_by_masterid"),
                d.for_update()
            );
            let held: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(request_id)
                .bind(me)
                .fetch_optional(&mut *tx)
                .await?;
            if held.is_none() {
                // End the transaction now: merely dropped, it would roll back
                // (and let go of anything it locked) only when its connection
                // is next used.
                tx.rollback().await?;
                return Ok(None);
            }
            // The lock above holds on this database node only. Writing the
            // claim's row (a start renews the lease) makes a release of the
            // claim committed meanwhile on another Galera node conflict with
            // this start at certification, so they cannot both commit; on
            // one server the lock already keeps them apart.
            let sql = format!(
                "UPDATE buildrequests SET claimed_at = {} WHERE id = ? AND {}{}",
                d.now(),
                sql::held_by("?"),
                d.in_tx()
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(request_id)
                .bind(me)
                .execute(&mut *tx)
                .await?;
            // A replay (the first attempt committed but its answer was lost)
            // finds the build it made: a master runs one build per request.
            let sql = "SELECT id, number, started_at FROM builds \
                       WHERE buildrequestid = ? AND masterid = ? AND complete_at IS NULL \
                       ORDER BY id DESC LIMIT 1";
            if let Some(row) = sqlx::query(sql)
                .bind(request_id)
                .bind(me)
                .fetch_optional(&mut *tx)
                .await?
            {
                let build = BuildRow {
                    id: row.i64("id")?,
                    number: row.i64("number")?,
                    builder_id,
                    request_id,
                    master_id: me,
                    worker_id,
                    started_at: row.time("started_at")?,
                };
                commit_checked!(tx, d);
                return Ok(Some(build));
            }
            // One number at a time per builder: starts of one builder's
            // builds queue on its row here, so each reads the number the
            // last one committed. (Without the lock, masters starting side
            // by side read the same max and all but one hit the unique key,
            // over and over; on Galera the lock holds on one node only, and
            // two nodes' equal numbers fail certification and run again.)
            let sql = format!("SELECT id FROM builders WHERE id = ?{}", d.for_update());
            sqlx::query(AssertSqlSafe(sql))
                .bind(builder_id)
                .fetch_optional(&mut *tx)
                .await?;
            let insert = format!(
                "INSERT INTO builds \
                 (number, builderid, buildrequestid, masterid, workerid, started_at, state_string) \
                 SELECT COALESCE(MAX(number), 0) + 1, ?, ?, ?, ?, {}, 'starting' \
                 FROM builds WHERE builderid = ?{}",
                d.now(),
                d.in_tx_having()
            );
            let mut attempt = 0;
            let id = loop {
                attempt += 1;
                let r = sqlx::query(AssertSqlSafe(insert.clone()))
                    .bind(builder_id)
                    .bind(request_id)
                    .bind(me)
                    .bind(worker_id)
                    .bind(builder_id)
                    .execute(&mut *tx)
                    .await;
                match r {
                    // Only the `in_tx` guard stops the aggregate's one row.
                    Ok(r) if r.rows_affected() == 0 => return Err(DbError::TransactionEnded),
                    Ok(r) => break r.insert_id(),
                    Err(e) if is_unique_violation(&e) && attempt < BUILD_NUMBER_ATTEMPTS => {
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let row = sqlx::query("SELECT number, started_at FROM builds WHERE id = ?")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            let build = BuildRow {
                id,
                number: row.i64("number")?,
                builder_id,
                request_id,
                master_id: me,
                worker_id,
                started_at: row.time("started_at")?,
            };
            // Reporters (outbox): the start is reported iff it commits.
            outbox::enqueue_for_build!(self, tx, d, id, outbox::Phase::Started);
            commit_checked!(tx, d);
            Ok(Some(build))
        })
    }

    /// Finish a build in one transaction. With `complete_request`, complete
    /// the request too (fenced); without, give the request back to the queue.
    /// Returns `false` when `me` no longer holds the claim: the build is then
    /// recorded as Retry and the request is left alone. A build already
    /// finished keeps its outcome, so a replay after a lost answer changes
    /// nothing.
    pub async fn finish_build(
        &self,
        me: MasterId,
        build_id: i64,
        request_id: i64,
        results: Results,
        complete_request: bool,
    ) -> Result<bool, DbError> {
        if complete_request {
            // Reporters (outbox): the script's statement enqueuing the end.
            let enqueue = &outbox::script_enqueue_finished(&self.report_routes(), build_id);
            let script = self.try_script(|pool| async move {
                script::finish_build_completing(&pool, me, build_id, request_id, results, enqueue)
                    .await
            });
            if let Some(done) = script.await {
                return done;
            }
        }
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!(
                "SELECT buildsetid FROM buildrequests WHERE id = ? AND {}{}",
                sql::held_by("?"),
                d.for_update()
            );
            let held: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(request_id)
                .bind(me)
                .fetch_optional(&mut *tx)
                .await?;
            let build_results = match held {
                None => Results::Retry,
                Some(bs) if complete_request => {
                    let which = format!("id = ? AND {}{}", sql::held_by("?"), d.in_tx());
                    let sql = sql::complete(&which, "?", d.now());
                    sqlx::query(AssertSqlSafe(sql))
                        .bind(results.as_i64())
                        .bind(request_id)
                        .bind(me)
                        .execute(&mut *tx)
                        .await?;
                    count_down_buildsets!(tx, d, &BTreeMap::from([(bs, 1)]), results);
                    count_claims!(tx, d, &[request_id], -1);
                    results
                }
                Some(_) => {
                    let which = format!("id = ? AND {}{}", sql::held_by("?"), d.in_tx());
                    sqlx::query(AssertSqlSafe(sql::unclaim(&which)))
                        .bind(request_id)
                        .bind(me)
                        .execute(&mut *tx)
                        .await?;
                    count_claims!(tx, d, &[request_id], -1);
                    results
                }
            };
            let which = format!("id = ? AND masterid = ?{}", d.in_tx());
            let sql = sql::end_builds(&which, "?", d.now());
            sqlx::query(AssertSqlSafe(sql))
                .bind(build_results.as_i64())
                .bind(build_id)
                .bind(me)
                .execute(&mut *tx)
                .await?;
            // Reporters (outbox): the end is reported iff it commits.
            outbox::enqueue_for_build!(self, tx, d, build_id, outbox::Phase::Finished);
            commit_checked!(tx, d);
            Ok(held.is_some())
        })
    }
}
