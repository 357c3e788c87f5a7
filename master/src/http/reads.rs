//! Read routes: health, masters, builders, workers, requests, builds,
//! steps and logs, changes, and who runs each scheduler and change source.
//! All from the database, paginated.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::params::Params;
use super::provenance::WithBuildset;
use crate::config::BuilderConfig;
use crate::db::{
    BuildFilter, BuildInfo, ChangeFilter, ChangeInfo, LastBuild, MasterRow, ObjectOwnerRow,
    RequestFilter, RequestRow, StepRow, WorkerPresence,
};
use crate::state::MasterState;

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

/// Builders of the cluster file with their queue (`pending`, `running`,
/// cluster-wide) and last finished build.
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
    let last: HashMap<String, LastBuild> = st
        .store
        .last_builds()
        .await?
        .into_iter()
        .map(|b| (b.builder.clone(), b))
        .collect();
    Ok(Json(
        st.config
            .builders
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|b| builder_json(b, &counts, last.get(&b.name)))
            .collect(),
    ))
}

pub async fn builder(State(st): St, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let b = st
        .config
        .builder(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no builder named {name:?}")))?;
    let counts: HashMap<String, (i64, i64)> = st
        .store
        .builder_counts()
        .await?
        .into_iter()
        .filter(|c| c.name == name)
        .map(|c| (c.name, (c.pending, c.running)))
        .collect();
    let last = st
        .store
        .last_builds()
        .await?
        .into_iter()
        .find(|l| l.builder == name);
    let mut v = builder_json(b, &counts, last.as_ref());
    let defaults = super::force_defaults::force_defaults(&st, &name).await?;
    v["force_defaults"] = serde_json::to_value(defaults).unwrap_or(Value::Null);
    Ok(Json(v))
}

fn builder_json(
    b: &BuilderConfig,
    counts: &HashMap<String, (i64, i64)>,
    last: Option<&LastBuild>,
) -> Value {
    let (pending, running) = counts.get(&b.name).copied().unwrap_or((0, 0));
    json!({
        "name": b.name,
        "pending": pending,
        "running": running,
        "workers": b.workers,
        "priority": b.priority,
        "max_concurrent_builds": b.max_concurrent_builds,
        "last_build": last.map(|l| json!({
            "id": l.build_id,
            "number": l.number,
            "results": l.results,
            "complete_at": l.complete_at,
        })),
        "last_results": last.and_then(|l| l.results),
    })
}

/// Every worker of the cluster file, as the database knows it: `connected`
/// to which `master` (any master answers the same), and `idle` (null when
/// not connected); `kind` and `version` from its last registration. Filter with `connected=true|false`.
pub async fn workers(State(st): St, Query(q): Q) -> ApiResult<Json<Vec<Value>>> {
    let p = Params(q);
    p.only(&["connected", "limit", "offset"])?;
    let (limit, offset) = p.page()?;
    let connected = p.bool("connected")?;
    let presence: HashMap<String, WorkerPresence> = st
        .store
        .list_worker_presence()
        .await?
        .into_iter()
        .map(|w| (w.name.clone(), w))
        .collect();
    Ok(Json(
        st.config
            .workers
            .iter()
            .map(|w| {
                let builders: Vec<&str> = st
                    .config
                    .builders
                    .iter()
                    .filter(|b| b.workers.contains(&w.name))
                    .map(|b| b.name.as_str())
                    .collect();
                let facts: Option<Value> = presence
                    .get(&w.name)
                    .and_then(|p| p.info.as_deref())
                    .and_then(|i| serde_json::from_str(i).ok());
                // Workers that registered say what they are: `buildbot`
                // when they speak Buildbot's protocol, else flotilla's own.
                let kind = facts
                    .as_ref()
                    .map(|f| f["kind"].as_str().unwrap_or("flotilla").to_owned());
                let version = facts
                    .as_ref()
                    .and_then(|f| f["version"].as_str().map(str::to_owned));
                let p = presence.get(&w.name).filter(|p| p.master.is_some());
                json!({
                    "kind": kind,
                    "version": version,
                    "name": w.name,
                    "connected": p.is_some(),
                    "master": p.and_then(|p| p.master.clone()),
                    "builders": builders,
                    "idle": p.map(|p| !p.busy),
                    "connected_at": p.and_then(|p| p.connected_at),
                })
            })
            .filter(|v| connected.is_none_or(|c| v["connected"] == Value::Bool(c)))
            .skip(offset as usize)
            .take(limit as usize)
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

pub async fn request(
    State(st): St,
    Path(id): Path<String>,
) -> ApiResult<Json<WithBuildset<RequestRow>>> {
    let id = parse_id(&id)?;
    let r = st
        .store
        .get_request(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no build request {id}")))?;
    let bs = r.buildset_id;
    WithBuildset::of(&st.store, r, bs).await
}

pub async fn builds(State(st): St, Query(q): Q) -> ApiResult<Json<Vec<BuildInfo>>> {
    let p = Params(q);
    p.only(&[
        "builder",
        "buildrequest_id",
        "branch",
        "revision",
        "limit",
        "offset",
    ])?;
    let (limit, offset) = p.page()?;
    let f = BuildFilter {
        builder: p.string("builder"),
        request_id: p.int("buildrequest_id")?,
        branch: p.string("branch"),
        revision: p.string("revision"),
        limit,
        offset,
    };
    Ok(Json(
        st.store
            .list_builds(&f)
            .await?
            .into_iter()
            .map(settled)
            .collect(),
    ))
}

/// A build that ended while its state still said a step was running was
/// ended by another master (its own died, or lost its claim): it says so
/// instead of the step it never finished.
fn settled(mut b: BuildInfo) -> BuildInfo {
    if let (Some(_), Some(results)) = (b.complete_at, b.results)
        && (b.state_string.starts_with("running ") || b.state_string == "starting")
    {
        b.state_string = format!("{results} (interrupted)");
    }
    b
}

pub async fn build(
    State(st): St,
    Path(id): Path<String>,
) -> ApiResult<Json<WithBuildset<BuildInfo>>> {
    let id = parse_id(&id)?;
    let b = st
        .store
        .get_build(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no build {id}")))?;
    let bs = b.buildset_id;
    WithBuildset::of(&st.store, settled(b), bs).await
}

pub async fn steps(State(st): St, Path(id): Path<String>) -> ApiResult<Json<Vec<StepRow>>> {
    let id = parse_id(&id)?;
    if st.store.get_build(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no build {id}")));
    }
    Ok(Json(st.store.list_steps(id).await?))
}

/// Step `n`'s log as text. `offset` (bytes) returns only what follows, for
/// following a running step; the `X-Log-Length` header gives the full length.
pub async fn step_log(
    State(st): St,
    Path((id, n)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id)?;
    let n: i32 = n
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("step number must be an integer, not {n:?}")))?;
    let p = Params(q);
    p.only(&["offset"])?;
    let from = p.int("offset")?.unwrap_or(0);
    if from < 0 {
        return Err(ApiError::BadRequest("offset must not be negative".into()));
    }
    if st.store.get_build(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no build {id}")));
    }
    let log_id = st
        .store
        .step_log_id(id, n, "stdio")
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no log for step {n} of build {id}")))?;
    // Streamed from the database a few chunks at a time: memory stays flat
    // however large the log (a 200 MB log read whole cost ~450 MB).
    let span = st.store.log_span(log_id, from as u64).await?;
    let len = span.len;
    let chunks = st
        .store
        .log_stream(log_id, span)
        .map(|r| r.map_err(std::io::Error::other));
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (
                header::HeaderName::from_static("x-log-length"),
                len.to_string(),
            ),
        ],
        axum::body::Body::from_stream(chunks),
    ))
}

/// Recorded changes, newest first; filter with `branch=` and `repository=`.
pub async fn changes(State(st): St, Query(q): Q) -> ApiResult<Json<Vec<ChangeInfo>>> {
    let p = Params(q);
    p.only(&["branch", "repository", "limit", "offset"])?;
    let (limit, offset) = p.page()?;
    let f = ChangeFilter {
        branch: p.string("branch"),
        repository: p.string("repository"),
        limit,
        offset,
    };
    Ok(Json(st.store.list_changes(&f).await?))
}

pub async fn change(State(st): St, Path(id): Path<String>) -> ApiResult<Json<ChangeInfo>> {
    let id = parse_id(&id)?;
    st.store
        .get_change(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no change {id}")))
}

/// Every scheduler and change source of the cluster file (in its order),
/// with the master that owns it in the database. `owner_active` is true
/// while that master is active and has renewed within its lease
/// (`master_timeout`); kinds that nobody needs to own (`force`, `try`,
/// `triggerable`) have no owner.
pub async fn schedulers(State(st): St, Query(q): Q) -> ApiResult<Json<Vec<Value>>> {
    let p = Params(q);
    p.only(&["limit", "offset"])?;
    let (limit, offset) = p.page()?;
    let sched_kind = crate::schedulers::OWNER_KIND;
    let source_kind = crate::changesource::OWNER_KIND;
    let lease = st.config.cluster.master_timeout.get();
    let owners: HashMap<(String, String), ObjectOwnerRow> = st
        .store
        .list_object_owners(&[sched_kind, source_kind], lease)
        .await?
        .into_iter()
        .map(|o| ((o.kind.clone(), o.name.clone()), o))
        .collect();
    let entry = |owner_kind: &str, kind: &str, name: &str, type_: &str| {
        let o = owners.get(&(owner_kind.to_owned(), name.to_owned()));
        json!({
            "name": name,
            "kind": kind,
            "type": type_,
            "owner": o.map(|o| json!({"master_id": o.master_id, "master_name": o.master_name})),
            "owner_active": o.is_some_and(|o| o.master_active && o.lease_current),
        })
    };
    let schedulers = st
        .config
        .schedulers
        .iter()
        .map(|s| entry(sched_kind, &s.kind, &s.name, "scheduler"));
    let sources = st
        .config
        .change_sources
        .iter()
        .map(|c| entry(source_kind, &c.kind, &c.name, "change_source"));
    Ok(Json(
        schedulers
            .chain(sources)
            .skip(offset as usize)
            .take(limit as usize)
            .collect(),
    ))
}

pub(super) fn parse_id(s: &str) -> Result<i64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::BadRequest(format!("id must be an integer, not {s:?}")))
}
