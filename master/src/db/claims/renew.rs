//! Step 4, renewal: every `claim_renew_interval` a master refreshes
//! `claimed_at` on the requests it holds; a claim found gone (released,
//! taken over, completed) means stop that build.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use super::release::claim_rows;
use super::{dedup, sql};
use crate::db::dialect::placeholders;
use crate::db::{DbError, MasterId, Renewal, Store};

impl Store {
    /// Refresh `claimed_at` on the requests `me` still holds; report the rest
    /// as lost (released, taken over or completed): stop their builds.
    pub async fn renew_claims(&self, me: MasterId, ids: &[i64]) -> Result<Renewal, DbError> {
        let ids = &dedup(ids);
        if ids.is_empty() {
            return Ok(Renewal::default());
        }
        let mine = format!(
            "id IN ({}) AND {}",
            placeholders(ids.len()),
            sql::held_by("?")
        );
        let held: BTreeSet<i64> = with_pool!(self, |pool, d| {
            let sql = format!(
                "UPDATE buildrequests SET claimed_at = {} WHERE {mine}",
                d.now()
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            q.bind(me).execute(pool).await?;
            // Whatever is ours after the update was renewed by it: nothing
            // else hands a claim to us.
            let sql = format!("SELECT id FROM buildrequests WHERE {mine}");
            let mut q = sqlx::query_scalar(AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            q.bind(me).fetch_all(pool).await?.into_iter().collect()
        });
        let (renewed, lost) = ids.iter().partition(|id| held.contains(id));
        Ok(Renewal { renewed, lost })
    }

    /// The unfinished requests `me` holds, with their `claimed_at`.
    pub async fn claims_held(&self, me: MasterId) -> Result<Vec<(i64, DateTime<Utc>)>, DbError> {
        let sql = format!(
            "SELECT id, claimed_by_masterid, claimed_at FROM buildrequests WHERE {} ORDER BY id",
            sql::held_by("?")
        );
        with_pool!(self, |pool, d| {
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(me)
                .fetch_all(pool)
                .await?;
            Ok(claim_rows(&rows)?
                .into_iter()
                .map(|(id, _, at)| (id, at))
                .collect())
        })
    }
}
