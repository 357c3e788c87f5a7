//! Completing buildsets: a buildset is complete once its last request is,
//! with the worst of its requests' results (Buildbot's ranking, see
//! [`Results::rank`]).
//!
//! Completing a request must lock its open buildset *before* looking at the
//! buildset's other requests: two masters finishing the last two requests of
//! one buildset then queue on that lock, and the second sees the first's
//! committed completion (READ COMMITTED reads afresh per statement) instead
//! of both missing it.

use super::Results;

/// In an open write transaction `$tx`, lock the buildset rows `$bsids` that
/// are still open, in id order, and evaluate to that set.
macro_rules! lock_open_buildsets {
    ($tx:expr, $d:expr, $bsids:expr) => {{
        let bsids: std::collections::BTreeSet<i64> = $bsids;
        let sql = format!(
            "SELECT id FROM buildsets WHERE id = ? AND complete = 0{}",
            $d.for_update()
        );
        let mut open = std::collections::BTreeSet::new();
        for bs in bsids {
            let row: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .bind(bs)
                .fetch_optional(&mut *$tx)
                .await?;
            open.extend(row);
        }
        open
    }};
}
pub(crate) use lock_open_buildsets;

/// In an open write transaction `$tx`, complete the buildsets among `$open`
/// (locked by [`lock_open_buildsets`]) whose requests are now all complete,
/// with the worst of their results: one query finds them, one update each.
macro_rules! finish_buildsets {
    ($tx:expr, $d:expr, $open:expr) => {{
        let open: std::collections::BTreeSet<i64> = $open;
        if !open.is_empty() {
            let sql = $crate::db::buildset_finish::finishable_sql(
                &$crate::db::dialect::placeholders(open.len()),
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for bs in &open {
                q = q.bind(bs);
            }
            let rows = q.fetch_all(&mut *$tx).await?;
            let update = format!(
                "UPDATE buildsets SET complete = 1, complete_at = {}, results = ? \
                 WHERE id = ? AND complete = 0",
                $d.now()
            );
            for r in &rows {
                sqlx::query(sqlx::AssertSqlSafe(update.clone()))
                    .bind($crate::db::rows::DbRow::i64(r, "worst")?)
                    .bind($crate::db::rows::DbRow::i64(r, "id")?)
                    .execute(&mut *$tx)
                    .await?;
            }
        }
    }};
}
pub(crate) use finish_buildsets;

/// An aggregate over the requests `o` of one buildset: the stored code of
/// their worst results (a request without results counts as Exception).
fn worst_results_sql() -> String {
    let exception = Results::Exception;
    let to_rank: String = Results::ALL
        .iter()
        .map(|r| format!(" WHEN {} THEN {}", r.as_i64(), r.rank()))
        .collect();
    let to_code: String = Results::ALL
        .iter()
        .map(|r| format!(" WHEN {} THEN {}", r.rank(), r.as_i64()))
        .collect();
    format!(
        "CAST(CASE MAX(CASE COALESCE(o.results, {code}){to_rank} ELSE {rank} END){to_code} END AS SIGNED)",
        code = exception.as_i64(),
        rank = exception.rank(),
    )
}

/// Columns `id`, `worst`: the buildsets among `ids` (an SQL list or
/// subquery) that are open and whose requests are all complete.
pub(crate) fn finishable_sql(ids: &str) -> String {
    format!(
        "SELECT bs.id AS id, {worst} AS worst FROM buildsets bs \
         JOIN buildrequests o ON o.buildsetid = bs.id \
         WHERE bs.id IN ({ids}) AND bs.complete = 0 \
         GROUP BY bs.id HAVING SUM(CASE WHEN o.complete = 0 THEN 1 ELSE 0 END) = 0",
        worst = worst_results_sql()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_results_maps_every_code_through_its_rank() {
        let sql = worst_results_sql();
        for r in Results::ALL {
            assert!(sql.contains(&format!("WHEN {} THEN {}", r.as_i64(), r.rank())));
            assert!(sql.contains(&format!("WHEN {} THEN {}", r.rank(), r.as_i64())));
        }
    }
}
