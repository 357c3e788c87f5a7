//! The janitor's SQL: find rows older than the retention horizons, in
//! batches, and delete them by primary key, one short statement per batch,
//! so no lock is held long and the claim path (which only touches
//! incomplete requests) never waits behind a clean-up.
//!
//! What goes, by horizon (each a cut-off time computed once per run from
//! the database's clock):
//! - log chunks of builds finished before the log cut-off (the `logs` rows
//!   stay, emptied, so the steps still list their logs);
//! - builds finished before the build cut-off, with their steps and logs
//!   (foreign keys cascade);
//! - completed buildsets before the request cut-off, with their requests,
//!   properties and source-stamp links, but only once none of their builds
//!   is still inside the build horizon; then source stamps no buildset
//!   refers to any more;
//! - changes recorded before the change cut-off;
//! - old incarnations of masters (`masters` rows): inactive, silent since
//!   before the build cut-off, and referenced by nothing — no build, no
//!   request claimed by them, no worker presence, no object ownership (none
//!   of these columns has a foreign key, so the delete itself re-checks them
//!   all and a reference that appears meanwhile keeps the row).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AssertSqlSafe;

use super::dialect::{Dialect, placeholders};
use super::{DbError, Store};

/// Cut-off times: rows older than these may go. `None` keeps everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cutoffs {
    pub logs: Option<DateTime<Utc>>,
    pub builds: Option<DateTime<Utc>>,
    pub requests: Option<DateTime<Utc>>,
    pub changes: Option<DateTime<Utc>>,
}

/// Rows removed (or, for a dry run, that would be removed) per kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JanitorCounts {
    pub log_chunks: u64,
    pub builds: u64,
    pub buildsets: u64,
    pub sourcestamps: u64,
    pub changes: u64,
    /// Old inactive `masters` rows (incarnations) nothing refers to.
    pub masters: u64,
}

impl JanitorCounts {
    pub fn total(&self) -> u64 {
        self.log_chunks
            + self.builds
            + self.buildsets
            + self.sourcestamps
            + self.changes
            + self.masters
    }
}

/// A bound argument of a janitor query.
enum Arg {
    Time(DateTime<Utc>),
    Int(i64),
}

fn time_sql(d: Dialect) -> &'static str {
    d.time_param()
}

impl Store {
    async fn janitor_ids(&self, sql: String, args: &[Arg]) -> Result<Vec<i64>, DbError> {
        with_pool!(self, |pool, d| {
            let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
            for a in args {
                q = match a {
                    Arg::Time(t) => q.bind(d.time_arg(*t)),
                    Arg::Int(i) => q.bind(*i),
                };
            }
            Ok(q.fetch_all(pool).await?)
        })
    }

    async fn janitor_count(&self, sql: String, args: &[Arg]) -> Result<u64, DbError> {
        let n = self.janitor_ids(sql, args).await?;
        Ok(n.first().copied().unwrap_or(0).max(0) as u64)
    }

    async fn janitor_exec(&self, sql: String, args: &[Arg]) -> Result<u64, DbError> {
        with_pool!(self, |pool, d| {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for a in args {
                q = match a {
                    Arg::Time(t) => q.bind(d.time_arg(*t)),
                    Arg::Int(i) => q.bind(*i),
                };
            }
            Ok(q.execute(pool).await?.rows_affected())
        })
    }

    async fn janitor_delete(&self, table: &str, key: &str, ids: &[i64]) -> Result<u64, DbError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "DELETE FROM {table} WHERE {key} IN ({})",
            placeholders(ids.len())
        );
        with_pool!(self, |pool, d| {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            Ok(q.execute(pool).await?.rows_affected())
        })
    }

    /// Logs that still hold chunks, of builds finished in [`after`, `cutoff`).
    pub async fn janitor_old_logs(
        &self,
        cutoff: DateTime<Utc>,
        after: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<i64>, DbError> {
        let t = time_sql(self.janitor_dialect());
        let mut sql = format!(
            "SELECT l.id FROM builds b JOIN steps s ON s.buildid = b.id \
             JOIN logs l ON l.stepid = s.id \
             WHERE b.complete_at < {t} AND l.num_chunks > 0"
        );
        let mut args = vec![Arg::Time(cutoff)];
        if let Some(a) = after {
            sql.push_str(&format!(" AND b.complete_at >= {t}"));
            args.push(Arg::Time(a));
        }
        sql.push_str(" LIMIT ?");
        args.push(Arg::Int(limit));
        self.janitor_ids(sql, &args).await
    }

    /// Empties these logs; returns the chunks deleted.
    pub async fn janitor_delete_log_chunks(&self, log_ids: &[i64]) -> Result<u64, DbError> {
        let n = self.janitor_delete("logchunks", "logid", log_ids).await?;
        if !log_ids.is_empty() {
            let sql = format!(
                "UPDATE logs SET num_chunks = 0 WHERE id IN ({})",
                placeholders(log_ids.len())
            );
            with_pool!(self, |pool, d| {
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for id in log_ids {
                    q = q.bind(id);
                }
                q.execute(pool).await?;
            });
        }
        Ok(n)
    }

    /// Builds finished before `cutoff`, oldest first.
    pub async fn janitor_old_builds(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<i64>, DbError> {
        let t = time_sql(self.janitor_dialect());
        let sql =
            format!("SELECT id FROM builds WHERE complete_at < {t} ORDER BY complete_at LIMIT ?");
        self.janitor_ids(sql, &[Arg::Time(cutoff), Arg::Int(limit)])
            .await
    }

    /// Deletes builds with their steps, logs and chunks, and their
    /// reporter deliveries (no foreign key there).
    pub async fn janitor_delete_builds(&self, ids: &[i64]) -> Result<u64, DbError> {
        self.janitor_delete("report_deliveries", "buildid", ids)
            .await?;
        self.janitor_delete("builds", "id", ids).await
    }

    fn buildsets_predicate(&self, cutoffs: &Cutoffs) -> Option<(String, Vec<Arg>)> {
        let cutoff = cutoffs.requests?;
        let t = time_sql(self.janitor_dialect());
        // A buildset goes only when none of its builds is still kept.
        let (builds_kept, mut extra) = match cutoffs.builds {
            Some(b) => (
                format!("AND (x.complete_at IS NULL OR x.complete_at >= {t})"),
                vec![Arg::Time(b)],
            ),
            None => (String::new(), Vec::new()),
        };
        let sql = format!(
            "bs.complete = 1 AND bs.submitted_at < {t} AND bs.complete_at < {t} \
             AND NOT EXISTS (SELECT 1 FROM buildrequests br JOIN builds x \
             ON x.buildrequestid = br.id WHERE br.buildsetid = bs.id {builds_kept})"
        );
        let mut args = vec![Arg::Time(cutoff), Arg::Time(cutoff)];
        args.append(&mut extra);
        Some((sql, args))
    }

    /// Completed buildsets older than the request cut-off whose builds are
    /// all gone or outside the build horizon.
    pub async fn janitor_old_buildsets(
        &self,
        cutoffs: &Cutoffs,
        limit: i64,
    ) -> Result<Vec<i64>, DbError> {
        let Some((pred, mut args)) = self.buildsets_predicate(cutoffs) else {
            return Ok(Vec::new());
        };
        let sql = format!("SELECT bs.id FROM buildsets bs WHERE {pred} LIMIT ?");
        args.push(Arg::Int(limit));
        self.janitor_ids(sql, &args).await
    }

    /// Deletes buildsets with their requests (and any builds left), properties
    /// and source-stamp links.
    pub async fn janitor_delete_buildsets(&self, ids: &[i64]) -> Result<u64, DbError> {
        self.janitor_delete("buildsets", "id", ids).await
    }

    /// Source stamps older than `cutoff` that no buildset refers to.
    pub async fn janitor_orphan_sourcestamps(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<i64>, DbError> {
        let t = time_sql(self.janitor_dialect());
        let sql = format!(
            "SELECT ss.id FROM sourcestamps ss WHERE ss.created_at < {t} \
             AND NOT EXISTS (SELECT 1 FROM buildset_sourcestamps bss \
             WHERE bss.sourcestampid = ss.id) ORDER BY ss.created_at LIMIT ?"
        );
        self.janitor_ids(sql, &[Arg::Time(cutoff), Arg::Int(limit)])
            .await
    }

    pub async fn janitor_delete_sourcestamps(&self, ids: &[i64]) -> Result<u64, DbError> {
        self.janitor_delete("sourcestamps", "id", ids).await
    }

    /// Changes recorded before `cutoff`, oldest first.
    pub async fn janitor_old_changes(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<i64>, DbError> {
        let t = time_sql(self.janitor_dialect());
        let sql = format!(
            "SELECT changeid FROM changes WHERE created_at < {t} ORDER BY created_at LIMIT ?"
        );
        self.janitor_ids(sql, &[Arg::Time(cutoff), Arg::Int(limit)])
            .await
    }

    pub async fn janitor_delete_changes(&self, ids: &[i64]) -> Result<u64, DbError> {
        self.janitor_delete("changes", "changeid", ids).await
    }

    /// Which `masters` rows (the table unaliased, as `masters`) may go: inactive,
    /// last active before `cutoff`, and referenced by no build, no request
    /// claim, no worker presence and no object ownership. With `after_run`,
    /// builds and requests that this run deletes before the masters (those
    /// past the build horizon, and those of buildsets that go) no longer
    /// count, so a dry run counts what the real run removes.
    fn masters_predicate(&self, c: &Cutoffs, after_run: bool) -> Option<(String, Vec<Arg>)> {
        let cutoff = c.builds?;
        let t = time_sql(self.janitor_dialect());
        let mut args = vec![Arg::Time(cutoff)];
        let builds_kept = if after_run {
            args.push(Arg::Time(cutoff));
            format!(" AND (x.complete_at IS NULL OR x.complete_at >= {t})")
        } else {
            String::new()
        };
        let requests_kept = match self.buildsets_predicate(c).filter(|_| after_run) {
            Some((pred, mut bs_args)) => {
                args.append(&mut bs_args);
                format!(
                    " AND NOT EXISTS (SELECT 1 FROM buildsets bs WHERE bs.id = cr.buildsetid AND {pred})"
                )
            }
            None => String::new(),
        };
        let sql = format!(
            "masters.active = 0 AND masters.last_active < {t} \
             AND NOT EXISTS (SELECT 1 FROM builds x WHERE x.masterid = masters.id{builds_kept}) \
             AND NOT EXISTS (SELECT 1 FROM buildrequests cr \
                             WHERE cr.claimed_by_masterid = masters.id{requests_kept}) \
             AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.masterid = masters.id) \
             AND NOT EXISTS (SELECT 1 FROM object_owners o WHERE o.masterid = masters.id)"
        );
        Some((sql, args))
    }

    /// Old inactive master incarnations nothing refers to (see
    /// [`Store::janitor_delete_masters`]), oldest first. Nothing without a
    /// build horizon.
    pub async fn janitor_old_masters(&self, c: &Cutoffs, limit: i64) -> Result<Vec<i64>, DbError> {
        let Some((pred, mut args)) = self.masters_predicate(c, false) else {
            return Ok(Vec::new());
        };
        let sql =
            format!("SELECT masters.id FROM masters WHERE {pred} ORDER BY masters.id LIMIT ?");
        args.push(Arg::Int(limit));
        self.janitor_ids(sql, &args).await
    }

    /// Deletes these `masters` rows by primary key, each only if it still
    /// is inactive, old and unreferenced: the conditions are part of the
    /// delete, so a reference made since the candidates were read keeps it.
    pub async fn janitor_delete_masters(&self, c: &Cutoffs, ids: &[i64]) -> Result<u64, DbError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let Some((pred, pred_args)) = self.masters_predicate(c, false) else {
            return Ok(0);
        };
        let sql = format!(
            "DELETE FROM masters WHERE id IN ({}) AND {pred}",
            placeholders(ids.len())
        );
        let mut args: Vec<Arg> = ids.iter().map(|id| Arg::Int(*id)).collect();
        args.extend(pred_args);
        self.janitor_exec(sql, &args).await
    }

    /// What a run with these cut-offs would remove (source stamps: those of
    /// the buildsets that would go plus those already unreferenced).
    pub async fn janitor_counts(&self, c: &Cutoffs) -> Result<JanitorCounts, DbError> {
        let t = time_sql(self.janitor_dialect());
        let mut out = JanitorCounts::default();
        if let Some(cut) = c.logs {
            // Includes the chunks of builds that go whole.
            let sql = format!(
                "SELECT COUNT(*) FROM builds b JOIN steps s ON s.buildid = b.id \
                 JOIN logs l ON l.stepid = s.id JOIN logchunks lc ON lc.logid = l.id \
                 WHERE b.complete_at < {t}"
            );
            out.log_chunks = self.janitor_count(sql, &[Arg::Time(cut)]).await?;
        }
        if let Some(cut) = c.builds {
            let sql = format!("SELECT COUNT(*) FROM builds WHERE complete_at < {t}");
            out.builds = self.janitor_count(sql, &[Arg::Time(cut)]).await?;
        }
        if let Some((pred, args)) = self.buildsets_predicate(c) {
            let sql = format!("SELECT COUNT(*) FROM buildsets bs WHERE {pred}");
            out.buildsets = self.janitor_count(sql, &args).await?;
            let sql = format!(
                "SELECT COUNT(*) FROM buildset_sourcestamps l JOIN buildsets bs \
                 ON bs.id = l.buildsetid WHERE {pred}"
            );
            let linked = self.janitor_count(sql, &args).await?;
            let cut = c.requests.unwrap_or_default();
            let sql = format!(
                "SELECT COUNT(*) FROM sourcestamps ss WHERE ss.created_at < {t} \
                 AND NOT EXISTS (SELECT 1 FROM buildset_sourcestamps bss \
                 WHERE bss.sourcestampid = ss.id)"
            );
            out.sourcestamps = linked + self.janitor_count(sql, &[Arg::Time(cut)]).await?;
        }
        if let Some(cut) = c.changes {
            let sql = format!("SELECT COUNT(*) FROM changes WHERE created_at < {t}");
            out.changes = self.janitor_count(sql, &[Arg::Time(cut)]).await?;
        }
        if let Some((pred, args)) = self.masters_predicate(c, true) {
            let sql = format!("SELECT COUNT(*) FROM masters WHERE {pred}");
            out.masters = self.janitor_count(sql, &args).await?;
        }
        Ok(out)
    }

    fn janitor_dialect(&self) -> Dialect {
        match self.backend() {
            super::Backend::MySql => Dialect::MySql,
            super::Backend::Sqlite => Dialect::Sqlite,
        }
    }
}
