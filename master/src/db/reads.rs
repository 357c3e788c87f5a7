//! Read-only listings for the HTTP API and the CLI: requests, builds, steps,
//! per-builder queue counts and who owns which scheduler or change source.
//! Lists are newest first and paginated with `limit` (`<= 0`: no limit) and
//! `offset`. Changes are listed in `change_reads`.

use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::dialect::placeholders;
use super::rows::DbRow;
use super::{
    BuildFilter, BuildInfo, BuilderCounts, DbError, ObjectOwnerRow, RequestFilter, RequestRow,
    SourceSummary, StepRow, Store,
};

/// The provenance summary of a request `br`: its buildset's reason and
/// first source stamp (columns `bs_reason`, `ss_repository`, `ss_branch`,
/// `ss_revision`).
const SOURCE_COLUMNS: &str = "bs.reason AS bs_reason, ss.repository AS ss_repository, ss.branch AS ss_branch, \
     ss.revision AS ss_revision";
const SOURCE_JOIN: &str = "JOIN buildsets bs ON bs.id = br.buildsetid \
     LEFT JOIN sourcestamps ss ON ss.id = (SELECT MIN(x.sourcestampid) \
     FROM buildset_sourcestamps x WHERE x.buildsetid = br.buildsetid)";

fn request_select() -> String {
    format!(
        "SELECT br.id, br.buildsetid, b.name AS builder, br.priority, \
         br.submitted_at, m.name AS master_name, br.claimed_by_masterid, br.claimed_at, \
         br.complete, br.complete_at, br.results, {SOURCE_COLUMNS} \
         FROM buildrequests br JOIN builders b ON b.id = br.builderid \
         LEFT JOIN masters m ON m.id = br.claimed_by_masterid {SOURCE_JOIN}"
    )
}

fn build_select() -> String {
    format!(
        "SELECT bu.id, bu.number, b.name AS builder, bu.buildrequestid, \
         COALESCE(m.name, '') AS master_name, w.name AS worker, bu.started_at, bu.complete_at, \
         bu.results, bu.state_string, br.buildsetid, {SOURCE_COLUMNS} \
         FROM builds bu JOIN builders b ON b.id = bu.builderid \
         JOIN buildrequests br ON br.id = bu.buildrequestid \
         LEFT JOIN masters m ON m.id = bu.masterid \
         LEFT JOIN workers w ON w.id = bu.workerid {SOURCE_JOIN}"
    )
}

/// A build's buildset has one source stamp whose `columns` are the bound
/// values (nothing when `columns` is empty).
fn stamp_filter(columns: &[&str]) -> String {
    if columns.is_empty() {
        return String::new();
    }
    let conds: String = columns.iter().map(|c| format!(" AND s2.{c} = ?")).collect();
    format!(
        " AND EXISTS (SELECT 1 FROM buildset_sourcestamps y \
         JOIN sourcestamps s2 ON s2.id = y.sourcestampid \
         WHERE y.buildsetid = br.buildsetid{conds})"
    )
}

fn source_summary<R: DbRow>(r: &R) -> Result<SourceSummary, sqlx::Error> {
    Ok(SourceSummary {
        reason: r.string("bs_reason")?,
        repository: r.opt_string("ss_repository")?,
        branch: r.opt_string("ss_branch")?,
        revision: r.opt_string("ss_revision")?,
    })
}

fn request_row<R: DbRow>(r: &R) -> Result<RequestRow, sqlx::Error> {
    Ok(RequestRow {
        id: r.i64("id")?,
        buildset_id: r.i64("buildsetid")?,
        builder: r.string("builder")?,
        priority: i32::try_from(r.i64("priority")?).unwrap_or_default(),
        submitted_at: r.time("submitted_at")?,
        claimed_by_master: r.opt_string("master_name")?,
        claimed_by_masterid: r.opt_i64("claimed_by_masterid")?,
        claimed_at: r.opt_time("claimed_at")?,
        complete: r.flag("complete")?,
        complete_at: r.opt_time("complete_at")?,
        results: r.results("results")?,
        source: source_summary(r)?,
    })
}

fn build_info<R: DbRow>(r: &R) -> Result<BuildInfo, sqlx::Error> {
    Ok(BuildInfo {
        id: r.i64("id")?,
        number: r.i64("number")?,
        builder: r.string("builder")?,
        buildrequest_id: r.i64("buildrequestid")?,
        master: r.string("master_name")?,
        worker: r.opt_string("worker")?,
        started_at: r.time("started_at")?,
        complete_at: r.opt_time("complete_at")?,
        results: r.results("results")?,
        state_string: r.string("state_string")?,
        buildset_id: r.i64("buildsetid")?,
        source: source_summary(r)?,
    })
}

fn limit_of(limit: i64) -> i64 {
    if limit <= 0 { i64::MAX } else { limit }
}

impl Store {
    pub async fn list_requests(&self, f: &RequestFilter) -> Result<Vec<RequestRow>, DbError> {
        let mut sql = format!("{} WHERE 1 = 1", request_select());
        if f.complete.is_some() {
            sql.push_str(" AND br.complete = ?");
        }
        if f.builder.is_some() {
            sql.push_str(" AND b.name = ?");
        }
        if f.buildset_id.is_some() {
            sql.push_str(" AND br.buildsetid = ?");
        }
        sql.push_str(" ORDER BY br.id DESC LIMIT ? OFFSET ?");
        with_pool!(self, |pool, d| {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            if let Some(c) = f.complete {
                q = q.bind(i64::from(c));
            }
            if let Some(b) = &f.builder {
                q = q.bind(b);
            }
            if let Some(bs) = f.buildset_id {
                q = q.bind(bs);
            }
            let rows = q
                .bind(limit_of(f.limit))
                .bind(f.offset.max(0))
                .fetch_all(pool)
                .await?;
            Ok(rows.iter().map(request_row).collect::<Result<_, _>>()?)
        })
    }

    pub async fn get_request(&self, id: i64) -> Result<Option<RequestRow>, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!("{} WHERE br.id = ?", request_select());
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(request_row).transpose()?)
        })
    }

    pub async fn list_builds(&self, f: &BuildFilter) -> Result<Vec<BuildInfo>, DbError> {
        let mut sql = format!("{} WHERE 1 = 1", build_select());
        if f.builder.is_some() {
            sql.push_str(" AND b.name = ?");
        }
        if f.request_id.is_some() {
            sql.push_str(" AND bu.buildrequestid = ?");
        }
        let stamp_columns: Vec<&str> = [("branch", &f.branch), ("revision", &f.revision)]
            .into_iter()
            .filter(|(_, v)| v.is_some())
            .map(|(c, _)| c)
            .collect();
        sql.push_str(&stamp_filter(&stamp_columns));
        sql.push_str(" ORDER BY bu.id DESC LIMIT ? OFFSET ?");
        with_pool!(self, |pool, d| {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            if let Some(b) = &f.builder {
                q = q.bind(b);
            }
            if let Some(r) = f.request_id {
                q = q.bind(r);
            }
            if let Some(b) = &f.branch {
                q = q.bind(b);
            }
            if let Some(r) = &f.revision {
                q = q.bind(r);
            }
            let rows = q
                .bind(limit_of(f.limit))
                .bind(f.offset.max(0))
                .fetch_all(pool)
                .await?;
            Ok(rows.iter().map(build_info).collect::<Result<_, _>>()?)
        })
    }

    pub async fn get_build(&self, id: i64) -> Result<Option<BuildInfo>, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!("{} WHERE bu.id = ?", build_select());
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            Ok(row.as_ref().map(build_info).transpose()?)
        })
    }

    /// Steps of a build in order (numbered from 0).
    pub async fn list_steps(&self, build_id: i64) -> Result<Vec<StepRow>, DbError> {
        with_pool!(self, |pool, d| {
            let rows = sqlx::query(
                "SELECT number, name, started_at, complete_at, results, state_string \
                 FROM steps WHERE buildid = ? ORDER BY number",
            )
            .bind(build_id)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(StepRow {
                    number: i32::try_from(r.i64("number")?).unwrap_or_default(),
                    name: r.string("name")?,
                    started_at: r.opt_time("started_at")?,
                    complete_at: r.opt_time("complete_at")?,
                    results: r.results("results")?,
                    state_string: r.string("state_string")?,
                });
            }
            Ok(out)
        })
    }

    /// Per builder (by name): incomplete requests without a running build,
    /// and running (incomplete) builds.
    pub async fn builder_counts(&self) -> Result<Vec<BuilderCounts>, DbError> {
        with_pool!(self, |pool, d| {
            let rows = sqlx::query(
                "SELECT b.name, \
                 (SELECT COUNT(*) FROM buildrequests br \
                  WHERE br.builderid = b.id AND br.complete = 0 \
                  AND NOT EXISTS (SELECT 1 FROM builds x \
                                  WHERE x.buildrequestid = br.id AND x.complete_at IS NULL)) \
                 AS pending, \
                 (SELECT COUNT(*) FROM builds x \
                  WHERE x.builderid = b.id AND x.complete_at IS NULL) AS running \
                 FROM builders b ORDER BY b.name",
            )
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(BuilderCounts {
                    name: r.string("name")?,
                    pending: r.i64("pending")?,
                    running: r.i64("running")?,
                });
            }
            Ok(out)
        })
    }

    /// The `object_owners` rows of these kinds (all kinds when empty), with
    /// their master's name and whether it is active, in one query.
    /// `lease_current` says whether the owner renewed within `lease` by the
    /// database's clock.
    pub async fn list_object_owners(
        &self,
        kinds: &[&str],
        lease: Duration,
    ) -> Result<Vec<ObjectOwnerRow>, DbError> {
        with_pool!(self, |pool, d| {
            let mut sql = format!(
                "SELECT o.kind, o.name, o.masterid, o.claimed_at, m.name AS master_name, \
                 CASE WHEN m.active = 1 THEN 1 ELSE 0 END AS master_active, \
                 CASE WHEN o.claimed_at >= {} THEN 1 ELSE 0 END AS lease_current \
                 FROM object_owners o LEFT JOIN masters m ON m.id = o.masterid",
                d.now_minus()
            );
            if !kinds.is_empty() {
                sql.push_str(&format!(" WHERE o.kind IN ({})", placeholders(kinds.len())));
            }
            sql.push_str(" ORDER BY o.kind, o.name");
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(d.ago_arg(lease));
            for k in kinds {
                q = q.bind(*k);
            }
            let rows = q.fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(ObjectOwnerRow {
                    kind: r.string("kind")?,
                    name: r.string("name")?,
                    master_id: r.i64("masterid")?,
                    master_name: r.opt_string("master_name")?,
                    master_active: r.flag("master_active")?,
                    lease_current: r.flag("lease_current")?,
                    claimed_at: r.time("claimed_at")?,
                });
            }
            Ok(out)
        })
    }
}
