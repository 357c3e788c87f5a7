//! `POST /api/v1/try`: what `flotilla try` sends — a patch, its base
//! revision and the builders to try it on. The buildset goes through the
//! `try` scheduler that lists those builders; each build's `git` step
//! checks out the base and applies the patch.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::limits;
use crate::schedulers::{SchedCtx, StartError, TryRequest, buildsets};
use crate::state::MasterState;

fn one() -> i32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TryBody {
    builders: Vec<String>,
    /// The patch text, as `git diff` writes it.
    diff: String,
    #[serde(default)]
    baserev: Option<String>,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    repository: Option<String>,
    /// Leading path components to strip (`git apply -p`).
    #[serde(default = "one")]
    patch_level: i32,
    #[serde(default)]
    author: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    properties: BTreeMap<String, Value>,
}

pub async fn try_build(
    State(st): State<Arc<MasterState>>,
    b: Result<Json<TryBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let t = b
        .map(|Json(v)| v)
        .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !(0..=32).contains(&t.patch_level) {
        return Err(ApiError::BadRequest("patch_level must be 0..=32".into()));
    }
    for (field, value, max) in [
        ("baserev", t.baserev.as_deref(), limits::NAME),
        ("branch", t.branch.as_deref(), limits::NAME),
        ("repository", t.repository.as_deref(), limits::REPOSITORY),
        ("author", Some(t.author.as_str()), limits::NAME),
    ] {
        limits::check(field, value, max)?;
    }
    // An unknown builder is a missing object, as for `force`: 404.
    if let Some(b) = t.builders.iter().find(|b| st.config.builder(b).is_none()) {
        return Err(ApiError::NotFound(format!("no builder named {b:?}")));
    }
    let req = TryRequest {
        builders: t.builders,
        diff: t.diff.into_bytes(),
        patch_level: t.patch_level,
        baserev: t.baserev.filter(|r| !r.is_empty()),
        branch: t.branch.filter(|b| !b.is_empty()),
        repository: t.repository,
        author: t.author,
        comment: t.comment,
        properties: t.properties,
    };
    let created = buildsets::start_try(&SchedCtx::of(&st), req)
        .await
        .map_err(|e| match e {
            StartError::BadRequest(m) => ApiError::BadRequest(m),
            StartError::Db(e) => ApiError::Db(e),
        })?;
    st.work_submitted(&[]);
    Ok(Json(json!({
        "buildset_id": created.buildset_id,
        "buildrequest_ids": created.buildrequest_ids,
    })))
}
