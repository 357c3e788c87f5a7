//! `flotilla health`: a health check any container or supervisor can run
//! with the one binary (the images have no shell tools to probe a port).
//! It asks a master's `/readyz` (database reachable, master active and not
//! draining), or the gateway's on its metrics address; `--live` asks
//! `/healthz` (the process answers) instead. Exit 0 when it is, 1 when it
//! answers "not ready", 69 when nothing answers.

use std::time::Duration;

use crate::cli::HealthArgs;
use crate::exit::Exit;

pub async fn run(base: &str, a: &HealthArgs) -> Exit {
    let path = if a.live { "/healthz" } else { "/readyz" };
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(a.timeout.max(1)))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flotilla: cannot make an HTTP client: {e}");
            return Exit::Software;
        }
    };
    match http.get(&url).send().await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            let body = body.trim();
            if status.is_success() {
                println!("{url}: {status} {body}");
                Exit::Ok
            } else {
                eprintln!("flotilla: {url}: not ready: {status} {body}");
                Exit::Failed
            }
        }
        Err(e) => {
            eprintln!("flotilla: {url}: unreachable: {e}");
            Exit::Unavailable
        }
    }
}
