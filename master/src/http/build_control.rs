//! Stopping and rebuilding builds, and cancelling requests that already run.
//!
//! A build runs on exactly one master, but any master may be asked to stop
//! it. When it runs here it is interrupted at once (it ends `cancelled`);
//! otherwise the stop is recorded in the database and the master running it
//! acts on it in its maintenance loop
//! (`runtime::stop_requests`), within a heartbeat interval.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::reads::parse_id;
use crate::db::{DbError, NewBuildset};
use crate::metrics::BUILDS_STOPPED;
use crate::state::{AbortReason, MasterState};

type St = State<Arc<MasterState>>;

/// Interrupts the build of request `request_id` here, or asks its master to.
/// Returns where: `"here"` or `"owner"`.
async fn stop_request(st: &MasterState, request_id: i64) -> Result<&'static str, DbError> {
    if st.running_requests().contains(&request_id) {
        st.abort_builds(Some(&[request_id]), AbortReason::Stopped);
        ::metrics::counter!(BUILDS_STOPPED).increment(1);
        Ok("here")
    } else {
        st.store.request_stop(request_id).await?;
        Ok("owner")
    }
}

/// `POST /api/v1/builds/{id}/stop`: interrupt a running build; it ends `cancelled`.
pub async fn stop_build(State(st): St, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    let build = st
        .store
        .get_build(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no build {id}")))?;
    if build.complete_at.is_some() {
        return Err(ApiError::Conflict(format!(
            "build {id} has already finished"
        )));
    }
    let on = stop_request(&st, build.buildrequest_id).await?;
    Ok(Json(json!({
        "build_id": id,
        "buildrequest_id": build.buildrequest_id,
        "stopping": true,
        "stopped_by": on,
    })))
}

/// `POST /api/v1/buildrequests/{id}/cancel`: a pending request completes as
/// `cancelled`; one already running has its build stopped (it ends `cancelled`).
pub async fn cancel_request(State(st): St, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    let Some(req) = st.store.get_request(id).await? else {
        return Err(ApiError::NotFound(format!("no build request {id}")));
    };
    if req.complete {
        return Err(ApiError::Conflict(format!(
            "build request {id} is already complete"
        )));
    }
    if st.store.cancel_pending_request(id).await? {
        return Ok(Json(
            json!({"id": id, "cancelled": true, "stopping": false}),
        ));
    }
    let on = stop_request(&st, id).await?;
    Ok(Json(
        json!({"id": id, "cancelled": false, "stopping": true, "stopped_by": on}),
    ))
}

/// `POST /api/v1/builds/{id}/rebuild`: a new buildset with the same source
/// stamps, properties and priority, for the same builder.
pub async fn rebuild(State(st): St, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    let build = st
        .store
        .get_build(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no build {id}")))?;
    let details = st
        .store
        .request_details(&[build.buildrequest_id])
        .await?
        .pop()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "the build request of build {id} is gone (removed by retention)"
            ))
        })?;
    let bs = NewBuildset {
        reason: format!(
            "rebuild of {} build #{} (id {id})",
            build.builder, build.number
        ),
        scheduler: Some("rebuild".to_owned()),
        sourcestamps: details.sourcestamps,
        properties: details.properties,
        change_ids: details.change_ids,
        builders: vec![(details.builder_id, details.priority)],
        ..Default::default()
    };
    let (buildset_id, ids) = st.store.add_buildset(&bs).await?;
    st.work_submitted(&[details.builder_id]);
    Ok(Json(
        json!({"buildset_id": buildset_id, "buildrequest_ids": ids, "rebuild_of": id}),
    ))
}
