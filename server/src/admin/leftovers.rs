//! What removals kept (`/admin/leftovers`) and operations that did not finish
//! (`/admin/operations`).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tenant_router::problem::{ApiError, ApiPath};
use tenant_router::tenant::TenantId;

use super::AdminState;

pub(super) async fn list_leftovers(
    State(state): State<AdminState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let leftovers = state.control.leftovers().await?;
    Ok(Json(serde_json::json!({ "leftovers": leftovers })))
}

pub(super) async fn discard_leftover(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = TenantId::parse(&id)
        .map_err(|_| ApiError::NotFound(format!("no kept data of tenant '{id}'")))?;
    let removal = state.ops.discard_leftover(&id).await?;
    Ok(Json(removal).into_response())
}

#[derive(Serialize)]
struct OperationView {
    #[serde(flatten)]
    operation: tenant_router::journal::Journaled,
    running: bool,
}

pub(super) async fn list_operations(
    State(state): State<AdminState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let open: Vec<OperationView> = state
        .control
        .unfinished_operations()
        .await?
        .into_iter()
        .map(|(operation, running)| OperationView { operation, running })
        .collect();
    Ok(Json(serde_json::json!({ "operations": open })))
}
