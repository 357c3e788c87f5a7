//! Write routes: force a build, submit a change, drain and undrain a
//! master (stop, cancel and rebuild live in `build_control`). Each one is a database write; this
//! master's claim loop is woken so new work starts without waiting for a poll.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::limits;
use crate::db::{NewBuildset, NewChange, SourceStamp};
use crate::state::MasterState;

type St = State<Arc<MasterState>>;

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceBody {
    builder: String,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    revision: Option<String>,
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    properties: BTreeMap<String, Value>,
}

pub async fn force(
    State(st): St,
    b: Result<Json<ForceBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let f = body(b)?;
    let builder_id = *st
        .builder_ids
        .get(&f.builder)
        .ok_or_else(|| ApiError::NotFound(format!("no builder named {:?}", f.builder)))?;
    let priority = f.priority.unwrap_or(0);
    limits::check("branch", f.branch.as_deref(), limits::NAME)?;
    limits::check("revision", f.revision.as_deref(), limits::NAME)?;
    limits::check("project", f.project.as_deref(), limits::NAME)?;
    limits::check("repository", f.repository.as_deref(), limits::REPOSITORY)?;
    limits::check("reason", f.reason.as_deref(), limits::REASON)?;
    // What the request leaves out comes from the builder's scheduler (or
    // what it last built); a branch only goes with its own repository.
    let defaults = super::force_defaults::force_defaults(&st, &f.builder).await?;
    let given = f.repository.filter(|r| !r.is_empty());
    let same_repository = given.is_none() || given == defaults.repository;
    let repository = given.or(defaults.repository).unwrap_or_default();
    let branch = match f.branch.filter(|b| !b.is_empty()) {
        Some(b) => Some(b),
        None if same_repository && f.revision.is_none() => defaults.branch,
        None => None,
    };
    let bs = NewBuildset {
        reason: f.reason.unwrap_or_else(|| "forced".to_owned()),
        scheduler: Some("force".to_owned()),
        sourcestamps: vec![SourceStamp {
            repository,
            branch,
            revision: f.revision,
            project: f.project.unwrap_or_default(),
            ..Default::default()
        }],
        properties: f.properties,
        builders: vec![(builder_id, priority)],
        ..Default::default()
    };
    let (buildset_id, ids) = st.store.add_buildset(&bs).await?;
    st.work_submitted(&[builder_id]);
    Ok(Json(
        json!({"buildset_id": buildset_id, "buildrequest_ids": ids}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    repository: String,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    revision: Option<String>,
    #[serde(default)]
    author: String,
    #[serde(default)]
    comments: String,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    project: String,
    #[serde(default)]
    codebase: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, Value>,
}

/// Records the change. The master that owns each branch scheduler reads it
/// from the database at its next tick (tree-stable timers included); this
/// only wakes this master's schedulers so that one owned here sees it at once.
pub async fn changes(
    State(st): St,
    b: Result<Json<ChangeBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let c = body(b)?;
    let change = NewChange {
        author: c.author,
        comments: c.comments,
        branch: c.branch,
        revision: c.revision,
        repository: c.repository,
        project: c.project,
        codebase: c.codebase,
        files: c.files,
        properties: c.properties,
        category: c.category,
        when: None,
    };
    limits::check_change(&change)?;
    let change_id = st.store.add_change(&change).await?;
    crate::schedulers::on_change(change_id);
    Ok(Json(json!({"change_id": change_id, "buildsets": []})))
}

pub async fn drain(State(st): St, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    set_draining(&st, &name, true).await
}

pub async fn undrain(State(st): St, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    set_draining(&st, &name, false).await
}

async fn set_draining(st: &MasterState, name: &str, draining: bool) -> ApiResult<Json<Value>> {
    let n = st.store.set_draining_by_name(name, draining).await?;
    if n == 0 {
        return Err(ApiError::NotFound(format!(
            "no active master named {name:?}"
        )));
    }
    Ok(Json(json!({"masters": n, "draining": draining})))
}
