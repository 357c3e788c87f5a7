//! `--wait`: follow build requests until they complete, streaming each
//! build's step output as it is written (see [`super::follow`]), and the
//! tail of the failing step's log when progress is not shown (`--json`).

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::follow::{Build, Follower, is_good};
use crate::client::ApiClient;
use crate::exit::{self, Exit};

#[derive(Debug, Deserialize)]
struct Request {
    id: i64,
    builder: String,
    complete: bool,
    results: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Step {
    number: i64,
    name: String,
    results: Option<String>,
}

const POLL: Duration = Duration::from_millis(250);
const TAIL_LINES: usize = 30;
/// Polls allowed for the last output of a build whose request is complete.
const DRAIN_POLLS: usize = 40;

/// Waits for every request; returns 0 only if all ended in success or warnings.
pub async fn for_requests(api: &ApiClient, ids: &[i64], progress: bool) -> Exit {
    let mut followers: HashMap<i64, Follower> = HashMap::new();
    let mut outcome: HashMap<i64, String> = HashMap::new();
    while outcome.len() < ids.len() {
        for &id in ids {
            if outcome.contains_key(&id) {
                continue;
            }
            let req: Request = match api.get(&format!("/api/v1/buildrequests/{id}")).await {
                Ok(r) => r,
                Err(e) => return exit::client_error(&e),
            };
            let builds: Vec<Build> = match api
                .get(&format!("/api/v1/builds?buildrequest_id={id}&limit=1"))
                .await
            {
                Ok(b) => b,
                Err(e) => return exit::client_error(&e),
            };
            if let Some(b) = builds.first()
                && followers.get(&id).is_none_or(|f| f.build_id != b.id)
            {
                if progress {
                    eprintln!(
                        "request {}: build #{} of {} on worker {} (master {})",
                        req.id,
                        b.number,
                        req.builder,
                        b.worker.as_deref().unwrap_or("-"),
                        b.master.as_deref().unwrap_or("-"),
                    );
                }
                let prefix = if ids.len() > 1 {
                    format!("[{} #{}] ", req.builder, b.number)
                } else {
                    String::new()
                };
                followers.insert(id, Follower::new(b.id, prefix));
            }
            if progress && let Some(f) = followers.get_mut(&id) {
                let mut polls = 0;
                loop {
                    match f.poll(api).await {
                        Ok(Some(_)) => break,
                        Ok(None) if req.complete && polls < DRAIN_POLLS => {
                            polls += 1;
                            tokio::time::sleep(POLL / 5).await;
                        }
                        Ok(None) => {
                            if req.complete {
                                f.flush();
                            }
                            break;
                        }
                        Err(e) => return exit::client_error(&e),
                    }
                }
            }
            if req.complete {
                let results = req.results.clone().unwrap_or_else(|| "unknown".into());
                eprintln!("request {} ({}): {results}", req.id, req.builder);
                if !is_good(&results)
                    && !progress
                    && let Some(b) = builds.first()
                {
                    print_failure_tail(api, b).await;
                }
                outcome.insert(id, results);
            }
        }
        if outcome.len() < ids.len() {
            tokio::time::sleep(POLL).await;
        }
    }
    if outcome.values().all(|r| is_good(r)) {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

async fn print_failure_tail(api: &ApiClient, build: &Build) {
    let steps: Vec<Step> = api
        .get(&format!("/api/v1/builds/{}/steps", build.id))
        .await
        .unwrap_or_default();
    let failing = steps.iter().find(|s| {
        s.results
            .as_deref()
            .is_some_and(|r| !is_good(r) && r != "skipped")
    });
    let Some(step) = failing else {
        eprintln!(
            "build #{} ended {}",
            build.number,
            build.results.as_deref().unwrap_or("-")
        );
        return;
    };
    let path = format!("/api/v1/builds/{}/steps/{}/log", build.id, step.number);
    if let Ok(log) = api.get_text(&path).await {
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(TAIL_LINES);
        eprintln!(
            "--- last lines of step {} ({}) ---",
            step.number + 1,
            step.name
        );
        for l in &lines[start..] {
            eprintln!("{l}");
        }
        eprintln!("---");
    }
}
