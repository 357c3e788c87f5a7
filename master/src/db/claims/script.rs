//! The claim and the completion of requests on MySQL/MariaDB, each as one
//! round trip.
//!
//! Both are short write transactions whose cost is almost all round trips:
//! through sqlx, `BEGIN`, every statement and `COMMIT` each wait for an
//! answer (four for a claim, eight for a completion). MySQL's text protocol
//! takes several statements in one request (sqlx connects with
//! `CLIENT_MULTI_STATEMENTS`), so here each transaction goes as one script:
//! `START TRANSACTION; ...; COMMIT; SELECT <outcome>`. What one statement
//! finds is handed to the next in session variables: a single request (the
//! usual round: one idle worker, one finished build) in scalar variables, a
//! batch as a JSON array read back with `JSON_TABLE`. Only integers are
//! written into the script text (ids, the master id, a results code), never
//! user text.
//!
//! The statements are the same compare-and-swap as the `stepwise` path,
//! composed from the same pieces (`sql`): lock the candidates (`SKIP LOCKED`), then update exactly the
//! locked rows with the condition repeated, then count the claims on the
//! builder rows; a completion updates each request (the fenced
//! compare-and-swap) and counts it down on its buildset and its builder
//! (`buildset_finish`). If a statement fails the server skips
//! the rest of the script; the connection is rolled back before it goes back
//! to the pool (a lock-wait timeout rolls back only the statement), or closed
//! if even that fails.

use std::collections::BTreeMap;

use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::{AssertSqlSafe, Row};

use super::{Claim, ClaimRound, sql};
use crate::db::buildset_finish::count_down_sql;
use crate::db::dialect::Dialect;
use crate::db::{DbError, MasterId, Results};

/// Run `body` (statements ending in `COMMIT; SELECT ...`) as one transaction
/// in one round trip; the last row it returns.
async fn run_transaction(pool: &MySqlPool, body: String) -> Result<Option<MySqlRow>, DbError> {
    run(pool, format!("START TRANSACTION; {body}")).await
}

/// Send `script` (one request to the server) and return the last row it
/// returns. On an error the connection is rolled back before it goes back
/// to the pool (a failed statement may leave a transaction open), or
/// closed if even that fails.
pub(super) async fn run(pool: &MySqlPool, script: String) -> Result<Option<MySqlRow>, DbError> {
    let guard = crate::db::cancel::Guard::arm();
    let r = run_script(pool, script).await;
    guard.disarm();
    r
}

async fn run_script(pool: &MySqlPool, script: String) -> Result<Option<MySqlRow>, DbError> {
    let mut conn = pool.acquire().await?;
    match sqlx::raw_sql(AssertSqlSafe(script))
        .fetch_all(&mut *conn)
        .await
    {
        Ok(rows) => Ok(rows.into_iter().last()),
        Err(e) => {
            if sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_err() {
                // Never hand a connection with an open transaction to the pool.
                drop(conn.detach());
            }
            Err(e.into())
        }
    }
}

/// A session variable's JSON text from a result row (NULL: empty array).
fn json_column(row: &MySqlRow, col: &str) -> Result<serde_json::Value, DbError> {
    let raw: Option<Vec<u8>> = row.try_get(col)?;
    match raw {
        None => Ok(serde_json::Value::Array(Vec::new())),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| DbError::Other(format!("claim script returned bad JSON in {col}: {e}"))),
    }
}

/// `pick_and_claim_per_builder` on MySQL: for each (builder, max), lock up to
/// max of its best claimable requests skipping rows others have locked, claim
/// exactly those for `me` if `me` is still active.
pub(super) async fn pick_and_claim_per_builder(
    pool: &MySqlPool,
    me: MasterId,
    wants: &[(i64, i64)],
) -> Result<ClaimRound, DbError> {
    if let [(builder, 1)] = wants {
        return claim_one(pool, me, *builder).await;
    }
    let picks = wants
        .iter()
        .map(|(builder, max)| {
            format!(
                "({}{})",
                sql::best_of_builder("id, builderid", &builder.to_string(), &max.to_string()),
                Dialect::MySql.skip_locked()
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let body = format!(
        "SELECT JSON_ARRAYAGG(JSON_ARRAY(id, builderid)) FROM ({picks}) AS picked \
         INTO @flotilla_won; \
         {claim}; \
         SET @flotilla_claimed = ROW_COUNT(); \
         {counts}\
         COMMIT; \
         SELECT @flotilla_won AS won, @flotilla_claimed AS claimed",
        claim = sql::claim(
            &format!("buildrequests JOIN {WON} ON buildrequests.id = w.id"),
            "TRUE",
            &me.to_string(),
            "NOW(6)"
        ),
        counts = claim_counts(me, wants),
    );
    let row = run_transaction(pool, body)
        .await?
        .ok_or_else(|| DbError::Other("claim script returned no outcome".into()))?;
    let mut won = pairs(&json_column(&row, "won")?)?;
    // In the order the builders were asked for, oldest id first.
    let order: BTreeMap<i64, usize> = wants
        .iter()
        .enumerate()
        .map(|(i, (b, _))| (*b, i))
        .collect();
    won.sort_by_key(|(id, b)| (order.get(b).copied().unwrap_or(usize::MAX), *id));
    Ok(ClaimRound::of_cas(Claim::all(won), claimed_count(&row)?))
}

/// The claim of a single request, the claim loop's usual round (one idle
/// worker): scalar session variables instead of JSON, cheaper for the server.
async fn claim_one(pool: &MySqlPool, me: MasterId, builder: i64) -> Result<ClaimRound, DbError> {
    // MIN over the locked pick is always one row (NULL when none), so the
    // variable never keeps a value from an earlier script on this connection.
    let body = format!(
        "SELECT MIN(id) FROM ({pick}{lock}) AS picked INTO @flotilla_id; \
         {claim}; \
         SET @flotilla_claimed = ROW_COUNT(); \
         UPDATE builders SET claimed_requests = claimed_requests + @flotilla_claimed \
         WHERE id = {builder} AND @flotilla_claimed > 0; \
         COMMIT; \
         SELECT @flotilla_id AS id, @flotilla_claimed AS claimed",
        pick = sql::best_of_builder("id", &builder.to_string(), "1"),
        lock = Dialect::MySql.skip_locked(),
        claim = sql::claim(
            "buildrequests",
            "id = @flotilla_id",
            &me.to_string(),
            "NOW(6)"
        ),
    );
    let row = run_transaction(pool, body)
        .await?
        .ok_or_else(|| DbError::Other("claim script returned no outcome".into()))?;
    one_claim(&row, builder)
}

/// The outcome of a single-request claim of `builder` from its answer row:
/// `id` (the request locked, NULL when none) and `claimed` (rows the
/// compare-and-swap changed). The script's and the procedure's answer.
pub(super) fn one_claim(row: &MySqlRow, builder: i64) -> Result<ClaimRound, DbError> {
    let won: Vec<(i64, i64)> = row
        .try_get::<Option<i64>, _>("id")?
        .map(|id| (id, builder))
        .into_iter()
        .collect();
    Ok(ClaimRound::of_cas(Claim::all(won), claimed_count(row)?))
}

/// The requests of `@flotilla_won` as a table `w` with one column, `id`.
const WON: &str = "JSON_TABLE(@flotilla_won, '$[*]' COLUMNS (id BIGINT PATH '$[0]')) AS w";

/// Raise each wanted builder's `claimed_requests` by the requests of
/// `@flotilla_won` the claim `UPDATE` gave to `me` (they were unclaimed
/// when locked, so those `me` now holds are the ones just claimed); builder
/// rows in id order, none written when nothing was claimed.
fn claim_counts(me: MasterId, wants: &[(i64, i64)]) -> String {
    let mut builders: Vec<i64> = wants.iter().map(|(b, _)| *b).collect();
    builders.sort_unstable();
    builders.dedup();
    builders
        .iter()
        .map(|b| {
            format!(
                "UPDATE builders SET claimed_requests = claimed_requests + \
                 (SELECT COUNT(*) FROM buildrequests c JOIN {WON} ON c.id = w.id \
                  WHERE builderid = {b} AND {held}) \
                 WHERE id = {b} AND @flotilla_claimed > 0; ",
                held = sql::held_by(&me.to_string()),
            )
        })
        .collect()
}

/// `@flotilla_claimed`, the rows the claim `UPDATE` changed.
fn claimed_count(row: &MySqlRow) -> Result<u64, DbError> {
    Ok(u64::try_from(row.try_get::<i64, _>("claimed")?).unwrap_or(0))
}

/// `[[a, b], ...]` as pairs.
fn pairs(v: &serde_json::Value) -> Result<Vec<(i64, i64)>, DbError> {
    let bad = || DbError::Other(format!("claim script: unexpected pairs {v}"));
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|p| match p.as_array().map(Vec::as_slice) {
            Some([a, b]) => Ok((a.as_i64().ok_or_else(bad)?, b.as_i64().ok_or_else(bad)?)),
            _ => Err(bad()),
        })
        .collect()
}

/// Statements completing the requests `me` holds among `ids` with
/// `results`, ending inside the transaction: each request's `UPDATE`
/// (whether it changed in `@flotilla_c<i>`, the number in
/// `@flotilla_completed`), then, for each one completed, the count-down of
/// its buildset (completing the buildset at zero) and of its builder's
/// claimed requests. No statement reads a sibling request.
fn completion_statements(me: MasterId, ids: &[i64], results: Results) -> String {
    let code = results.as_i64();
    let mut sql = String::new();
    for (i, id) in ids.iter().enumerate() {
        // The aggregates always give one row (NULLs when the request was
        // not completed here), so no variable keeps an older value.
        let complete = sql::complete(
            &format!("id = {id} AND {}", sql::held_by(&me.to_string())),
            &code.to_string(),
            "NOW(6)",
        );
        sql += &format!(
            "{complete}; \
             SET @flotilla_c{i} = ROW_COUNT(); \
             SELECT MIN(buildsetid), MIN(builderid) FROM buildrequests \
             WHERE id = {id} AND @flotilla_c{i} = 1 INTO @flotilla_bs{i}, @flotilla_b{i}; "
        );
    }
    for i in 0..ids.len() {
        sql += &count_down_sql(
            1,
            results.rank(),
            "NOW(6)",
            &format!("id = @flotilla_bs{i}"),
        );
        sql += "; ";
    }
    for i in 0..ids.len() {
        sql += &format!(
            "UPDATE builders SET claimed_requests = claimed_requests - 1 \
             WHERE id = @flotilla_b{i}; "
        );
    }
    let total: Vec<String> = (0..ids.len()).map(|i| format!("@flotilla_c{i}")).collect();
    sql += &format!("SET @flotilla_completed = {}; ", total.join(" + "));
    sql
}

/// `SELECT` list naming each request's `@flotilla_c<i>` as `c<i>`.
fn completed_flags(n: usize) -> String {
    (0..n)
        .map(|i| format!("@flotilla_c{i} AS c{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `complete_requests` on MySQL: the ids completed now, in order.
pub(super) async fn complete_requests(
    pool: &MySqlPool,
    me: MasterId,
    ids: &[i64],
    results: Results,
) -> Result<Vec<i64>, DbError> {
    let body = format!(
        "{}COMMIT; SELECT {}",
        completion_statements(me, ids, results),
        completed_flags(ids.len()),
    );
    let row = run_transaction(pool, body)
        .await?
        .ok_or_else(|| DbError::Other("completion script returned no outcome".into()))?;
    let mut done = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if row.try_get::<Option<i64>, _>(format!("c{i}").as_str())? == Some(1) {
            done.push(*id);
        }
    }
    done.sort_unstable();
    Ok(done)
}

/// `finish_build` with `complete_request` on MySQL: complete the request if
/// `me` still holds it, and record the build's end with `results`, or Retry
/// when the claim was lost. True when the request was completed.
pub(super) async fn finish_build_completing(
    pool: &MySqlPool,
    me: MasterId,
    build_id: i64,
    request_id: i64,
    results: Results,
    outbox: &str,
) -> Result<bool, DbError> {
    // `outbox`: the reporters' enqueue statement (`outbox::script_enqueue_finished`).
    let body = format!(
        "{completion}{end}; {outbox}COMMIT; SELECT @flotilla_completed AS completed",
        completion = completion_statements(me, &[request_id], results),
        end = sql::end_builds(
            &format!("id = {build_id} AND masterid = {me}"),
            &format!(
                "IF(@flotilla_completed = 1, {}, {})",
                results.as_i64(),
                Results::Retry.as_i64()
            ),
            "NOW(6)"
        ),
    );
    let row = run_transaction(pool, body)
        .await?
        .ok_or_else(|| DbError::Other("finish script returned no outcome".into()))?;
    Ok(row.try_get::<i64, _>("completed")? == 1)
}
