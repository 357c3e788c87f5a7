//! The reporters' queue after the outbox (`outbox`) has written an event:
//! preparing each delivery (what to send, worked out once), claiming it by
//! compare-and-swap as build requests are claimed, and recording how its
//! sending went.
//!
//! Order: deliveries of one *topic* (a reporter's commit and context, or a
//! reporter's build for http documents) are sent one at a time, oldest
//! event first — older meaning an earlier build, or the start before the
//! end of one build. Only the oldest queued delivery of a topic may be
//! claimed, and none while an older phase of its build is not yet
//! prepared. A delivery found older than one of its topic already sent is
//! superseded, never sent: a late `pending` cannot overwrite `success`.
//!
//! Claims: `claimed_by_masterid` and `claimed_at`, taken only from nobody,
//! from an inactive (dead) master, or past the lease; every write after
//! the claim names `claimed_by_masterid = me`, so a master whose claim was
//! taken over records nothing.

use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use super::dialect::Dialect;
use super::outbox::Phase;
use super::rows::DbRow;
use super::{DbError, MasterId, Results, Store};

/// `report_deliveries.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    New = 0,
    Queued = 1,
    Sent = 2,
    Failed = 3,
    Superseded = 4,
    Skipped = 5,
}

impl DeliveryState {
    pub fn from_i64(v: i64) -> DeliveryState {
        match v {
            0 => DeliveryState::New,
            1 => DeliveryState::Queued,
            2 => DeliveryState::Sent,
            3 => DeliveryState::Failed,
            4 => DeliveryState::Superseded,
            _ => DeliveryState::Skipped,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DeliveryState::New => "new",
            DeliveryState::Queued => "queued",
            DeliveryState::Sent => "sent",
            DeliveryState::Failed => "failed",
            DeliveryState::Superseded => "superseded",
            DeliveryState::Skipped => "skipped",
        }
    }
}

/// A delivery not yet prepared.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub id: i64,
    pub reporter: String,
    pub build_id: i64,
    pub phase: Phase,
}

/// What a reporter is told about a build.
#[derive(Clone, Debug)]
pub struct ReportedBuild {
    pub id: i64,
    pub number: i64,
    pub builder: String,
    pub results: Option<Results>,
    pub started_at: DateTime<Utc>,
    pub complete_at: Option<DateTime<Utc>>,
    pub sources: Vec<ReportedSource>,
}

/// One source stamp of a reported build.
#[derive(Clone, Debug)]
pub struct ReportedSource {
    pub repository: String,
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub project: String,
    pub codebase: String,
}

/// What a prepared delivery sends: `target` is the API path (github,
/// gitlab) or empty (http), `status` what the API is told (or the event).
#[derive(Clone, Debug)]
pub struct Prepared {
    pub topic: String,
    pub status: String,
    pub target: String,
    pub body: String,
}

/// A delivery claimed for sending.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: i64,
    pub reporter: String,
    pub build_id: i64,
    pub phase: Phase,
    pub topic: String,
    pub status: String,
    pub target: String,
    pub body: String,
    pub attempts: i64,
}

/// How sending a delivery went.
#[derive(Clone, Debug)]
pub enum DeliveryOutcome {
    Sent {
        http_status: u16,
    },
    /// Not worth trying again (a 4xx other than 429).
    Refused {
        http_status: u16,
        error: String,
    },
    /// Worth trying again after `delay`, unless that passes the horizon.
    Failed {
        http_status: Option<u16>,
        error: String,
        delay: std::time::Duration,
        horizon: std::time::Duration,
    },
}

/// A build's delivery as the API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub reporter: String,
    pub event: &'static str,
    pub state: &'static str,
    pub status: Option<String>,
    pub target: Option<String>,
    pub attempts: i64,
    pub http_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// `now + ?` (bind [`plus_arg`]).
fn now_plus(d: Dialect) -> &'static str {
    match d {
        Dialect::MySql => "(NOW(6) + INTERVAL ? MICROSECOND)",
        Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f','now',?)",
    }
}

fn plus_arg(d: Dialect, t: std::time::Duration) -> String {
    match d {
        Dialect::MySql => t.as_micros().to_string(),
        Dialect::Sqlite => format!("+{}.{:03} seconds", t.as_secs(), t.subsec_millis()),
    }
}

/// Error text as stored (the column holds 1024 characters).
fn clip(s: &str) -> String {
    s.chars().take(1000).collect()
}

/// The claimable condition on `d`: queued, due, the oldest queued of its
/// topic, and no earlier phase of its build still unprepared.
const HEAD_OF_TOPIC: &str = "d.state = 1 \
     AND NOT EXISTS (SELECT 1 FROM report_deliveries o WHERE o.topic = d.topic AND o.state = 1 \
       AND (o.buildid < d.buildid OR (o.buildid = d.buildid AND o.phase < d.phase))) \
     AND NOT EXISTS (SELECT 1 FROM report_deliveries p WHERE p.reporter = d.reporter \
       AND p.buildid = d.buildid AND p.phase < d.phase AND p.state = 0)";

impl Store {
    /// Up to `limit` deliveries not yet prepared, oldest first.
    pub async fn new_deliveries(&self, limit: i64) -> Result<Vec<NewDelivery>, DbError> {
        with_pool!(self, |pool, d| {
            let rows = sqlx::query(
                "SELECT id, reporter, buildid, phase FROM report_deliveries \
                 WHERE state = 0 ORDER BY id LIMIT ?",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(NewDelivery {
                        id: r.i64("id")?,
                        reporter: r.string("reporter")?,
                        build_id: r.i64("buildid")?,
                        phase: Phase::from_i64(r.i64("phase")?),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(DbError::from)
        })
    }

    /// A build with its source stamps, as reporters see it.
    pub async fn reported_build(&self, build_id: i64) -> Result<Option<ReportedBuild>, DbError> {
        with_pool!(self, |pool, d| {
            let Some(b) = sqlx::query(
                "SELECT b.id, b.number, bl.name AS builder, b.results, b.started_at, \
                 b.complete_at, br.buildsetid FROM builds b \
                 JOIN builders bl ON bl.id = b.builderid \
                 JOIN buildrequests br ON br.id = b.buildrequestid WHERE b.id = ?",
            )
            .bind(build_id)
            .fetch_optional(pool)
            .await?
            else {
                return Ok(None);
            };
            let sources = sqlx::query(
                "SELECT ss.repository, ss.branch, ss.revision, ss.project, ss.codebase \
                 FROM buildset_sourcestamps bss JOIN sourcestamps ss ON ss.id = bss.sourcestampid \
                 WHERE bss.buildsetid = ? ORDER BY ss.id",
            )
            .bind(b.i64("buildsetid")?)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|s| {
                Ok(ReportedSource {
                    repository: s.string("repository")?,
                    branch: s.opt_string("branch")?,
                    revision: s.opt_string("revision")?,
                    project: s.string("project")?,
                    codebase: s.string("codebase")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
            Ok(Some(ReportedBuild {
                id: b.i64("id")?,
                number: b.i64("number")?,
                builder: b.string("builder")?,
                results: b.results("results")?,
                started_at: b.time("started_at")?,
                complete_at: b.opt_time("complete_at")?,
                sources,
            }))
        })
    }

    /// Record what a new delivery sends (`Ok`) or that it has nothing to
    /// send (`Err(reason)`). Any master may prepare; the first one counts.
    pub async fn prepare_delivery(
        &self,
        id: i64,
        prepared: Result<Prepared, String>,
    ) -> Result<(), DbError> {
        with_pool!(self, |pool, d| {
            match prepared {
                Ok(p) => {
                    sqlx::query(
                        "UPDATE report_deliveries SET state = 1, topic = ?, status = ?, \
                         target = ?, body = ? WHERE id = ? AND state = 0",
                    )
                    .bind(p.topic)
                    .bind(p.status)
                    .bind(p.target)
                    .bind(p.body)
                    .bind(id)
                    .execute(pool)
                    .await?;
                }
                Err(reason) => {
                    sqlx::query(
                        "UPDATE report_deliveries SET state = 5, last_error = ? \
                         WHERE id = ? AND state = 0",
                    )
                    .bind(clip(&reason))
                    .bind(id)
                    .execute(pool)
                    .await?;
                }
            }
            Ok(())
        })
    }

    /// Claim up to `limit` deliveries that are due and head their topic,
    /// for `me` if it is active: unclaimed ones, those of inactive masters,
    /// and those claimed longer than `lease` ago, each by compare-and-swap
    /// on its old owner and `claimed_at`.
    pub async fn claim_deliveries(
        &self,
        me: MasterId,
        limit: i64,
        lease: std::time::Duration,
    ) -> Result<Vec<Delivery>, DbError> {
        let candidates: Vec<(i64, Option<i64>, Option<DateTime<Utc>>)> =
            with_pool!(self, |pool, d| {
                let sql = format!(
                    "SELECT d.id, d.claimed_by_masterid, d.claimed_at FROM report_deliveries d \
                     LEFT JOIN masters m ON m.id = d.claimed_by_masterid \
                     WHERE {HEAD_OF_TOPIC} AND d.next_attempt_at <= {now} \
                     AND (d.claimed_by_masterid IS NULL OR m.id IS NULL OR m.active = 0 \
                          OR d.claimed_at < {ago}) \
                     ORDER BY d.id LIMIT ?",
                    now = d.now(),
                    ago = d.now_minus(),
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(d.ago_arg(lease))
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| {
                        Ok((
                            r.i64("id")?,
                            r.opt_i64("claimed_by_masterid")?,
                            r.opt_time("claimed_at")?,
                        ))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
        let mut won = Vec::new();
        for (id, owner, at) in candidates {
            if let Some(delivery) = self.claim_delivery(me, id, owner, at).await? {
                won.push(delivery);
            }
        }
        Ok(won)
    }

    async fn claim_delivery(
        &self,
        me: MasterId,
        id: i64,
        owner: Option<i64>,
        at: Option<DateTime<Utc>>,
    ) -> Result<Option<Delivery>, DbError> {
        with_pool!(self, |pool, d| {
            let was = match (owner, at) {
                (Some(_), Some(_)) => {
                    format!(
                        "claimed_by_masterid = ? AND claimed_at = {}",
                        d.time_param()
                    )
                }
                (Some(_), None) => "claimed_by_masterid = ? AND claimed_at IS NULL".to_owned(),
                _ => "claimed_by_masterid IS NULL".to_owned(),
            };
            let sql = format!(
                "UPDATE report_deliveries SET claimed_by_masterid = ?, claimed_at = {} \
                 WHERE id = ? AND state = 1 AND {was} \
                 AND EXISTS (SELECT 1 FROM masters WHERE masters.id = ? AND masters.active = 1)",
                d.now()
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(me).bind(id);
            if let Some(o) = owner {
                q = q.bind(o);
                if let Some(t) = at {
                    q = q.bind(d.time_arg(t));
                }
            }
            if q.bind(me).execute(pool).await?.rows_affected() != 1 {
                return Ok(None);
            }
            let Some(r) = sqlx::query(
                "SELECT id, reporter, buildid, phase, topic, status, target, body, attempts \
                 FROM report_deliveries WHERE id = ? AND claimed_by_masterid = ? AND state = 1",
            )
            .bind(id)
            .bind(me)
            .fetch_optional(pool)
            .await?
            else {
                return Ok(None);
            };
            Ok(Some(Delivery {
                id: r.i64("id")?,
                reporter: r.string("reporter")?,
                build_id: r.i64("buildid")?,
                phase: Phase::from_i64(r.i64("phase")?),
                topic: r.opt_string("topic")?.unwrap_or_default(),
                status: r.opt_string("status")?.unwrap_or_default(),
                target: r.opt_string("target")?.unwrap_or_default(),
                body: r.opt_string("body")?.unwrap_or_default(),
                attempts: r.i64("attempts")?,
            }))
        })
    }

    /// If a newer delivery of `delivery`'s topic has been sent, mark this
    /// one superseded (it must never be sent) and say so.
    pub async fn supersede_if_outdated(
        &self,
        me: MasterId,
        delivery: &Delivery,
    ) -> Result<bool, DbError> {
        with_pool!(self, |pool, d| {
            let newer: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM report_deliveries WHERE topic = ? AND state = 2 \
                 AND (buildid > ? OR (buildid = ? AND phase > ?)) LIMIT 1",
            )
            .bind(&delivery.topic)
            .bind(delivery.build_id)
            .bind(delivery.build_id)
            .bind(delivery.phase as i64)
            .fetch_optional(pool)
            .await?;
            let Some(newer) = newer else {
                return Ok(false);
            };
            sqlx::query(
                "UPDATE report_deliveries SET state = 4, last_error = ?, \
                 claimed_by_masterid = NULL, claimed_at = NULL \
                 WHERE id = ? AND claimed_by_masterid = ? AND state = 1",
            )
            .bind(format!("superseded by delivery {newer}, already sent"))
            .bind(delivery.id)
            .bind(me)
            .execute(pool)
            .await?;
            Ok(true)
        })
    }

    /// Give a claimed delivery back unsent (too late to send it safely).
    pub async fn release_delivery(&self, me: MasterId, id: i64) -> Result<(), DbError> {
        with_pool!(self, |pool, d| {
            sqlx::query(
                "UPDATE report_deliveries SET claimed_by_masterid = NULL, claimed_at = NULL \
                 WHERE id = ? AND claimed_by_masterid = ? AND state = 1",
            )
            .bind(id)
            .bind(me)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Record how sending went, if `me` still holds the claim; the state
    /// the delivery is left in (`Queued` when it will be tried again), or
    /// `None` when the claim was lost.
    pub async fn record_delivery(
        &self,
        me: MasterId,
        id: i64,
        outcome: &DeliveryOutcome,
    ) -> Result<Option<DeliveryState>, DbError> {
        with_pool!(self, |pool, d| {
            let (state, changed) = match outcome {
                DeliveryOutcome::Sent { http_status } => {
                    let sql = format!(
                        "UPDATE report_deliveries SET state = 2, sent_at = {now}, \
                         http_status = ?, last_error = NULL, attempts = attempts + 1, \
                         claimed_by_masterid = NULL, claimed_at = NULL \
                         WHERE id = ? AND claimed_by_masterid = ? AND state = 1",
                        now = d.now()
                    );
                    let n = sqlx::query(AssertSqlSafe(sql))
                        .bind(i64::from(*http_status))
                        .bind(id)
                        .bind(me)
                        .execute(pool)
                        .await?
                        .rows_affected();
                    (DeliveryState::Sent, n)
                }
                DeliveryOutcome::Refused { http_status, error } => {
                    let n = sqlx::query(
                        "UPDATE report_deliveries SET state = 3, http_status = ?, \
                         last_error = ?, attempts = attempts + 1, \
                         claimed_by_masterid = NULL, claimed_at = NULL \
                         WHERE id = ? AND claimed_by_masterid = ? AND state = 1",
                    )
                    .bind(i64::from(*http_status))
                    .bind(clip(error))
                    .bind(id)
                    .bind(me)
                    .execute(pool)
                    .await?
                    .rows_affected();
                    (DeliveryState::Failed, n)
                }
                DeliveryOutcome::Failed {
                    http_status,
                    error,
                    delay,
                    horizon,
                } => {
                    // Past the horizon by the next attempt: give up now.
                    let sql = format!(
                        "SELECT CASE WHEN created_at < {} THEN 1 ELSE 0 END AS late \
                         FROM report_deliveries WHERE id = ?",
                        d.now_minus()
                    );
                    let late: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
                        .bind(d.ago_arg(horizon.saturating_sub(*delay)))
                        .bind(id)
                        .fetch_optional(pool)
                        .await?;
                    let state = if late == Some(1) {
                        DeliveryState::Failed
                    } else {
                        DeliveryState::Queued
                    };
                    let sql = format!(
                        "UPDATE report_deliveries SET state = ?, http_status = ?, \
                         last_error = ?, attempts = attempts + 1, next_attempt_at = {}, \
                         claimed_by_masterid = NULL, claimed_at = NULL \
                         WHERE id = ? AND claimed_by_masterid = ? AND state = 1",
                        now_plus(d)
                    );
                    let n = sqlx::query(AssertSqlSafe(sql))
                        .bind(state as i64)
                        .bind(http_status.map(i64::from))
                        .bind(clip(error))
                        .bind(plus_arg(d, *delay))
                        .bind(id)
                        .bind(me)
                        .execute(pool)
                        .await?
                        .rows_affected();
                    (state, n)
                }
            };
            Ok((changed == 1).then_some(state))
        })
    }

    /// A build's deliveries, oldest first.
    pub async fn build_deliveries(&self, build_id: i64) -> Result<Vec<DeliveryRow>, DbError> {
        with_pool!(self, |pool, d| {
            let rows = sqlx::query(
                "SELECT id, reporter, phase, state, status, target, attempts, http_status, \
                 last_error, created_at, next_attempt_at, sent_at FROM report_deliveries \
                 WHERE buildid = ? ORDER BY id",
            )
            .bind(build_id)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(DeliveryRow {
                        id: r.i64("id")?,
                        reporter: r.string("reporter")?,
                        event: Phase::from_i64(r.i64("phase")?).name(),
                        state: DeliveryState::from_i64(r.i64("state")?).name(),
                        status: r.opt_string("status")?,
                        target: r.opt_string("target")?,
                        attempts: r.i64("attempts")?,
                        http_status: r.opt_i64("http_status")?,
                        last_error: r.opt_string("last_error")?,
                        created_at: r.time("created_at")?,
                        next_attempt_at: r.time("next_attempt_at")?,
                        sent_at: r.opt_time("sent_at")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(DbError::from)
        })
    }

    /// Seconds since the oldest delivery still to send was enqueued
    /// (0 when none waits).
    pub async fn oldest_pending_delivery_age(&self) -> Result<f64, DbError> {
        let (oldest, now) = with_pool!(self, |pool, d| {
            let oldest: Option<DateTime<Utc>> = sqlx::query(
                "SELECT MIN(created_at) AS oldest FROM report_deliveries WHERE state IN (0, 1)",
            )
            .fetch_one(pool)
            .await?
            .opt_time("oldest")?;
            (oldest, self.db_now().await?)
        });
        Ok(oldest.map_or(0.0, |t| {
            ((now - t).num_milliseconds() as f64 / 1000.0).max(0.0)
        }))
    }
}
