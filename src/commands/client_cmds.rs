//! Client commands that talk to a master's HTTP API: `sendchange`,
//! `force`, `status`, `drain` and `undrain`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::wait;
use crate::cli::{ForceArgs, SendchangeArgs, StatusArgs, StatusWhat};
use crate::client::ApiClient;
use crate::exit::{self, Exit};

#[derive(Debug, Deserialize)]
pub struct BuildsetCreated {
    pub buildset_id: i64,
    pub buildrequest_ids: Vec<i64>,
}

fn properties(props: &[(String, String)]) -> BTreeMap<String, String> {
    props.iter().cloned().collect()
}

pub async fn sendchange(api: &ApiClient, a: SendchangeArgs) -> Exit {
    let body = json!({
        "repository": a.repository,
        "branch": a.branch,
        "revision": a.revision,
        "author": a.author,
        "comments": a.comments,
        "files": a.files,
        "project": a.project,
        "properties": properties(&a.properties),
    });
    match api.post::<_, Value>("/api/v1/changes", &body).await {
        Ok(v) => {
            let id = v.get("change_id").cloned().unwrap_or(Value::Null);
            println!("change {id} submitted; the schedulers that match it will build it");
            Exit::Ok
        }
        Err(e) => exit::client_error(&e),
    }
}

pub async fn force(api: &ApiClient, a: ForceArgs) -> Exit {
    let body = json!({
        "builder": a.builder,
        "branch": a.branch,
        "revision": a.revision,
        "repository": a.repository,
        "reason": a.reason,
        "priority": a.priority,
        "properties": properties(&a.properties),
    });
    let created: BuildsetCreated = match api.post("/api/v1/force", &body).await {
        Ok(c) => c,
        Err(e) => return exit::client_error(&e),
    };
    if a.json {
        // Written by hand to keep the key order of the contract.
        let ids: Vec<String> = created
            .buildrequest_ids
            .iter()
            .map(i64::to_string)
            .collect();
        println!(
            "{{\"buildset_id\": {}, \"buildrequest_ids\": [{}]}}",
            created.buildset_id,
            ids.join(", ")
        );
    } else {
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
    }
    if a.wait {
        wait::for_requests(api, &created.buildrequest_ids, !a.json).await
    } else {
        Exit::Ok
    }
}

pub async fn drain(api: &ApiClient, name: &str, drain: bool) -> Exit {
    let verb = if drain { "drain" } else { "undrain" };
    match api
        .post::<_, Value>(&format!("/api/v1/masters/{name}/{verb}"), &json!({}))
        .await
    {
        Ok(v) => {
            let n = v.get("masters").and_then(Value::as_u64).unwrap_or(0);
            println!("{verb}: {n} master(s) named {name}");
            Exit::Ok
        }
        Err(e) => exit::client_error(&e),
    }
}

pub async fn status(api: &ApiClient, a: StatusArgs) -> Exit {
    let one = matches!(a.what, StatusWhat::Build | StatusWhat::Buildset);
    if a.id.is_some() && !one {
        eprintln!("an id goes only with `status build ID` or `status buildset ID`");
        return Exit::Usage;
    }
    let (path, columns): (&str, &[&str]) = match a.what {
        StatusWhat::Masters => (
            "/api/v1/masters",
            &["id", "name", "active", "draining", "last_active"],
        ),
        StatusWhat::Builders => (
            "/api/v1/builders",
            &["name", "pending", "running", "last_results", "workers"],
        ),
        // Finished requests too (newest first), with their result.
        StatusWhat::Requests => (
            "/api/v1/buildrequests?limit=50",
            &[
                "id",
                "builder",
                "priority",
                "branch",
                "revision",
                "submitted_at",
                "claimed_by_master",
                "complete",
                "results",
            ],
        ),
        StatusWhat::Builds => (
            "/api/v1/builds?limit=50",
            &[
                "id",
                "builder",
                "number",
                "branch",
                "revision",
                "worker",
                "master",
                "started_at",
                "results",
                "state_string",
            ],
        ),
        StatusWhat::Workers => (
            "/api/v1/workers",
            &["name", "connected", "master", "idle", "builders"],
        ),
        StatusWhat::Schedulers => (
            "/api/v1/schedulers",
            &["name", "type", "kind", "owner.master_name", "owner_active"],
        ),
        StatusWhat::Build | StatusWhat::Buildset => {
            return super::provenance::show(api, a.what, a.id, a.json).await;
        }
        StatusWhat::Changes => (
            "/api/v1/changes?limit=50",
            &[
                "id",
                "branch",
                "revision",
                "author",
                "repository",
                "when_timestamp",
            ],
        ),
    };
    let rows: Value = match api.get(path).await {
        Ok(v) => v,
        Err(e) => return exit::client_error(&e),
    };
    if a.json {
        println!("{rows}");
        return Exit::Ok;
    }
    let mut rows = rows;
    if matches!(a.what, StatusWhat::Schedulers) {
        // Kinds nobody needs to run have no owner: "-", not a lapsed `false`.
        for r in rows.as_array_mut().into_iter().flatten() {
            if r["owner"].is_null() && NOT_OWNED.contains(&r["kind"].as_str().unwrap_or_default()) {
                r["owner_active"] = Value::Null;
            }
        }
    }
    print_table(
        columns,
        rows.as_array().map(Vec::as_slice).unwrap_or_default(),
    );
    Exit::Ok
}

/// Scheduler kinds started from outside (the API, `try`, a trigger step).
const NOT_OWNED: &[&str] = &["force", "try", "triggerable"];

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| cell(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// `row[a][b]...` for a column named `a.b...`.
fn field<'v>(row: &'v Value, column: &str) -> Option<&'v Value> {
    column.split('.').try_fold(row, |v, key| v.get(key))
}

fn print_table(columns: &[&str], rows: &[Value]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(field(r, c))).collect())
        .collect();
    // A nested column is headed by its last key (`owner.master_name`: MASTER_NAME).
    let headers: Vec<String> = columns
        .iter()
        .map(|c| c.rsplit('.').next().unwrap_or(c).to_uppercase())
        .collect();
    // Widths in characters, not bytes, so names with accents stay aligned.
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| {
        let parts: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers);
    for r in cells {
        line(r);
    }
    if rows.is_empty() {
        println!("(none)");
    }
}
