//! Reading a buildset's provenance for the API: the buildset itself, its
//! source stamps, the changes behind it, its properties and its requests;
//! and the source a builder last built, which a forced build defaults to.

use std::collections::BTreeMap;

use super::rows::DbRow;
use super::{BuildsetInfo, DbError, SourceStamp, SourceStampInfo, Store};

fn stamp_info<R: DbRow>(r: &R) -> Result<SourceStampInfo, sqlx::Error> {
    Ok(SourceStampInfo {
        id: r.i64("id")?,
        repository: r.string("repository")?,
        branch: r.opt_string("branch")?,
        revision: r.opt_string("revision")?,
        project: r.string("project")?,
        codebase: r.string("codebase")?,
        patch: r.i64("has_patch")? != 0,
        patch_author: r.opt_string("patch_author")?,
        patch_comment: r.opt_string("patch_comment")?,
    })
}

impl Store {
    /// Buildset `id` with its provenance; `None` when there is no such buildset.
    pub async fn get_buildset(&self, id: i64) -> Result<Option<BuildsetInfo>, DbError> {
        let found = with_pool!(self, |pool, d| {
            let Some(r) = sqlx::query(
                "SELECT id, reason, scheduler, external_idstring, parent_buildid, submitted_at, \
                 complete, complete_at, results FROM buildsets WHERE id = ?",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            else {
                return Ok(None);
            };
            let stamps = sqlx::query(
                "SELECT ss.id, ss.repository, ss.branch, ss.revision, ss.project, ss.codebase, \
                 CASE WHEN ss.patch_body IS NULL THEN 0 ELSE 1 END AS has_patch, \
                 ss.patch_author, ss.patch_comment \
                 FROM buildset_sourcestamps x JOIN sourcestamps ss ON ss.id = x.sourcestampid \
                 WHERE x.buildsetid = ? ORDER BY ss.id",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(stamp_info)
            .collect::<Result<Vec<_>, _>>()?;
            let mut properties = BTreeMap::new();
            for p in sqlx::query(
                "SELECT name, value FROM buildset_properties WHERE buildsetid = ? ORDER BY name",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
            {
                let name = p.string("name")?;
                let value = serde_json::from_str(&p.string("value")?)
                    .map_err(|e| DbError::Other(format!("buildset property {name}: {e}")))?;
                properties.insert(name, value);
            }
            let requests =
                sqlx::query("SELECT id FROM buildrequests WHERE buildsetid = ? ORDER BY id")
                    .bind(id)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| r.i64("id"))
                    .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, DbError>(Some(BuildsetInfo {
                id: r.i64("id")?,
                reason: r.string("reason")?,
                scheduler: r.opt_string("scheduler")?,
                external_idstring: r.opt_string("external_idstring")?,
                parent_buildid: r.opt_i64("parent_buildid")?,
                submitted_at: r.time("submitted_at")?,
                complete: r.flag("complete")?,
                complete_at: r.opt_time("complete_at")?,
                results: r.results("results")?,
                sourcestamps: stamps,
                changes: Vec::new(),
                properties,
                buildrequest_ids: requests,
            }))
        })?;
        let Some(mut bs) = found else {
            return Ok(None);
        };
        bs.changes = self.changes_of_buildset(id).await?;
        Ok(Some(bs))
    }

    /// The repository and branch of the newest request of `builder_id`
    /// whose source stamp names a repository.
    pub async fn last_source_of_builder(
        &self,
        builder_id: i64,
    ) -> Result<Option<SourceStamp>, DbError> {
        with_pool!(self, |pool, d| {
            let row = sqlx::query(
                "SELECT ss.repository, ss.branch FROM buildrequests br \
                 JOIN buildset_sourcestamps x ON x.buildsetid = br.buildsetid \
                 JOIN sourcestamps ss ON ss.id = x.sourcestampid \
                 WHERE br.builderid = ? AND ss.repository <> '' \
                 ORDER BY br.id DESC, ss.id LIMIT 1",
            )
            .bind(builder_id)
            .fetch_optional(pool)
            .await?;
            Ok(match row {
                Some(r) => Some(SourceStamp {
                    repository: r.string("repository")?,
                    branch: r.opt_string("branch")?,
                    ..Default::default()
                }),
                None => None,
            })
        })
    }
}
