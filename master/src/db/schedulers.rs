//! What schedulers and change sources read and write: new changes after a
//! watermark, the buildsets an upstream scheduler finished, compare-and-swap
//! updates of their key/value state (so that of two masters that both think
//! they own a scheduler, only one acts), a poller's changes recorded together
//! with its state in one transaction, and collapsing superseded requests.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AssertSqlSafe;

use super::rows::{DbRow, InsertId};
use super::state::cas_state_row;
use super::{BeginWrite, DbError, NewChange, Results, SourceStamp, Store};

/// A recorded change, as schedulers see it.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ChangeRow {
    pub id: i64,
    pub author: String,
    pub comments: String,
    pub branch: Option<String>,
    pub revision: Option<String>,
    pub repository: String,
    pub project: String,
    pub codebase: String,
    pub files: Vec<String>,
    pub properties: BTreeMap<String, serde_json::Value>,
    pub category: Option<String>,
    /// When the change happened (as its source says, or when it was recorded).
    /// Named as the column (and the API field); `when` in older stored state.
    #[serde(rename = "when_timestamp", alias = "when")]
    pub when: DateTime<Utc>,
}

/// Where a buildset stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuildsetStatus {
    pub id: i64,
    pub complete: bool,
    pub results: Option<Results>,
}

pub(crate) fn change_row<R: DbRow>(r: &R) -> Result<ChangeRow, DbError> {
    let files = r.string("files")?;
    let props = r.string("properties")?;
    let id = r.i64("changeid")?;
    Ok(ChangeRow {
        id,
        author: r.string("author")?,
        comments: r.string("comments")?,
        branch: r.opt_string("branch")?,
        revision: r.opt_string("revision")?,
        repository: r.string("repository")?,
        project: r.string("project")?,
        codebase: r.string("codebase")?,
        files: serde_json::from_str(&files)
            .map_err(|e| DbError::Other(format!("change {id} files: {e}")))?,
        properties: serde_json::from_str(&props)
            .map_err(|e| DbError::Other(format!("change {id} properties: {e}")))?,
        category: r.opt_string("category")?,
        when: r.time("when_timestamp")?,
    })
}

fn to_json<T: Serialize>(v: &T) -> Result<String, DbError> {
    serde_json::to_string(v).map_err(|e| DbError::Other(e.to_string()))
}

impl Store {
    /// Changes with an id above `after`, oldest first, at most `limit`.
    pub async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<ChangeRow>, DbError> {
        with_pool!(self, |pool, d| {
            let rows = sqlx::query(
                "SELECT changeid, author, comments, branch, revision, repository, project, \
                 codebase, files, properties, category, when_timestamp FROM changes \
                 WHERE changeid > ? ORDER BY changeid LIMIT ?",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter().map(change_row).collect()
        })
    }

    /// The highest change id recorded more than `ago` before the database's
    /// now (0 if none): where a scheduler that never ran starts reading.
    pub async fn last_change_id_before(&self, ago: Duration) -> Result<i64, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "SELECT COALESCE(MAX(changeid), 0) FROM changes WHERE created_at < {}",
                d.now_minus()
            );
            Ok(sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(d.ago_arg(ago))
                .fetch_one(pool)
                .await?)
        })
    }

    /// Set state `object`/`name` to `new` only if it is still `expected`
    /// (`None`: absent). `false` means someone else changed it first.
    pub async fn cas_state(
        &self,
        object: &str,
        name: &str,
        expected: Option<&serde_json::Value>,
        new: &serde_json::Value,
    ) -> Result<bool, DbError> {
        let new = new.to_string();
        let expected = expected.map(|v| v.to_string());
        with_pool!(self, |pool, d| {
            Ok(cas_state_row!(
                pool,
                d,
                object,
                name,
                expected.as_deref(),
                &new
            ))
        })
    }

    /// Record `changes` and move state `object`/`name` from `expected` to
    /// `new`, in one transaction; `None` (and nothing recorded) when the state
    /// was no longer `expected`. A change source that crashes between polling
    /// and recording thus neither loses nor repeats a change.
    pub async fn add_changes_with_state(
        &self,
        changes: &[NewChange],
        object: &str,
        name: &str,
        expected: Option<&serde_json::Value>,
        new: &serde_json::Value,
    ) -> Result<Option<Vec<i64>>, DbError> {
        let new = &new.to_string();
        let expected = &expected.map(|v| v.to_string());
        let encoded = changes
            .iter()
            .map(|c| Ok((c, to_json(&c.files)?, to_json(&c.properties)?)))
            .collect::<Result<Vec<_>, DbError>>()?;
        let encoded = &encoded;
        with_pool_retry!(self, |pool, d| {
            let mut tx = pool.begin_write().await?;
            if !cas_state_row!(in_tx tx, d, object, name, expected.as_deref(), new) {
                tx.rollback().await?;
                return Ok(None);
            }
            let sql = format!(
                "INSERT INTO changes (author, comments, branch, revision, repository, project, \
                 codebase, files, properties, when_timestamp, category, created_at) \
                 SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE({tp}, {now}), ?, {now}{guard}",
                tp = d.time_param(),
                now = d.now(),
                guard = d.in_tx_select()
            );
            let mut ids = Vec::with_capacity(encoded.len());
            for (c, files, props) in encoded {
                let inserted = sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(&c.author)
                    .bind(&c.comments)
                    .bind(&c.branch)
                    .bind(&c.revision)
                    .bind(&c.repository)
                    .bind(&c.project)
                    .bind(&c.codebase)
                    .bind(files)
                    .bind(props)
                    .bind(c.when.map(|t| d.time_arg(t)))
                    .bind(&c.category)
                    .execute(&mut *tx)
                    .await?;
                if inserted.rows_affected() == 0 {
                    return Err(DbError::TransactionEnded);
                }
                ids.push(inserted.insert_id());
            }
            commit_checked!(tx, d);
            Ok(Some(ids))
        })
    }

    /// Buildsets created by `scheduler` with an id above `after`, oldest first.
    pub async fn buildsets_of_scheduler_after(
        &self,
        scheduler: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<BuildsetStatus>, DbError> {
        with_pool!(self, |pool, d| {
            let rows = sqlx::query(
                "SELECT id, complete, results FROM buildsets \
                 WHERE scheduler = ? AND id > ? ORDER BY id LIMIT ?",
            )
            .bind(scheduler)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(BuildsetStatus {
                        id: r.i64("id")?,
                        complete: r.flag("complete")?,
                        results: r.results("results")?,
                    })
                })
                .collect::<Result<Vec<_>, DbError>>()
        })
    }

    /// The highest id of a buildset submitted more than `ago` before the
    /// database's now (0 if none).
    pub async fn last_buildset_id_before(&self, ago: Duration) -> Result<i64, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "SELECT COALESCE(MAX(id), 0) FROM buildsets WHERE submitted_at < {}",
                d.now_minus()
            );
            Ok(sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(d.ago_arg(ago))
                .fetch_one(pool)
                .await?)
        })
    }

    pub async fn buildset_status(&self, id: i64) -> Result<Option<BuildsetStatus>, DbError> {
        with_pool!(self, |pool, d| {
            let row = sqlx::query("SELECT id, complete, results FROM buildsets WHERE id = ?")
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.map(|r| {
                Ok(BuildsetStatus {
                    id: r.i64("id")?,
                    complete: r.flag("complete")?,
                    results: r.results("results")?,
                })
            })
            .transpose()
        })
    }

    /// Collapse (complete as `skipped`) the requests of `builder_id` older
    /// than `newer` that nobody has claimed and that would build the same
    /// codebase and branch as `ss` without a patch: the newer request
    /// supersedes them. Returns the ids collapsed.
    pub async fn collapse_pending(
        &self,
        builder_id: i64,
        newer: i64,
        ss: &SourceStamp,
    ) -> Result<Vec<i64>, DbError> {
        // The sourcestamp tables have no claim columns: the named
        // condition needs no table prefix here.
        let sql = format!(
            "SELECT DISTINCT br.id FROM buildrequests br \
             JOIN buildset_sourcestamps bss ON bss.buildsetid = br.buildsetid \
             JOIN sourcestamps ss ON ss.id = bss.sourcestampid \
             WHERE br.builderid = ? AND br.id < ? AND {} \
             AND ss.repository = ? AND ss.codebase = ? \
             AND COALESCE(ss.branch, '') = ? AND ss.patch_body IS NULL \
             ORDER BY br.id",
            super::claims::sql::CLAIMABLE
        );
        let candidates: Vec<i64> = with_pool!(self, |pool, d| {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(builder_id)
                .bind(newer)
                .bind(&ss.repository)
                .bind(&ss.codebase)
                .bind(ss.branch.clone().unwrap_or_default())
                .fetch_all(pool)
                .await?
        });
        let mut collapsed = Vec::new();
        for id in candidates {
            let done = self.complete_unclaimed(id, Results::Skipped).await?;
            if done {
                collapsed.push(id);
            }
        }
        Ok(collapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_stored_under_its_old_field_name_still_reads() {
        let old = serde_json::json!({
            "id": 7, "author": "a", "comments": "c", "branch": "main", "revision": "r1",
            "repository": "repo", "project": "", "codebase": "", "files": [],
            "properties": {}, "category": null, "when": "2026-11-01T00:00:00Z"
        });
        let c: ChangeRow = serde_json::from_value(old).unwrap();
        assert_eq!(c.when.to_rfc3339(), "2026-11-01T00:00:00+00:00");
        let again = serde_json::to_value(&c).unwrap();
        assert_eq!(again["when_timestamp"], "2026-11-01T00:00:00Z");
        assert!(again.get("when").is_none());
    }
}
