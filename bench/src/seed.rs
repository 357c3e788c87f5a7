//! Filling the queue fast with bulk SQL of the bench's own: builders and
//! pending requests (one buildset each, as `force` makes them) generated
//! from MariaDB's `seq_1_to_N` sequence tables instead of N round trips.

use anyhow::Context;
use sqlx::AssertSqlSafe;

use crate::database::BenchDb;

/// Creates builders `<prefix>001 ..` (or finds them); returns their ids in name order.
pub async fn builders(db: &BenchDb, prefix: &str, count: usize) -> anyhow::Result<Vec<i64>> {
    let sql = format!(
        "INSERT IGNORE INTO builders (name) \
         SELECT CONCAT(?, LPAD(seq, 3, '0')) FROM seq_1_to_{count}"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(prefix)
        .execute(&db.pool)
        .await
        .context("seed builders")?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM builders WHERE name LIKE CONCAT(?, '%') ORDER BY name LIMIT ?",
    )
    .bind(prefix)
    .bind(count as i64)
    .fetch_all(&db.pool)
    .await?;
    anyhow::ensure!(
        ids.len() == count,
        "seeded {} builders, wanted {count}",
        ids.len()
    );
    Ok(ids)
}

/// The name of builder `i` (from 0) made by [`builders`].
pub fn builder_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{:03}", i + 1)
}

/// Adds `count` pending requests spread round-robin over `builder_ids`, each
/// in its own buildset (its count of open requests 1); returns the new
/// request ids in id order.
pub async fn pending(db: &BenchDb, builder_ids: &[i64], count: usize) -> anyhow::Result<Vec<i64>> {
    anyhow::ensure!(!builder_ids.is_empty() && count > 0, "nothing to seed");
    let mut tx = db.pool.begin().await?;
    let before_bs: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM buildsets")
        .fetch_one(&mut *tx)
        .await?;
    let before_br: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM buildrequests")
        .fetch_one(&mut *tx)
        .await?;
    let sql = format!(
        "INSERT INTO buildsets (reason, submitted_at, complete, scheduler, open_requests) \
         SELECT CONCAT('bench ', seq), NOW(6), 0, 'bench', 1 FROM seq_1_to_{count}"
    );
    sqlx::query(AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await
        .context("seed buildsets")?;
    let list = builder_ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let k = builder_ids.len();
    let sql = format!(
        "INSERT INTO buildrequests (buildsetid, builderid, priority, complete, submitted_at) \
         SELECT bs.id, b.id, 0, 0, bs.submitted_at FROM buildsets bs \
         JOIN (SELECT id, ROW_NUMBER() OVER (ORDER BY id) - 1 AS k FROM builders \
               WHERE id IN ({list})) b ON b.k = bs.id % {k} \
         WHERE bs.id > ? ORDER BY bs.id"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(before_bs)
        .execute(&mut *tx)
        .await
        .context("seed build requests")?;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM buildrequests WHERE id > ? ORDER BY id")
        .bind(before_br)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    anyhow::ensure!(
        ids.len() == count,
        "seeded {} requests, wanted {count}",
        ids.len()
    );
    sqlx::query("ANALYZE TABLE buildrequests")
        .execute(&db.pool)
        .await
        .context("analyze buildrequests")?;
    Ok(ids)
}
