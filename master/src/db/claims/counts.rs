//! The builders' written claim counts (`builders.claimed_requests`), kept in
//! the transaction that takes or ends a claim: `max_concurrent_builds` is
//! decided by them (see `limited`), and on a multi-primary cluster every
//! claim and release of a builder's requests writing its row is what lets
//! certification settle conflicting decisions.

/// In an open write transaction `$tx`, add `$sign` (1 or -1) per request
/// among `$ids` to its builder's `claimed_requests`. `$ids` must be exactly
/// the requests whose claim this transaction has just taken or ended
/// (claimed, unclaimed, released, or completed while claimed). Builder rows
/// are written in id order.
macro_rules! count_claims {
    ($tx:expr, $d:expr, $ids:expr, $sign:expr) => {{
        let ids: &[i64] = $ids;
        let sign: i64 = $sign;
        if !ids.is_empty() {
            let sql = format!(
                "SELECT builderid, COUNT(*) AS n FROM buildrequests WHERE id IN ({}) \
                 GROUP BY builderid ORDER BY builderid",
                $crate::db::dialect::placeholders(ids.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in ids {
                q = q.bind(id);
            }
            for r in q.fetch_all(&mut *$tx).await? {
                let raise = format!("{}{}", $crate::db::claims::counts::RAISE, $d.in_tx());
                sqlx::query(sqlx::AssertSqlSafe(raise))
                    .bind(sign * $crate::db::rows::DbRow::i64(&r, "n")?)
                    .bind($crate::db::rows::DbRow::i64(&r, "builderid")?)
                    .execute(&mut *$tx)
                    .await?;
            }
        }
    }};
}
pub(crate) use count_claims;

/// Add to one builder's count: bind the amount, then the builder id (the
/// caller appends the dialect's `in_tx` guard).
pub(crate) const RAISE: &str =
    "UPDATE builders SET claimed_requests = claimed_requests + ? WHERE id = ?";
