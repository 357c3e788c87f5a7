//! `GET /api/v1/builds/{id}/deliveries`: what the reporters were to tell
//! the code hosts about a build, and how far each delivery got.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};

use super::error::{ApiError, ApiResult};
use super::reads::parse_id;
use crate::db::DeliveryRow;
use crate::state::MasterState;

pub async fn build_deliveries(
    State(st): State<Arc<MasterState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<DeliveryRow>>> {
    let id = parse_id(&id)?;
    if st.store.get_build(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no build {id}")));
    }
    Ok(Json(st.store.build_deliveries(id).await?))
}
