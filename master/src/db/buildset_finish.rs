//! Completing buildsets: a buildset is complete once its last request is,
//! with the worst of its requests' results (Buildbot's ranking, see
//! [`Results::rank`]).
//!
//! The decision is a written count, never a read of the sibling requests:
//! each buildset row carries `open_requests` (set when its requests are
//! inserted) and `worst_rank` (the worst rank completed so far). The
//! transaction that completes requests counts them down on the buildset row
//! and, in the same `UPDATE`, completes the buildset when the count reaches
//! zero. Two masters completing the last two requests of one buildset both
//! write that row: on one server the second waits for the first's row lock
//! and reads its count (a locking read sees the latest commit); on Galera
//! the two write sets conflict on the row and certification aborts one,
//! which is retried and then sees the other's count. Reading the siblings
//! instead would let both see the other still open on two nodes, write
//! different rows, both certify, and leave the buildset open for ever.

use super::Results;

/// `UPDATE buildsets` for `n` requests of the buildset(s) matching `which`
/// (a condition) that just completed with results of rank `rank` (a
/// number, or an SQL expression such as a procedure's parameter): counts
/// them down and, when they were the last, completes the buildset with the
/// worst results. Every expression reads only the columns' old values, so
/// the outcome does not depend on the order the server assigns them in
/// (SQLite and MariaDB's SIMULTANEOUS_ASSIGNMENT read old values; MySQL
/// assigns left to right, and the counted columns come last).
pub(crate) fn count_down_sql(
    n: i64,
    rank: impl std::fmt::Display,
    now: &str,
    which: &str,
) -> String {
    let worst = format!("CASE WHEN worst_rank > {rank} THEN worst_rank ELSE {rank} END");
    let last = format!("open_requests <= {n}");
    format!(
        "UPDATE buildsets SET \
         complete = CASE WHEN {last} THEN 1 ELSE 0 END, \
         complete_at = CASE WHEN {last} THEN {now} ELSE NULL END, \
         results = CASE WHEN {last} THEN {code} ELSE NULL END, \
         worst_rank = {worst}, open_requests = open_requests - {n} \
         WHERE {which} AND complete = 0",
        code = rank_to_code(&worst),
    )
}

/// In an open write transaction `$tx`, count down the buildsets of the
/// requests just completed there with `$results`: `$done` maps each
/// buildset id to how many of its requests this transaction completed.
/// Buildsets are written in id order.
macro_rules! count_down_buildsets {
    ($tx:expr, $d:expr, $done:expr, $results:expr) => {{
        let done: &std::collections::BTreeMap<i64, i64> = $done;
        let results: $crate::db::Results = $results;
        for (bs, n) in done {
            let sql = $crate::db::buildset_finish::count_down_sql(
                *n,
                results.rank(),
                $d.now(),
                &format!("id = ?{}", $d.in_tx()),
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(bs)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}
pub(crate) use count_down_buildsets;

/// The stored code of the rank `rank` (an SQL expression).
fn rank_to_code(rank: &str) -> String {
    let arms: String = Results::ALL
        .iter()
        .map(|r| format!(" WHEN {} THEN {}", r.rank(), r.as_i64()))
        .collect();
    format!("CASE {rank}{arms} ELSE {} END", Results::Exception.as_i64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_to_code_maps_every_rank() {
        let sql = rank_to_code("r");
        for r in Results::ALL {
            assert!(sql.contains(&format!("WHEN {} THEN {}", r.rank(), r.as_i64())));
        }
    }

    #[test]
    fn the_backfill_ranks_as_results_do() {
        for sql in [
            include_str!("../../migrations/mysql/0021_buildsets_open_requests_backfill.sql"),
            include_str!("../../migrations/sqlite/0021_buildsets_open_requests_backfill.sql"),
        ] {
            for r in Results::ALL {
                assert!(sql.contains(&format!("WHEN {} THEN {}", r.as_i64(), r.rank())));
            }
            assert!(sql.contains(&format!(
                "COALESCE(br.results, {})",
                Results::Exception.as_i64()
            )));
        }
    }

    #[test]
    fn count_down_reads_old_values_only_and_counts_last() {
        let sql = count_down_sql(2, 3, "NOW(6)", "id = ?");
        let (before, counted) = sql.split_once("worst_rank = CASE").unwrap();
        assert!(!before.contains("open_requests -"), "{sql}");
        assert!(
            counted.contains("open_requests = open_requests - 2"),
            "{sql}"
        );
        assert!(sql.ends_with("WHERE id = ? AND complete = 0"), "{sql}");
    }
}
