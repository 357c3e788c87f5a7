//! Read routes: health, masters, builders, workers, requests, builds,
//! steps and logs. All from the database, paginated.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::params::Params;
use crate::db::{BuildFilter, BuildInfo, MasterRow, RequestFilter, RequestRow, StepRow};
use crate::runtime::MasterState;

type St = State<Arc<MasterState>>;
type Q = Query<HashMap<String, String>>;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(st): St) -> impl IntoResponse {
    let db = st.db_healthy.load(Ordering::SeqCst);
    let draining = st.is_draining();
    let ready = db && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let links = st.gateway_links.load(Ordering::SeqCst);
    (
        status,
        Json(json!({"ready": ready, "database": db, "draining": draining, "gateway_links": links})),
    )
}

#[derive(Serialize)]
pub struct MasterJson {
    id: i64,
    name: String,
    boot_time: chrono::DateTime<chrono::Utc>,
    active: bool,
    draining: bool,
    last_active: chrono::DateTime<chrono::Utc>,
}

impl From<MasterRow> for MasterJson {
    fn from(m: MasterRow) -> Self {
        MasterJson {
            id: m.id,
            name: m.name,
            boot_time: m.boot_time,
            active: m.active,
            draining: m.draining,
            last_active: m.last_active,
        }
    }
}

pub async fn masters(State(st): St, Query(q): Q) -> ApiResult<Json<Vec<MasterJson>>> {
    let p = Params(q);
    p.only(&["all", "limit", "offset"])?;
    let all = p.bool("all")?.unwrap_or(false);
    let (limit, offset) = p.page()?;
    let rows = st.store.list_masters(all).await?;
    Ok(Json(
        rows.into_iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(MasterJson::from)
            .collect(),
    ))
}

pub async fn builders(State(st): St, Query(q): Q) -> ApiResult<Json<Vec<Value>>> {
    let p = Params(q);
    p.only(&["limit", "offset"])?;
    let (limit, offset) = p.page()?;
    let counts: HashMap<String, (i64, i64)> = st
        .store
        .builder_counts()
        .await?
        .into_iter()
        .map(|c| (c.name, (c.pending, c.running)))
        .collect();
    Ok(Json(
        st.config
            .builders
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|b| {
                let (pending, running) = counts.get(&b.name).copied().unwrap_or((0, 0));
                json!({"name": b.name, "pending": pending, "running": running, "workers": b.workers})
            })
            .collect(),
    ))
}

/// Workers of the cluster file; `connected`, `master` and `idle` as this
/// master sees them (workers routed to other masters show as not connected here).
pub async fn workers(State(st): St, Query(q): Q) -> ApiResult<Json<Vec<Value>>> {
    let p = Params(q);
    p.only(&["limit", "offset"])?;
    let (limit, offset) = p.page()?;
    let attached: HashMap<String, bool> = st
        .workers
        .views()
        .into_iter()
        .map(|w| (w.name, w.idle))
        .collect();
    Ok(Json(
        st.config
            .workers
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|w| {
                let builders: Vec<&str> = st
                    .config
                    .builders
                    .iter()
                    .filter(|b| b.workers.contains(&w.name))
                    .map(|b| b.name.as_str())
                    .collect();
                let here = attached.get(&w.name);
                json!({
                    "name": w.name,
                    "connected": here.is_some(),
                    "master": here.map(|_| st.me.name.clone()),
                    "builders": builders,
                    "idle": here.copied(),
                })
            })
            .collect(),
    ))
}

pub async fn requests(State(st): St, Query(q): Q) -> ApiResult<Json<Vec<RequestRow>>> {
    let p = Params(q);
    p.only(&["complete", "builder", "buildset_id", "limit", "offset"])?;
    let (limit, offset) = p.page()?;
    let f = RequestFilter {
        complete: p.bool("complete")?,
        builder: p.string("builder"),
        buildset_id: p.int("buildset_id")?,
        limit,
        offset,
    };
    Ok(Json(st.store.list_requests(&f).await?))
}

pub async fn request(State(st): St, Path(id): Path<String>) -> ApiResult<Json<RequestRow>> {
    let id = parse_id(&id)?;
    st.store
        .get_request(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no build request {id}")))
}

pub async fn builds(State(st): St, Query(q): Q) -> ApiResult<Json<Vec<BuildInfo>>> {
    let p = Params(q);
    p.only(&["builder", "buildrequest_id", "limit", "offset"])?;
    let (limit, offset) = p.page()?;
    let f = BuildFilter {
        builder: p.string("builder"),
        request_id: p.int("buildrequest_id")?,
        limit,
        offset,
    };
    Ok(Json(st.store.list_builds(&f).await?))
}

pub async fn build(State(st): St, Path(id): Path<String>) -> ApiResult<Json<BuildInfo>> {
    let id = parse_id(&id)?;
    st.store
        .get_build(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no build {id}")))
}

pub async fn steps(State(st): St, Path(id): Path<String>) -> ApiResult<Json<Vec<StepRow>>> {
    let id = parse_id(&id)?;
    if st.store.get_build(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no build {id}")));
    }
    Ok(Json(st.store.list_steps(id).await?))
}

pub async fn step_log(
    State(st): St,
    Path((id, n)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id)?;
    let n: i32 = n
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("step number must be an integer, not {n:?}")))?;
    let log_id = st
        .store
        .step_log_id(id, n, "stdio")
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no log for step {n} of build {id}")))?;
    let bytes = st.store.read_log(log_id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes))
}

fn parse_id(s: &str) -> Result<i64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::BadRequest(format!("id must be an integer, not {s:?}")))
}
