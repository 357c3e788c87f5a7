//! Builders, workers, changes and buildsets: everything that creates build
//! requests, and reading back what a claimed request is about.

use std::collections::{BTreeMap, HashMap};

use sqlx::AssertSqlSafe;

use super::dialect::placeholders;
use super::rows::{DbRow, InsertId};
use super::state::cas_state_row;
use super::{
    BeginWrite, DbError, NewBuildset, NewChange, Patch, RequestDetails, SourceStamp, Store,
};

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, DbError> {
    serde_json::to_string(v).map_err(|e| DbError::Other(e.to_string()))
}

fn sourcestamp<R: DbRow>(r: &R) -> Result<SourceStamp, sqlx::Error> {
    let patch = match r.opt_bytes("patch_body")? {
        Some(body) => Some(Patch {
            body,
            level: i32::try_from(r.opt_i64("patch_level")?.unwrap_or(1)).unwrap_or(1),
            subdir: r.opt_string("patch_subdir")?,
            author: r.opt_string("patch_author")?.unwrap_or_default(),
            comment: r.opt_string("patch_comment")?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(SourceStamp {
        repository: r.string("repository")?,
        branch: r.opt_string("branch")?,
        revision: r.opt_string("revision")?,
        project: r.string("project")?,
        codebase: r.string("codebase")?,
        patch,
    })
}

/// A buildset's properties as (name, JSON text).
fn encode_properties(b: &NewBuildset) -> Result<Vec<(&str, String)>, DbError> {
    b.properties
        .iter()
        .map(|(k, v)| Ok((k.as_str(), to_json(v)?)))
        .collect()
}

/// In an open write transaction `$tx`, insert buildset `$b` (a
/// [`NewBuildset`]) with its source stamps, its properties `$props` (from
/// [`encode_properties`]) and one request per builder; evaluates to
/// (buildset id, request ids in the order of `$b.builders`).
macro_rules! insert_buildset {
    ($tx:expr, $d:expr, $b:expr, $props:expr) => {{
        let b: &NewBuildset = $b;
        let props: &[(&str, String)] = $props;
        let source = b.scheduler.as_deref().unwrap_or_default();
        // The buildset's and the requests' rows are guarded (`in_tx_select`):
        // run outside their transaction they insert nothing, so a
        // transaction the database ended leaves no buildset behind that
        // waits for ever on requests that were never written.
        let sql = format!(
            "INSERT INTO buildsets (external_idstring, reason, submitted_at, complete, \
             scheduler, parent_buildid, open_requests) SELECT ?, ?, {}, 0, ?, ?, ?{}",
            $d.now(),
            $d.in_tx_select()
        );
        // The buildset completes when this count of its requests is down to
        // zero (`buildset_finish`).
        let open = i64::try_from(b.builders.len()).unwrap_or(i64::MAX);
        let inserted = sqlx::query(AssertSqlSafe(sql))
            .bind(&b.external_idstring)
            .bind(&b.reason)
            .bind(&b.scheduler)
            .bind(b.parent_buildid)
            .bind(open)
            .execute(&mut *$tx)
            .await?;
        if inserted.rows_affected() == 0 {
            return Err($crate::db::DbError::TransactionEnded);
        }
        let bsid = inserted.insert_id();
        let ss_sql = format!(
            "INSERT INTO sourcestamps (branch, revision, repository, project, codebase, \
             patch_body, patch_level, patch_subdir, patch_author, patch_comment, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {})",
            $d.now()
        );
        for ss in &b.sourcestamps {
            let p = ss.patch.as_ref();
            let ssid = sqlx::query(AssertSqlSafe(ss_sql.clone()))
                .bind(&ss.branch)
                .bind(&ss.revision)
                .bind(&ss.repository)
                .bind(&ss.project)
                .bind(&ss.codebase)
                .bind(p.map(|p| p.body.as_slice()))
                .bind(p.map(|p| p.level))
                .bind(p.and_then(|p| p.subdir.as_deref()))
                .bind(p.map(|p| p.author.as_str()))
                .bind(p.map(|p| p.comment.as_str()))
                .execute(&mut *$tx)
                .await?
                .insert_id();
            sqlx::query(
                "INSERT INTO buildset_sourcestamps (buildsetid, sourcestampid) VALUES (?, ?)",
            )
            .bind(bsid)
            .bind(ssid)
            .execute(&mut *$tx)
            .await?;
        }
        for (name, value) in props {
            sqlx::query(
                "INSERT INTO buildset_properties (buildsetid, name, value, source) \
                 VALUES (?, ?, ?, ?)",
            )
            .bind(bsid)
            .bind(*name)
            .bind(value)
            .bind(source)
            .execute(&mut *$tx)
            .await?;
        }
        let mut changes = b.change_ids.clone();
        changes.sort_unstable();
        changes.dedup();
        for change in changes {
            sqlx::query("INSERT INTO buildset_changes (buildsetid, changeid) VALUES (?, ?)")
                .bind(bsid)
                .bind(change)
                .execute(&mut *$tx)
                .await?;
        }
        let br_sql = format!(
            "INSERT INTO buildrequests (buildsetid, builderid, priority, complete, submitted_at) \
             SELECT ?, ?, ?, 0, {}{}",
            $d.now(),
            $d.in_tx_select()
        );
        let mut requests = Vec::with_capacity(b.builders.len());
        for (builder, priority) in &b.builders {
            let inserted = sqlx::query(AssertSqlSafe(br_sql.clone()))
                .bind(bsid)
                .bind(builder)
                .bind(priority)
                .execute(&mut *$tx)
                .await?;
            if inserted.rows_affected() == 0 {
                return Err($crate::db::DbError::TransactionEnded);
            }
            requests.push(inserted.insert_id());
        }
        (bsid, requests)
    }};
}

impl Store {
    /// Ids of these builders, creating the missing ones. Safe when several
    /// masters start at once.
    pub async fn ensure_builders(&self, names: &[String]) -> Result<HashMap<String, i64>, DbError> {
        let mut ids = self.builder_ids(names).await?;
        let mut missing: Vec<&String> = names.iter().filter(|n| !ids.contains_key(*n)).collect();
        missing.sort();
        missing.dedup();
        for name in missing {
            // One row per statement, in name order: concurrent multi-row
            // inserts of the same keys deadlock on MySQL.
            with_pool_retry!(self, |pool, d| {
                let sql = format!("{} INTO builders (name) VALUES (?)", d.insert_ignore());
                sqlx::query(AssertSqlSafe(sql))
                    .bind(name)
                    .execute(pool)
                    .await?;
                Ok::<(), DbError>(())
            })?;
        }
        if ids.len() < names.len() {
            ids = self.builder_ids(names).await?;
        }
        Ok(ids)
    }

    /// Ids of the existing builders among `names`.
    async fn builder_ids(&self, names: &[String]) -> Result<HashMap<String, i64>, DbError> {
        let mut ids = HashMap::new();
        for chunk in names.chunks(500) {
            with_pool!(self, |pool, d| {
                let sql = format!(
                    "SELECT id, name FROM builders WHERE name IN ({})",
                    placeholders(chunk.len())
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for n in chunk {
                    q = q.bind(n);
                }
                for r in q.fetch_all(pool).await? {
                    ids.insert(r.string("name")?, r.i64("id")?);
                }
            });
        }
        Ok(ids)
    }

    /// Id of this worker, creating it if needed; `info` replaces what was stored.
    pub async fn ensure_worker(
        &self,
        name: &str,
        info: &serde_json::Value,
    ) -> Result<i64, DbError> {
        let info = &info.to_string();
        with_pool_retry!(self, |pool, d| {
            let sql = format!(
                "{} INTO workers (name, info) VALUES (?, ?)",
                d.insert_ignore()
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(name)
                .bind(info)
                .execute(pool)
                .await?;
            sqlx::query("UPDATE workers SET info = ? WHERE name = ?")
                .bind(info)
                .bind(name)
                .execute(pool)
                .await?;
            Ok(sqlx::query_scalar("SELECT id FROM workers WHERE name = ?")
                .bind(name)
                .fetch_one(pool)
                .await?)
        })
    }

    pub async fn add_change(&self, c: &NewChange) -> Result<i64, DbError> {
        let files = to_json(&c.files)?;
        let properties = to_json(&c.properties)?;
        with_pool!(self, |pool, d| {
            let sql = format!(
                "INSERT INTO changes (author, comments, branch, revision, repository, project, \
                 codebase, files, properties, when_timestamp, category, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE({tp}, {now}), ?, {now})",
                tp = d.time_param(),
                now = d.now()
            );
            let r = sqlx::query(AssertSqlSafe(sql))
                .bind(&c.author)
                .bind(&c.comments)
                .bind(&c.branch)
                .bind(&c.revision)
                .bind(&c.repository)
                .bind(&c.project)
                .bind(&c.codebase)
                .bind(&files)
                .bind(&properties)
                .bind(c.when.map(|t| d.time_arg(t)))
                .bind(&c.category)
                .execute(pool)
                .await?;
            Ok(r.insert_id())
        })
    }

    /// Create a buildset with its source stamps, properties and one request
    /// per builder, in one transaction. Returns (buildset id, request ids)
    /// with request ids in the order of `b.builders`.
    pub async fn add_buildset(&self, b: &NewBuildset) -> Result<(i64, Vec<i64>), DbError> {
        let props = encode_properties(b)?;
        let props = &props;
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            let created = insert_buildset!(tx, d, b, props);
            commit_checked!(tx, d);
            Ok(created)
        })
    }

    /// Move state `object`/`name` from `expected` (`None`: absent) to `new`
    /// and create `buildsets`, in one transaction: a scheduler's decision and
    /// the builds it decided on are recorded together or not at all. The
    /// compare-and-swap comes first; `None` (and nothing created) when the
    /// state was no longer `expected`. Otherwise (buildset id, request ids)
    /// per buildset, as [`Store::add_buildset`] returns them, in order.
    pub async fn add_buildsets_with_state(
        &self,
        buildsets: &[NewBuildset],
        object: &str,
        name: &str,
        expected: Option<&serde_json::Value>,
        new: &serde_json::Value,
    ) -> Result<Option<Vec<(i64, Vec<i64>)>>, DbError> {
        let new = &new.to_string();
        let expected = &expected.map(|v| v.to_string());
        let encoded = buildsets
            .iter()
            .map(|b| Ok((b, encode_properties(b)?)))
            .collect::<Result<Vec<_>, DbError>>()?;
        let encoded = &encoded;
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            if !cas_state_row!(in_tx tx, d, object, name, expected.as_deref(), new) {
                // A lost INSERT IGNORE holds a shared lock on the existing
                // row until the transaction ends: end it now.
                tx.rollback().await?;
                return Ok(None);
            }
            let mut created = Vec::with_capacity(encoded.len());
            for (b, props) in encoded {
                created.push(insert_buildset!(tx, d, b, props));
            }
            commit_checked!(tx, d);
            Ok(Some(created))
        })
    }

    /// What these requests are about, in id order; unknown ids are skipped.
    pub async fn request_details(&self, ids: &[i64]) -> Result<Vec<RequestDetails>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        with_pool!(self, |pool, d| {
            let sql = format!(
                "SELECT br.id, br.buildsetid, br.builderid, b.name AS builder, br.priority, \
                 br.submitted_at, bs.reason FROM buildrequests br \
                 JOIN builders b ON b.id = br.builderid \
                 JOIN buildsets bs ON bs.id = br.buildsetid \
                 WHERE br.id IN ({}) ORDER BY br.id",
                placeholders(ids.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            let rows = q.fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(RequestDetails {
                    id: r.i64("id")?,
                    buildset_id: r.i64("buildsetid")?,
                    builder_id: r.i64("builderid")?,
                    builder: r.string("builder")?,
                    priority: i32::try_from(r.i64("priority")?).unwrap_or_default(),
                    submitted_at: r.time("submitted_at")?,
                    reason: r.string("reason")?,
                    sourcestamps: Vec::new(),
                    properties: BTreeMap::new(),
                    change_ids: Vec::new(),
                });
            }
            let mut buildsets: Vec<i64> = out.iter().map(|r| r.buildset_id).collect();
            buildsets.sort_unstable();
            buildsets.dedup();
            if buildsets.is_empty() {
                return Ok(out);
            }
            let mut stamps: HashMap<i64, Vec<SourceStamp>> = HashMap::new();
            let sql = format!(
                "SELECT bss.buildsetid, ss.* FROM buildset_sourcestamps bss \
                 JOIN sourcestamps ss ON ss.id = bss.sourcestampid \
                 WHERE bss.buildsetid IN ({}) ORDER BY ss.id",
                placeholders(buildsets.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in &buildsets {
                q = q.bind(id);
            }
            for r in q.fetch_all(pool).await? {
                stamps
                    .entry(r.i64("buildsetid")?)
                    .or_default()
                    .push(sourcestamp(&r)?);
            }
            let mut props: HashMap<i64, BTreeMap<String, serde_json::Value>> = HashMap::new();
            let sql = format!(
                "SELECT buildsetid, name, value FROM buildset_properties \
                 WHERE buildsetid IN ({})",
                placeholders(buildsets.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in &buildsets {
                q = q.bind(id);
            }
            for r in q.fetch_all(pool).await? {
                let name = r.string("name")?;
                let value = serde_json::from_str(&r.string("value")?)
                    .map_err(|e| DbError::Other(format!("buildset property {name}: {e}")))?;
                props
                    .entry(r.i64("buildsetid")?)
                    .or_default()
                    .insert(name, value);
            }
            let mut changes: HashMap<i64, Vec<i64>> = HashMap::new();
            let sql = format!(
                "SELECT buildsetid, changeid FROM buildset_changes \
                 WHERE buildsetid IN ({}) ORDER BY changeid",
                placeholders(buildsets.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in &buildsets {
                q = q.bind(id);
            }
            for r in q.fetch_all(pool).await? {
                changes
                    .entry(r.i64("buildsetid")?)
                    .or_default()
                    .push(r.i64("changeid")?);
            }
            for det in &mut out {
                det.change_ids = changes.get(&det.buildset_id).cloned().unwrap_or_default();
                det.sourcestamps = stamps.get(&det.buildset_id).cloned().unwrap_or_default();
                det.properties = props.get(&det.buildset_id).cloned().unwrap_or_default();
            }
            Ok(out)
        })
    }
}
