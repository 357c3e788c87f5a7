//! `flotilla drain NAME --wait [--timeout D]`: drains a master through the
//! API, then polls until none of its active incarnations holds a claimed,
//! unfinished build request (its builds finished or were handed back) or
//! none of them is active any more. Made for a Kubernetes `preStop` hook,
//! which must not return before the master has nothing left to lose.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_master::config::Dur;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{ApiClient, ClientError};
use crate::exit;

/// How often the API is asked while waiting.
const POLL: Duration = Duration::from_secs(1);
/// Largest page the API serves.
const PAGE: usize = 1000;

/// Ids of the active incarnations named `name`.
async fn active_ids(api: &ApiClient, name: &str) -> Result<BTreeSet<i64>, ClientError> {
    let rows: Vec<Value> = api.get("/api/v1/masters?limit=1000").await?;
    Ok(rows
        .iter()
        .filter(|m| m["name"].as_str() == Some(name) && m["active"].as_bool() != Some(false))
        .filter_map(|m| m["id"].as_i64())
        .collect())
}

/// Unfinished build requests claimed by one of `ids`.
async fn claimed_by(api: &ApiClient, ids: &BTreeSet<i64>) -> Result<usize, ClientError> {
    let mut n = 0;
    let mut offset = 0;
    loop {
        let rows: Vec<Value> = api
            .get(&format!(
                "/api/v1/buildrequests?complete=false&limit={PAGE}&offset={offset}"
            ))
            .await?;
        n += rows
            .iter()
            .filter(|r| {
                r["claimed_by_masterid"]
                    .as_i64()
                    .is_some_and(|id| ids.contains(&id))
            })
            .count();
        if rows.len() < PAGE {
            return Ok(n);
        }
        offset += PAGE;
    }
}

pub async fn run(api: &ApiClient, name: &str, timeout: Option<Dur>) -> i32 {
    let deadline = timeout.map(|t| Instant::now() + t.get());
    let mut ids = match active_ids(api, name).await {
        Ok(ids) => ids,
        Err(e) => return e.report(),
    };
    match api
        .post::<_, Value>(&format!("/api/v1/masters/{name}/drain"), &json!({}))
        .await
    {
        Ok(v) => {
            let n = v.get("masters").and_then(Value::as_u64).unwrap_or(0);
            println!("drain: {n} master(s) named {name}");
        }
        // Already gone (it left between the listing and the drain, or
        // before): there is nothing left to wait for.
        Err(ClientError::Status(404, _)) if ids.is_empty() => {
            println!("drain: no active master named {name}; nothing to wait for");
            return exit::OK;
        }
        Err(e) => return e.report(),
    }
    if ids.is_empty() {
        // It became active between the listing and the drain.
        ids = match active_ids(api, name).await {
            Ok(ids) => ids,
            Err(e) => return e.report(),
        };
    }
    let mut last: Option<usize> = None;
    loop {
        let step = async {
            let still = active_ids(api, name).await?;
            let live: BTreeSet<i64> = ids.intersection(&still).copied().collect();
            if live.is_empty() {
                return Ok(None);
            }
            claimed_by(api, &live).await.map(Some)
        };
        match step.await {
            Ok(None) => {
                println!("drain: {name} has left the cluster");
                return exit::OK;
            }
            Ok(Some(0)) => {
                println!("drain: {name} runs no build; done");
                return exit::OK;
            }
            Ok(Some(n)) => {
                if last != Some(n) {
                    println!("drain: waiting for {n} build(s) on {name}");
                    last = Some(n);
                }
            }
            // Unauthorized stays so; anything else may pass (a restart of the API).
            Err(e @ ClientError::Unauthorized(_)) => return e.report(),
            Err(e) => eprintln!("flotilla: {e}; retrying"),
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            let left = last.map_or("its".to_owned(), |n| n.to_string());
            eprintln!(
                "flotilla: drain: timed out waiting for {left} build(s) on {name} to finish or be handed back"
            );
            return exit::FAILED;
        }
        // The last look is at the deadline itself.
        let pause = deadline.map_or(POLL, |d| POLL.min(d - now));
        tokio::time::sleep(pause).await;
    }
}
