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
use crate::exit::{self, Exit};

/// How often the API is asked while waiting.
const POLL: Duration = Duration::from_secs(1);
/// A master sees the drain flag at its next maintenance round (every
/// `heartbeat_interval`, 5 s by default) and may claim until then. "No build"
/// counts once the master answering the API, not draining before the drain
/// was asked and draining after it, has taken it up (so it is the master
/// drained: the preStop case, where the API is the master's own), or else
/// once no claim has shown up for this long after the drain.
const SETTLE: Duration = Duration::from_secs(15);
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

/// Whether the master serving the API says it drains (`/readyz`, 503 then).
async fn serving_master_drains(api: &ApiClient) -> bool {
    let body = match api.get_text("/readyz").await {
        Ok(t) => t,
        Err(ClientError::Status(503, body)) => body,
        Err(_) => return false,
    };
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["draining"].as_bool())
        .unwrap_or(false)
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

pub async fn run(api: &ApiClient, name: &str, timeout: Option<Dur>) -> Exit {
    let deadline = timeout.map(|t| Instant::now() + t.get());
    let mut ids = match active_ids(api, name).await {
        Ok(ids) => ids,
        Err(e) => return exit::client_error(&e),
    };
    // Whether the API's own master could show that it took up this drain.
    let api_master_was_draining = serving_master_drains(api).await;
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
            return Exit::Ok;
        }
        Err(e) => return exit::client_error(&e),
    }
    if ids.is_empty() {
        // It became active between the listing and the drain.
        ids = match active_ids(api, name).await {
            Ok(ids) => ids,
            Err(e) => return exit::client_error(&e),
        };
    }
    let drained_at = Instant::now();
    let mut noticed = false;
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
                return Exit::Ok;
            }
            Ok(Some(0)) => {
                if !noticed && !api_master_was_draining {
                    noticed = serving_master_drains(api).await;
                }
                if noticed || drained_at.elapsed() >= SETTLE {
                    println!("drain: {name} runs no build; done");
                    return Exit::Ok;
                }
                last = Some(0);
            }
            Ok(Some(n)) => {
                if last != Some(n) {
                    println!("drain: waiting for {n} build(s) on {name}");
                    last = Some(n);
                }
            }
            // Unauthorized stays so; anything else may pass (a restart of the API).
            Err(e @ ClientError::Unauthorized(_)) => return exit::client_error(&e),
            Err(e) => eprintln!("flotilla: {e}; retrying"),
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            let waited_for = match last {
                Some(0) => format!("{name} to take up the drain"),
                Some(n) => format!("{n} build(s) on {name} to finish or be handed back"),
                None => format!("the builds on {name} to finish or be handed back"),
            };
            eprintln!("flotilla: drain: timed out waiting for {waited_for}");
            return Exit::Failed;
        }
        // The last look is at the deadline itself.
        let pause = deadline.map_or(POLL, |d| POLL.min(d - now));
        tokio::time::sleep(pause).await;
    }
}
