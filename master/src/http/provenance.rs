//! Provenance routes: `GET /api/v1/buildsets/{id}` (source stamps, the
//! changes behind it, reason, properties, requests), and the whole buildset
//! inline on a single build or request.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::error::{ApiError, ApiResult};
use super::reads::parse_id;
use crate::db::{BuildsetInfo, Store};
use crate::state::MasterState;

type St = State<Arc<MasterState>>;

/// A build or request with its buildset (`null` once retention removed it).
#[derive(Serialize)]
pub struct WithBuildset<T: Serialize> {
    #[serde(flatten)]
    pub item: T,
    pub buildset: Option<BuildsetInfo>,
}

impl<T: Serialize> WithBuildset<T> {
    pub async fn of(store: &Store, item: T, buildset_id: i64) -> ApiResult<Json<Self>> {
        let buildset = store.get_buildset(buildset_id).await?;
        Ok(Json(WithBuildset { item, buildset }))
    }
}

pub async fn buildset(State(st): St, Path(id): Path<String>) -> ApiResult<Json<BuildsetInfo>> {
    let id = parse_id(&id)?;
    st.store
        .get_buildset(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no buildset {id}")))
}
