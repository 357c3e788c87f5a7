//! `--wait`: follow build requests until they complete, showing which build
//! and step each is at, and the tail of the failing step's log on failure.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::client::ApiClient;
use crate::exit;

#[derive(Debug, Deserialize)]
struct Request {
    id: i64,
    builder: String,
    complete: bool,
    results: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Build {
    id: i64,
    number: i64,
    worker: Option<String>,
    master: Option<String>,
    results: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Step {
    number: i64,
    name: String,
    started_at: Option<String>,
    results: Option<String>,
}

const POLL: Duration = Duration::from_millis(250);
const TAIL_LINES: usize = 30;

/// Waits for every request; returns 0 only if all ended in success or warnings.
pub async fn for_requests(api: &ApiClient, ids: &[i64], progress: bool) -> i32 {
    let mut shown: HashMap<(i64, i64, i64), String> = HashMap::new();
    let mut outcome: HashMap<i64, String> = HashMap::new();
    while outcome.len() < ids.len() {
        for &id in ids {
            if outcome.contains_key(&id) {
                continue;
            }
            let req: Request = match api.get(&format!("/api/v1/buildrequests/{id}")).await {
                Ok(r) => r,
                Err(e) => return e.report(),
            };
            let builds: Vec<Build> = match api
                .get(&format!("/api/v1/builds?buildrequest_id={id}&limit=1"))
                .await
            {
                Ok(b) => b,
                Err(e) => return e.report(),
            };
            if let Some(b) = builds.first() {
                show_progress(api, &req, b, progress, &mut shown).await;
            }
            if req.complete {
                let results = req.results.clone().unwrap_or_else(|| "unknown".into());
                eprintln!("request {} ({}): {results}", req.id, req.builder);
                if !is_good(&results)
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
        exit::OK
    } else {
        exit::FAILED
    }
}

fn is_good(results: &str) -> bool {
    results == "success" || results == "warnings"
}

async fn show_progress(
    api: &ApiClient,
    req: &Request,
    build: &Build,
    progress: bool,
    shown: &mut HashMap<(i64, i64, i64), String>,
) {
    if !progress {
        return;
    }
    if let std::collections::hash_map::Entry::Vacant(e) = shown.entry((req.id, build.id, -1)) {
        eprintln!(
            "request {}: build #{} of {} on worker {} (master {})",
            req.id,
            build.number,
            req.builder,
            build.worker.as_deref().unwrap_or("-"),
            build.master.as_deref().unwrap_or("-"),
        );
        e.insert(String::new());
    }
    let steps: Vec<Step> = api
        .get(&format!("/api/v1/builds/{}/steps", build.id))
        .await
        .unwrap_or_default();
    let total = steps.len();
    for s in steps {
        let state = match (&s.started_at, &s.results) {
            (_, Some(r)) => format!("finished: {r}"),
            (Some(_), None) => "running".to_owned(),
            (None, None) => continue,
        };
        let key = (req.id, build.id, s.number);
        if shown.get(&key) != Some(&state) {
            eprintln!("  [{}/{total}] step {} {state}", s.number + 1, s.name);
            shown.insert(key, state);
        }
    }
}

async fn print_failure_tail(api: &ApiClient, build: &Build) {
    let steps: Vec<Step> = api
        .get(&format!("/api/v1/builds/{}/steps", build.id))
        .await
        .unwrap_or_default();
    let failing = steps.iter().rev().find(|s| {
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
        eprintln!("--- last lines of step {} ({}) ---", step.number, step.name);
        for l in &lines[start..] {
            eprintln!("{l}");
        }
        eprintln!("---");
    }
}
