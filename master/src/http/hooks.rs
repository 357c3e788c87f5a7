//! Push webhooks: GitHub (`POST /api/v1/hooks/github`) and GitLab
//! (`POST /api/v1/hooks/gitlab`) turn each pushed commit into a change.
//!
//! They are exempt from the admin token; each checks the secret its
//! provider defines instead, when the cluster file names one
//! (`[hooks] github_secret_env` / `gitlab_token_env`): GitHub signs the body
//! with HMAC-SHA256 (`X-Hub-Signature-256: sha256=<hex>`), GitLab sends the
//! token itself (`X-Gitlab-Token`). A missing signature is 401, a wrong one
//! 403, and nothing is recorded; a body that is not a push payload is 400.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::db::{DbError, NewChange};
use crate::state::MasterState;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl IntoResponse for HookError {
    fn into_response(self) -> Response {
        let status = match &self {
            HookError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HookError::Forbidden(_) => StatusCode::FORBIDDEN,
            HookError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HookError::Db(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            HookError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status != StatusCode::BAD_REQUEST {
            tracing::warn!(error = %self, "webhook refused");
        }
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

type HookResult = Result<Json<Value>, HookError>;

/// The secret named by `var`, when the cluster file names a variable.
fn secret(var: Option<&String>) -> Result<Option<String>, HookError> {
    match var {
        None => Ok(None),
        Some(v) => match std::env::var(v) {
            Ok(s) if !s.is_empty() => Ok(Some(s)),
            // Configured but unset: refuse everything rather than accept unsigned pushes.
            _ => Err(HookError::Forbidden(format!(
                "the webhook secret variable {v} is not set on this master"
            ))),
        },
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Checks GitHub's `sha256=<hex>` HMAC of `body` under `key`.
pub fn github_signature_ok(key: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[derive(Debug, Deserialize)]
struct Person {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
}

#[derive(Debug, Deserialize)]
struct Commit {
    id: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    author: Option<Person>,
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Repo {
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    full_name: Option<String>,
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    path_with_namespace: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// The fields of a push that both providers share (GitLab's project is
/// read as the repository).
#[derive(Debug, Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    commits: Vec<Commit>,
    #[serde(default)]
    head_commit: Option<Commit>,
    #[serde(default)]
    repository: Option<Repo>,
    #[serde(default)]
    project: Option<Repo>,
}

fn to_changes(p: Push, source: &str) -> Vec<NewChange> {
    let deleted = p.deleted
        || p.after
            .as_deref()
            .is_some_and(|a| a.chars().all(|c| c == '0'));
    if deleted {
        return Vec::new();
    }
    let (branch, category) = match p.git_ref.strip_prefix("refs/heads/") {
        Some(b) => (b.to_owned(), None),
        None => match p.git_ref.strip_prefix("refs/tags/") {
            Some(t) => (t.to_owned(), Some("tag".to_owned())),
            None => (p.git_ref.clone(), None),
        },
    };
    let repo = p.project.or(p.repository).unwrap_or_default();
    let repository = repo
        .clone_url
        .or(repo.git_http_url)
        .or(repo.html_url)
        .or(repo.url)
        .unwrap_or_default();
    let project = repo
        .full_name
        .or(repo.path_with_namespace)
        .unwrap_or_default();
    let mut commits = p.commits;
    if commits.is_empty() {
        commits.extend(p.head_commit);
    }
    commits
        .into_iter()
        .map(|c| {
            let mut files = c.added;
            files.extend(c.modified);
            files.extend(c.removed);
            let author = c
                .author
                .map(|a| format!("{} <{}>", a.name, a.email))
                .unwrap_or_default();
            let when = c
                .timestamp
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&chrono::Utc));
            let mut properties = BTreeMap::new();
            properties.insert("event".to_owned(), Value::String(format!("{source}-push")));
            NewChange {
                author,
                comments: c.message,
                branch: Some(branch.clone()),
                revision: Some(c.id),
                repository: repository.clone(),
                project: project.clone(),
                codebase: String::new(),
                files,
                properties,
                category: category.clone(),
                when,
            }
        })
        .collect()
}

async fn record(st: &MasterState, changes: Vec<NewChange>) -> HookResult {
    for c in &changes {
        super::limits::check_change(c).map_err(|e| HookError::BadRequest(e.to_string()))?;
    }
    let mut ids = Vec::with_capacity(changes.len());
    for c in &changes {
        ids.push(st.store.add_change(c).await?);
    }
    if let Some(last) = ids.last() {
        crate::schedulers::on_change(*last);
    }
    Ok(Json(json!({ "change_ids": ids })))
}

fn parse_push(body: &[u8]) -> Result<Push, HookError> {
    let bad = |e: String| HookError::BadRequest(format!("not a push payload: {e}"));
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    // serde reads a struct from a list too; a payload's objects must be objects.
    let is_object = |v: Option<&serde_json::Value>| v.is_none_or(|v| v.is_object() || v.is_null());
    let commits = value.get("commits").and_then(|c| c.as_array());
    let shaped = value.is_object()
        && ["repository", "project", "head_commit"]
            .iter()
            .all(|k| is_object(value.get(*k)))
        && is_object(value.get("head_commit").and_then(|c| c.get("author")))
        && commits.is_none_or(|cs| {
            cs.iter()
                .all(|c| c.is_object() && is_object(c.get("author")))
        });
    if !shaped {
        return Err(bad(
            "repository, project, head_commit, commits and authors must be objects".into(),
        ));
    }
    let push: Push = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    check_push(&push).map_err(|e| HookError::BadRequest(e.to_string()))?;
    Ok(push)
}

/// The fields of a push that become bounded columns of a change, checked
/// as they come (the bounds are in the OpenAPI document too), so a payload
/// is accepted or refused whole, whichever of its parts a change is made of.
fn check_push(p: &Push) -> Result<(), super::ApiError> {
    use super::limits::{NAME, REPOSITORY, check};
    check("ref", Some(&p.git_ref), NAME)?;
    check("after", p.after.as_deref(), NAME)?;
    for c in p.commits.iter().chain(&p.head_commit) {
        check("commit id", Some(&c.id), NAME)?;
        if let Some(a) = &c.author {
            check("author name", Some(&a.name), 200)?;
            check("author email", Some(&a.email), 50)?;
        }
    }
    for r in p.repository.iter().chain(&p.project) {
        for (field, v) in [
            ("clone_url", &r.clone_url),
            ("html_url", &r.html_url),
            ("full_name", &r.full_name),
            ("git_http_url", &r.git_http_url),
            ("path_with_namespace", &r.path_with_namespace),
            ("url", &r.url),
        ] {
            check(field, v.as_deref(), REPOSITORY)?;
        }
    }
    Ok(())
}

pub async fn github(
    State(st): State<Arc<MasterState>>,
    headers: HeaderMap,
    body: Bytes,
) -> HookResult {
    if let Some(key) = secret(st.config.hooks.github_secret_env.as_ref())? {
        let Some(sig) = header(&headers, "x-hub-signature-256") else {
            return Err(HookError::Unauthorized(
                "missing X-Hub-Signature-256 header".into(),
            ));
        };
        if !github_signature_ok(key.as_bytes(), &body, sig) {
            return Err(HookError::Forbidden("bad X-Hub-Signature-256".into()));
        }
    }
    match header(&headers, "x-github-event").unwrap_or("push") {
        "ping" => return Ok(Json(json!({ "change_ids": [] }))),
        "push" => {}
        other => {
            return Err(HookError::BadRequest(format!(
                "event {other:?} is not handled; send push events"
            )));
        }
    }
    let push = parse_push(&body)?;
    record(&st, to_changes(push, "github")).await
}

pub async fn gitlab(
    State(st): State<Arc<MasterState>>,
    headers: HeaderMap,
    body: Bytes,
) -> HookResult {
    if let Some(token) = secret(st.config.hooks.gitlab_token_env.as_ref())? {
        let Some(given) = header(&headers, "x-gitlab-token") else {
            return Err(HookError::Unauthorized(
                "missing X-Gitlab-Token header".into(),
            ));
        };
        if !super::auth::constant_time_eq(token.as_bytes(), given.as_bytes()) {
            return Err(HookError::Forbidden("wrong X-Gitlab-Token".into()));
        }
    }
    match header(&headers, "x-gitlab-event").unwrap_or("Push Hook") {
        "Push Hook" | "Tag Push Hook" => {}
        other => {
            return Err(HookError::BadRequest(format!(
                "event {other:?} is not handled; send push events"
            )));
        }
    }
    let push = parse_push(&body)?;
    record(&st, to_changes(push, "gitlab")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signature() {
        let key = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github_signature_ok(key, body, good));
        assert!(!github_signature_ok(b"other", body, good));
        assert!(!github_signature_ok(key, b"Hello, World?", good));
        assert!(!github_signature_ok(key, body, "sha1=00"));
        assert!(!github_signature_ok(key, body, "sha256=zz"));
    }

    #[test]
    fn a_push_becomes_one_change_per_commit() {
        let body = br#"{"ref":"refs/heads/main","after":"b2","repository":{"clone_url":"https://example.com/r.git","full_name":"o/r"},
            "commits":[{"id":"b1","message":"one","added":["a"],"modified":[],"removed":[]},
                       {"id":"b2","message":"two","modified":["b"],"author":{"name":"N","email":"e@x"}}]}"#;
        let changes = to_changes(parse_push(body).unwrap(), "github");
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[1].revision.as_deref(), Some("b2"));
        assert_eq!(changes[1].branch.as_deref(), Some("main"));
        assert_eq!(changes[1].author, "N <e@x>");
        assert_eq!(changes[0].repository, "https://example.com/r.git");
        let deleted = br#"{"ref":"refs/heads/x","after":"0000000000","commits":[]}"#;
        assert!(to_changes(parse_push(deleted).unwrap(), "github").is_empty());
        assert!(parse_push(b"{\"nope\":1}").is_err());
    }
}
