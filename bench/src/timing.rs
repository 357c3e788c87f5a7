//! Wall-clock and database-clock helpers shared by the process scenarios.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::NaiveDateTime;
use sqlx::mysql::MySqlPool;

/// Nanoseconds since the Unix epoch on this machine's clock (what
/// `date +%s%N` prints in a step).
pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// The database's clock (UTC, as every stored time).
pub async fn db_now(pool: &MySqlPool) -> anyhow::Result<NaiveDateTime> {
    Ok(sqlx::query_scalar("SELECT NOW(6)").fetch_one(pool).await?)
}

/// `later - earlier` in milliseconds (negative when `later` is earlier).
pub fn ms_between(earlier: NaiveDateTime, later: NaiveDateTime) -> f64 {
    (later - earlier)
        .num_microseconds()
        .map_or(f64::MAX, |us| us as f64 / 1000.0)
}

/// Waits until every request in `ids` is complete; fails after `timeout`.
pub async fn wait_complete(pool: &MySqlPool, ids: &[i64], timeout: Duration) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let sql = format!("SELECT COUNT(*) FROM buildrequests WHERE id IN ({list}) AND complete = 1");
    flotilla_testkit::wait_for(
        &format!("{} requests to complete", ids.len()),
        timeout,
        || async {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_one(pool)
                .await
                .ok()?;
            (n as usize == ids.len()).then_some(())
        },
    )
    .await
}

/// Checks that each request in `ids` completed successfully with exactly one
/// successful build and that no two of its builds overlapped in time;
/// returns the problems found.
pub async fn check_exactly_once(pool: &MySqlPool, ids: &[i64]) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    if ids.is_empty() {
        return Ok(problems);
    }
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let rows: Vec<(i64, i8, Option<i16>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, complete, results FROM buildrequests WHERE id IN ({list}) ORDER BY id"
    )))
    .fetch_all(pool)
    .await?;
    if rows.len() != ids.len() {
        problems.push(format!("{} of {} requests exist", rows.len(), ids.len()));
    }
    for (id, complete, results) in &rows {
        if *complete != 1 || *results != Some(0) {
            problems.push(format!(
                "request {id}: complete={complete} results={results:?}, want a success"
            ));
        }
    }
    type BuildTimes = (i64, Option<i16>, NaiveDateTime, Option<NaiveDateTime>);
    let builds: Vec<BuildTimes> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT buildrequestid, results, started_at, complete_at FROM builds \
         WHERE buildrequestid IN ({list}) ORDER BY buildrequestid, started_at, id"
    )))
    .fetch_all(pool)
    .await?;
    for id in ids {
        let mine: Vec<&BuildTimes> = builds.iter().filter(|b| b.0 == *id).collect();
        let ok = mine.iter().filter(|b| b.1 == Some(0)).count();
        if ok != 1 {
            problems.push(format!(
                "request {id}: {ok} successful builds of {}",
                mine.len()
            ));
        }
        for pair in mine.windows(2) {
            match pair[0].3 {
                Some(end) if end <= pair[1].2 => {}
                end => problems.push(format!(
                    "request {id}: a build ending {end:?} overlaps the next starting {}",
                    pair[1].2
                )),
            }
        }
    }
    Ok(problems)
}
