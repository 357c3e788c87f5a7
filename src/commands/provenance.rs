//! `flotilla status build ID` and `flotilla status buildset ID`: one build
//! (or buildset) and everything about where it came from — the reason, the
//! source stamps, the changes behind it and the properties — as the API's
//! `GET /api/v1/builds/{id}` and `GET /api/v1/buildsets/{id}` give it.

use serde_json::Value;

use crate::cli::StatusWhat;
use crate::client::ApiClient;
use crate::exit::{self, Exit};

pub async fn show(api: &ApiClient, what: StatusWhat, id: Option<i64>, json: bool) -> Exit {
    let (noun, path) = match what {
        StatusWhat::Buildset => ("buildset", "buildsets"),
        _ => ("build", "builds"),
    };
    let Some(id) = id else {
        eprintln!(
            "`flotilla status {noun}` needs the {noun}'s id, e.g. `flotilla status {noun} 12`"
        );
        return Exit::Usage;
    };
    let v: Value = match api.get(&format!("/api/v1/{path}/{id}")).await {
        Ok(v) => v,
        Err(e) => return exit::client_error(&e),
    };
    if json {
        println!("{v}");
        return Exit::Ok;
    }
    match what {
        StatusWhat::Buildset => print_buildset(&v),
        _ => {
            print_build(&v);
            match v.get("buildset") {
                Some(bs) if !bs.is_null() => print_buildset(bs),
                _ => println!(
                    "buildset:    {} (removed by retention)",
                    text(&v["buildset_id"])
                ),
            }
        }
    }
    Exit::Ok
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn line(label: &str, v: &Value) {
    println!("{:<12} {}", format!("{label}:"), text(v));
}

fn print_build(b: &Value) {
    println!(
        "build {} ({} #{})",
        text(&b["id"]),
        text(&b["builder"]),
        text(&b["number"])
    );
    line("results", &b["results"]);
    line("state", &b["state_string"]);
    line("worker", &b["worker"]);
    line("master", &b["master"]);
    line("started", &b["started_at"]);
    line("completed", &b["complete_at"]);
    line("request", &b["buildrequest_id"]);
}

fn print_buildset(bs: &Value) {
    line("buildset", &bs["id"]);
    line("reason", &bs["reason"]);
    line("scheduler", &bs["scheduler"]);
    line("submitted", &bs["submitted_at"]);
    for ss in bs["sourcestamps"].as_array().into_iter().flatten() {
        println!("source stamp {}:", text(&ss["id"]));
        line("  repository", &ss["repository"]);
        line("  branch", &ss["branch"]);
        line("  revision", &ss["revision"]);
        line("  project", &ss["project"]);
        line("  codebase", &ss["codebase"]);
        let patch = if ss["patch"] == Value::Bool(true) {
            format!("yes, by {}", text(&ss["patch_author"]))
        } else {
            "no".to_owned()
        };
        line("  patch", &Value::String(patch));
    }
    let changes = bs["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        println!("changes:     none");
    }
    for c in &changes {
        println!(
            "change {}: {} by {} at {}",
            text(&c["id"]),
            text(&c["revision"]),
            text(&c["author"]),
            text(&c["when_timestamp"])
        );
        for l in c["comments"].as_str().unwrap_or_default().lines() {
            println!("    {l}");
        }
        let files: Vec<String> = c["files"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        if !files.is_empty() {
            println!("    files: {}", files.join(", "));
        }
    }
    if let Some(props) = bs["properties"].as_object().filter(|p| !p.is_empty()) {
        println!("properties:");
        for (k, v) in props {
            println!("  {k} = {v}");
        }
    }
}
