//! `flotilla try`: send a local patch to be built on top of a base revision
//! by the cluster's `try` scheduler, and with `--wait` follow the builds.
//!
//! Without `--baserev`, the base is `HEAD` of the git clone in the current
//! directory (so `git diff HEAD | flotilla try --builder B --diff -` builds
//! exactly the local edits), or the branch head when there is no clone.

use std::io::Read;

use serde_json::json;

use super::client_cmds::BuildsetCreated;
use super::wait;
use crate::cli::TryArgs;
use crate::client::ApiClient;
use crate::exit::{self, Exit};

fn read_diff(arg: &str) -> Result<String, String> {
    let mut bytes = Vec::new();
    if arg == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the patch from standard input: {e}"))?;
    } else {
        bytes = std::fs::read(arg).map_err(|e| format!("cannot read {arg}: {e}"))?;
    }
    String::from_utf8(bytes)
        .map_err(|_| format!("{arg}: the patch is not UTF-8 text (use `git diff --binary`)"))
}

/// `HEAD` of the clone in the current directory, if there is one.
fn local_head() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--verify", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

pub async fn run(api: &ApiClient, a: TryArgs) -> Exit {
    let diff = match read_diff(&a.diff) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("flotilla: {e}");
            return Exit::Usage;
        }
    };
    if diff.trim().is_empty() {
        eprintln!("flotilla: the patch is empty; nothing to try");
        return Exit::Usage;
    }
    let baserev = a.baserev.clone().or_else(local_head);
    if a.baserev.is_none()
        && let Some(rev) = &baserev
    {
        eprintln!("trying on top of HEAD of this clone ({rev})");
    }
    let author = std::env::var("USER").unwrap_or_default();
    let body = json!({
        "builders": a.builders,
        "diff": diff,
        "baserev": baserev,
        "branch": a.branch,
        "repository": a.repository,
        "author": author,
        "comment": "flotilla try",
    });
    let created: BuildsetCreated = match api.post("/api/v1/try", &body).await {
        Ok(c) => c,
        Err(e) => return exit::client_error(&e),
    };
    let ids: Vec<String> = created
        .buildrequest_ids
        .iter()
        .map(i64::to_string)
        .collect();
    println!(
        "buildset {} with build request(s) {}",
        created.buildset_id,
        ids.join(", ")
    );
    if a.wait {
        wait::for_requests(api, &created.buildrequest_ids, true).await
    } else {
        Exit::Ok
    }
}
