//! Read-only listing of recorded changes for the HTTP API: newest first,
//! filtered by branch and repository, paginated with `limit` (`<= 0`: no
//! limit) and `offset`.

use sqlx::AssertSqlSafe;

use super::rows::DbRow;
use super::schedulers::change_row;
use super::{ChangeFilter, ChangeInfo, DbError, Store};

const CHANGE_SELECT: &str = "SELECT changeid, author, comments, branch, revision, repository, \
     project, codebase, files, properties, when_timestamp, category, created_at FROM changes";

fn change_info<R: DbRow>(r: &R) -> Result<ChangeInfo, DbError> {
    Ok(ChangeInfo {
        change: change_row(r)?,
        created_at: r.time("created_at")?,
    })
}

impl Store {
    /// Changes matching `f`, newest (highest id) first.
    pub async fn list_changes(&self, f: &ChangeFilter) -> Result<Vec<ChangeInfo>, DbError> {
        let mut sql = format!("{CHANGE_SELECT} WHERE 1 = 1");
        if f.branch.is_some() {
            sql.push_str(" AND branch = ?");
        }
        if f.repository.is_some() {
            sql.push_str(" AND repository = ?");
        }
        sql.push_str(" ORDER BY changeid DESC LIMIT ? OFFSET ?");
        let limit = if f.limit <= 0 { i64::MAX } else { f.limit };
        with_pool!(self, |pool, d| {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            if let Some(b) = &f.branch {
                q = q.bind(b);
            }
            if let Some(r) = &f.repository {
                q = q.bind(r);
            }
            let rows = q.bind(limit).bind(f.offset.max(0)).fetch_all(pool).await?;
            rows.iter().map(change_info).collect()
        })
    }

    /// The changes behind buildset `buildset_id`, oldest first (those the
    /// janitor has removed are gone from it).
    pub async fn changes_of_buildset(&self, buildset_id: i64) -> Result<Vec<ChangeInfo>, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!(
                "{CHANGE_SELECT} WHERE changeid IN \
                 (SELECT changeid FROM buildset_changes WHERE buildsetid = ?) ORDER BY changeid"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(buildset_id)
                .fetch_all(pool)
                .await?;
            rows.iter().map(change_info).collect()
        })
    }

    pub async fn get_change(&self, id: i64) -> Result<Option<ChangeInfo>, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!("{CHANGE_SELECT} WHERE changeid = ?");
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(change_info).transpose()
        })
    }
}
