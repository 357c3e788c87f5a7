//! The claim protocol on `buildrequests`: claim (compare-and-swap), pick and
//! claim, renew, unclaim, complete, and giving back other masters' claims.
//!
//! Winning is decided in a write transaction that first locks the candidate
//! rows and then updates exactly those: on MySQL the pick is
//! `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent masters skip each
//! other's candidates instead of queueing on the oldest row; on SQLite
//! `BEGIN IMMEDIATE` holds the database's single write lock. The `UPDATE`
//! repeats the compare-and-swap condition and must touch every locked row.
//! On MySQL the two hot transactions — the per-builder pick the claim loop
//! runs and completing requests — go to the server as one script each
//! (`mysql_script`), the same statements in one round trip.
//!
//! Releasing someone else's claim (expired lease, dead master, older
//! incarnation) is one compare-and-swap per row naming the old owner and the
//! old `claimed_at`; whoever changes the row won it, and also marks the old
//! owner's unfinished build of that request Retry.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use super::buildset_finish::count_down_buildsets;
use super::candidates::best_per_builder_sql;
use super::dialect::placeholders;
use super::rows::DbRow;
use super::{BeginWrite, DbError, MasterId, Renewal, Results, Store, mysql_script};

/// In an open write transaction `$tx`, add `$sign` (1 or -1) per request
/// among `$ids` to its builder's `claimed_requests`. `$ids` must be exactly
/// the requests whose claim this transaction has just taken or ended
/// (claimed, unclaimed, released, or completed while claimed). Builder rows
/// are written in id order.
macro_rules! count_claims {
    ($tx:expr, $ids:expr, $sign:expr) => {{
        let ids: &[i64] = $ids;
        let sign: i64 = $sign;
        if !ids.is_empty() {
            let sql = format!(
                "SELECT builderid, COUNT(*) AS n FROM buildrequests WHERE id IN ({}) \
                 GROUP BY builderid ORDER BY builderid",
                $crate::db::dialect::placeholders(ids.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            for r in q.fetch_all(&mut *$tx).await? {
                sqlx::query(
                    "UPDATE builders SET claimed_requests = claimed_requests + ? WHERE id = ?",
                )
                .bind(sign * $crate::db::rows::DbRow::i64(&r, "n")?)
                .bind($crate::db::rows::DbRow::i64(&r, "builderid")?)
                .execute(&mut *$tx)
                .await?;
            }
        }
    }};
}
pub(crate) use count_claims;

/// In an open write transaction `$tx`, claim for `$me` the rows `$ids` that
/// the caller has just locked; fails if any of them did not change.
macro_rules! mark_claimed {
    ($tx:expr, $d:expr, $me:expr, $ids:expr) => {{
        let ids: &[i64] = $ids;
        let sql = format!(
            "UPDATE buildrequests SET claimed_by_masterid = ?, claimed_at = {} \
             WHERE id IN ({}) AND claimed_by_masterid IS NULL AND complete = 0 \
             AND EXISTS (SELECT 1 FROM masters WHERE masters.id = ? AND masters.active = 1)",
            $d.now(),
            placeholders(ids.len())
        );
        // An incarnation already declared dead claims nothing (it finds out at its next heartbeat).
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind($me);
        for id in ids {
            q = q.bind(id);
        }
        q = q.bind($me);
        let n = q.execute(&mut *$tx).await?.rows_affected();
        if let Err(e) = check_claimed(ids.len(), n) {
            // Release the locked candidates now: a transaction merely dropped
            // rolls back only when its connection is next used, and until then
            // other masters' pick would skip those rows.
            $tx.rollback().await?;
            return Err(e);
        }
        count_claims!($tx, ids, 1);
    }};
}

/// A claim must update every row it locked; none means this master
/// incarnation was declared dead (it finds out at its next heartbeat).
pub(crate) fn check_claimed(locked: usize, claimed: u64) -> Result<(), DbError> {
    if claimed == locked as u64 {
        return Ok(());
    }
    Err(DbError::Other(if claimed == 0 {
        "claim refused: this master incarnation is no longer active".into()
    } else {
        format!("claim: locked {locked} requests but updated {claimed}")
    }))
}

/// Candidates fetched per wanted request in `pick_and_claim`.
const PICK_OVERFETCH: i64 = 4;
/// Candidate rounds in `pick_and_claim` when every candidate was taken.
const PICK_ATTEMPTS: usize = 3;

/// Unique ids in first-seen order.
fn dedup(ids: &[i64]) -> Vec<i64> {
    let mut seen = BTreeSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

impl Store {
    /// Claim exactly these requests for `me`. Returns the ids won now; the
    /// rest (complete, claimed by anyone, being claimed, missing) are not in it.
    pub async fn claim_requests(&self, me: MasterId, ids: &[i64]) -> Result<Vec<i64>, DbError> {
        let ids = &dedup(ids);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!(
                "SELECT id FROM buildrequests \
                 WHERE id IN ({}) AND claimed_by_masterid IS NULL AND complete = 0 \
                 ORDER BY id{}",
                placeholders(ids.len()),
                d.skip_locked()
            );
            let mut q = sqlx::query_scalar(AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            let won: Vec<i64> = q.fetch_all(&mut *tx).await?;
            if !won.is_empty() {
                mark_claimed!(tx, d, me, &won);
            }
            tx.commit().await?;
            Ok(won)
        })
    }

    /// Claim up to `limit` pending requests of these builders, best first:
    /// priority (high first), then age, then id.
    ///
    /// Candidates come from one indexed range per builder (merged in SQL),
    /// never from a scan of the whole queue in priority order, which costs
    /// tens of milliseconds at 100k pending when the chosen builders' work
    /// sits behind higher-priority work of others. The candidates are then
    /// locked and re-checked (`SKIP LOCKED`), so concurrent masters split
    /// them; a master that finds them all taken looks again.
    pub async fn pick_and_claim(
        &self,
        me: MasterId,
        builder_ids: &[i64],
        limit: usize,
    ) -> Result<Vec<i64>, DbError> {
        let builder_ids = &dedup(builder_ids);
        if builder_ids.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let wanted = limit;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Room for the candidates of masters picking at the same moment.
        let overfetch = limit.saturating_mul(PICK_OVERFETCH).max(limit + 8);
        let candidates_sql = &format!(
            "SELECT id FROM ({}) AS candidates \
             ORDER BY priority DESC, submitted_at, id LIMIT ?",
            best_per_builder_sql(builder_ids.len())
        );
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let mut won: Vec<i64> = Vec::new();
            for _ in 0..PICK_ATTEMPTS {
                let mut q = sqlx::query_scalar(AssertSqlSafe(candidates_sql.clone()));
                for b in builder_ids {
                    q = q.bind(b).bind(overfetch);
                }
                let candidates: Vec<i64> = q.bind(overfetch).fetch_all(&mut *tx).await?;
                if candidates.is_empty() {
                    break;
                }
                // Lock in candidate order, only as many as still wanted: no
                // ORDER BY here, which would tempt the optimiser into a
                // queue-wide scan in priority order.
                let mut rest: &[i64] = &candidates;
                while !rest.is_empty() {
                    let want = wanted - won.len();
                    if want == 0 {
                        break;
                    }
                    let (chunk, tail) = rest.split_at(want.min(rest.len()));
                    rest = tail;
                    let sql = format!(
                        "SELECT id FROM buildrequests \
                         WHERE id IN ({}) AND complete = 0 AND claimed_by_masterid IS NULL{}",
                        placeholders(chunk.len()),
                        d.skip_locked()
                    );
                    let mut q = sqlx::query_scalar(AssertSqlSafe(sql));
                    for id in chunk {
                        q = q.bind(id);
                    }
                    let locked: BTreeSet<i64> = q.fetch_all(&mut *tx).await?.into_iter().collect();
                    won.extend(chunk.iter().filter(|id| locked.contains(id)));
                }
                if !won.is_empty() || (candidates.len() as i64) < overfetch {
                    break;
                }
            }
            if !won.is_empty() {
                mark_claimed!(tx, d, me, &won);
            }
            tx.commit().await?;
            Ok(won)
        })
    }

    /// One claiming round for several builders in one transaction: for each
    /// (builder id, max), up to max of its best pending requests. Returns
    /// (request id, builder id) pairs.
    pub async fn pick_and_claim_per_builder(
        &self,
        me: MasterId,
        wants: &[(i64, usize)],
    ) -> Result<Vec<(i64, i64)>, DbError> {
        // One entry per builder (a builder named twice wants the sum).
        let mut merged: Vec<(i64, i64)> = Vec::new();
        for (b, n) in wants.iter().filter(|(_, n)| *n > 0) {
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            match merged.iter_mut().find(|(mb, _)| mb == b) {
                Some((_, m)) => *m = m.saturating_add(n),
                None => merged.push((*b, n)),
            }
        }
        let wants = &merged;
        if wants.is_empty() {
            return Ok(Vec::new());
        }
        let script = self.try_script(|pool| async move {
            mysql_script::pick_and_claim_per_builder(&pool, me, wants).await
        });
        if let Some(won) = script.await {
            return won;
        }
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!(
                "SELECT id FROM buildrequests \
                 WHERE complete = 0 AND claimed_by_masterid IS NULL AND builderid = ? \
                 ORDER BY priority DESC, submitted_at, id LIMIT ?{}",
                d.skip_locked()
            );
            let mut won = Vec::new();
            for (builder, max) in wants {
                let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql.clone()))
                    .bind(builder)
                    .bind(max)
                    .fetch_all(&mut *tx)
                    .await?;
                won.extend(ids.into_iter().map(|id| (id, *builder)));
            }
            if !won.is_empty() {
                let ids: Vec<i64> = won.iter().map(|(id, _)| *id).collect();
                mark_claimed!(tx, d, me, &ids);
            }
            tx.commit().await?;
            Ok(won)
        })
    }

    /// Refresh `claimed_at` on the requests `me` still holds; report the rest
    /// as lost (released, taken over or completed): stop their builds.
    pub async fn renew_claims(&self, me: MasterId, ids: &[i64]) -> Result<Renewal, DbError> {
        let ids = &dedup(ids);
        if ids.is_empty() {
            return Ok(Renewal::default());
        }
        let held: BTreeSet<i64> = with_pool!(self, |pool, d| {
            let sql = format!(
                "UPDATE buildrequests SET claimed_at = {} \
                 WHERE id IN ({}) AND claimed_by_masterid = ? AND complete = 0",
                d.now(),
                placeholders(ids.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            q.bind(me).execute(pool).await?;
            // Whatever is ours after the update was renewed by it: nothing
            // else hands a claim to us.
            let sql = format!(
                "SELECT id FROM buildrequests \
                 WHERE id IN ({}) AND claimed_by_masterid = ? AND complete = 0",
                placeholders(ids.len())
            );
            let mut q = sqlx::query_scalar(AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            q.bind(me).fetch_all(pool).await?.into_iter().collect()
        });
        let (renewed, lost) = ids.iter().partition(|id| held.contains(id));
        Ok(Renewal { renewed, lost })
    }

    /// Give back requests `me` holds and has not completed; returns those released.
    pub async fn unclaim(&self, me: MasterId, ids: &[i64]) -> Result<Vec<i64>, DbError> {
        let ids = &dedup(ids);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!(
                "SELECT id FROM buildrequests \
                 WHERE id IN ({}) AND claimed_by_masterid = ? AND complete = 0 ORDER BY id{}",
                placeholders(ids.len()),
                d.for_update()
            );
            let mut q = sqlx::query_scalar(AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            let mine: Vec<i64> = q.bind(me).fetch_all(&mut *tx).await?;
            if !mine.is_empty() {
                let sql = format!(
                    "UPDATE buildrequests SET claimed_by_masterid = NULL, claimed_at = NULL \
                     WHERE id IN ({}) AND claimed_by_masterid = ? AND complete = 0",
                    placeholders(mine.len())
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for id in &mine {
                    q = q.bind(id);
                }
                q.bind(me).execute(&mut *tx).await?;
                count_claims!(tx, &mine, -1);
            }
            tx.commit().await?;
            Ok(mine)
        })
    }

    /// Complete requests `me` holds (fenced); returns those completed now.
    /// Counts them down on their buildsets, completing each buildset whose
    /// count reaches zero, and off their builders' claimed counts.
    pub async fn complete_requests(
        &self,
        me: MasterId,
        ids: &[i64],
        results: Results,
    ) -> Result<Vec<i64>, DbError> {
        let ids = &dedup(ids);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let script = self.try_script(|pool| async move {
            mysql_script::complete_requests(&pool, me, ids, results).await
        });
        if let Some(done) = script.await {
            return done;
        }
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!(
                "SELECT id, buildsetid FROM buildrequests \
                 WHERE id IN ({}) AND claimed_by_masterid = ? AND complete = 0 ORDER BY id{}",
                placeholders(ids.len()),
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
                let sql = format!(
                    "UPDATE buildrequests SET complete = 1, results = ?, complete_at = {} \
                     WHERE id IN ({}) AND claimed_by_masterid = ? AND complete = 0",
                    d.now(),
                    placeholders(done.len())
                );
                let mut q = sqlx::query(AssertSqlSafe(sql)).bind(results.as_i64());
                for id in &done {
                    q = q.bind(id);
                }
                q.bind(me).execute(&mut *tx).await?;
                count_down_buildsets!(tx, d, &buildsets, results);
                count_claims!(tx, &done, -1);
            }
            tx.commit().await?;
            Ok(done)
        })
    }

    /// Cancel a request nobody has claimed yet: it completes as Cancelled.
    pub async fn cancel_pending_request(&self, id: i64) -> Result<bool, DbError> {
        self.complete_unclaimed(id, Results::Cancelled).await
    }

    /// Complete a request nobody has claimed (cancelled, or collapsed into a
    /// newer one), finishing its buildset if it was the last open request.
    /// False when it was claimed, complete or missing.
    pub(crate) async fn complete_unclaimed(
        &self,
        id: i64,
        results: Results,
    ) -> Result<bool, DbError> {
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let sql = format!(
                "SELECT buildsetid FROM buildrequests \
                 WHERE id = ? AND claimed_by_masterid IS NULL AND complete = 0{}",
                d.for_update()
            );
            let bs: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(bs) = bs else {
                tx.rollback().await?;
                return Ok(false);
            };
            let sql = format!(
                "UPDATE buildrequests SET complete = 1, results = ?, complete_at = {} \
                 WHERE id = ? AND claimed_by_masterid IS NULL AND complete = 0",
                d.now()
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(results.as_i64())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            count_down_buildsets!(tx, d, &BTreeMap::from([(bs, 1)]), results);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Release claims not renewed for `lease`, whoever holds them. Each row is
    /// won by exactly one caller; returns the ids this call released.
    pub async fn release_expired_claims(&self, lease: Duration) -> Result<Vec<i64>, DbError> {
        let rows = with_pool!(self, |pool, d| {
            let sql = format!(
                "SELECT id, claimed_by_masterid, claimed_at FROM buildrequests \
                 WHERE complete = 0 AND claimed_at < {} AND claimed_by_masterid IS NOT NULL \
                 ORDER BY id",
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

    /// The unfinished requests `me` holds, with their `claimed_at`.
    pub async fn claims_held(&self, me: MasterId) -> Result<Vec<(i64, DateTime<Utc>)>, DbError> {
        with_pool!(self, |pool, d| {
            let rows = sqlx::query(
                "SELECT id, claimed_by_masterid, claimed_at FROM buildrequests \
                 WHERE claimed_by_masterid = ? AND complete = 0 ORDER BY id",
            )
            .bind(me)
            .fetch_all(pool)
            .await?;
            Ok(claim_rows(&rows)?
                .into_iter()
                .map(|(id, _, at)| (id, at))
                .collect())
        })
    }

    /// Give back claims of `me` that nothing here runs, each only if its
    /// `claimed_at` is still the one given (compare-and-swap, skipping rows
    /// another session holds locked). Returns the ids released.
    pub async fn release_orphaned_claims(
        &self,
        me: MasterId,
        claims: &[(i64, DateTime<Utc>)],
    ) -> Result<Vec<i64>, DbError> {
        self.release_claims_cas(claims.iter().map(|(id, at)| (*id, me, *at)).collect())
            .await
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
                 WHERE claimed_by_masterid IN ({}) AND complete = 0 ORDER BY id",
                placeholders(masters.len())
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
        let rows = with_pool!(self, |pool, d| {
            let rows = sqlx::query(
                "SELECT br.id, br.claimed_by_masterid, br.claimed_at FROM buildrequests br \
                 LEFT JOIN masters m ON m.id = br.claimed_by_masterid \
                 WHERE br.claimed_by_masterid IS NOT NULL AND br.complete = 0 \
                 AND (m.id IS NULL OR m.active = 0) ORDER BY br.id",
            )
            .fetch_all(pool)
            .await?;
            claim_rows(&rows)?
        });
        self.release_claims_cas(rows).await
    }

    /// One compare-and-swap per (request, old owner, old claimed_at); the
    /// winner also marks the old owner's unfinished build of it Retry.
    async fn release_claims_cas(
        &self,
        rows: Vec<(i64, MasterId, DateTime<Utc>)>,
    ) -> Result<Vec<i64>, DbError> {
        let mut released = Vec::new();
        for (id, owner, claimed_at) in rows {
            let won = with_pool_retry!(self, |pool, d| {
                let mut tx = pool.begin_write().await?;
                // Never wait on a row another session holds: that may be a
                // frozen master inside a transaction, and waiting would stall
                // this reaper (and everything queued behind it). A skipped row
                // is taken on a later call, once its lock is gone.
                let sql = format!(
                    "SELECT id FROM buildrequests \
                     WHERE id = ? AND claimed_by_masterid = ? AND claimed_at = {} AND complete = 0{}",
                    d.time_param(),
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
                let sql = format!(
                    "UPDATE buildrequests SET claimed_by_masterid = NULL, claimed_at = NULL \
                     WHERE id = ? AND claimed_by_masterid = ? AND claimed_at = {} AND complete = 0",
                    d.time_param()
                );
                let won = sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .bind(owner)
                    .bind(d.time_arg(claimed_at))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if won {
                    count_claims!(tx, &[id], -1);
                    let sql = format!(
                        "UPDATE builds SET complete_at = {}, results = ? \
                         WHERE buildrequestid = ? AND masterid = ? AND complete_at IS NULL",
                        d.now()
                    );
                    sqlx::query(AssertSqlSafe(sql))
                        .bind(Results::Retry.as_i64())
                        .bind(id)
                        .bind(owner)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok::<bool, DbError>(won)
            })?;
            if won {
                released.push(id);
            }
        }
        Ok(released)
    }
}

fn claim_rows<R: DbRow>(rows: &[R]) -> Result<Vec<(i64, MasterId, DateTime<Utc>)>, sqlx::Error> {
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
