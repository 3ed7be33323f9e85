//! What removals kept (`/admin/leftovers`) and operations that did not finish
//! (`/admin/operations`).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tenant_router::problem::{ApiError, ApiPath};
use tenant_router::tenant::TenantId;

use super::AdminState;

/// What removals kept.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Leftovers {
    leftovers: Vec<tenant_router::control::Leftover>,
}

#[utoipa::path(get, path = "/admin/leftovers", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, description = "What removals kept", body = Leftovers), crate::openapi::AdminProblems))]
pub(super) async fn list_leftovers(
    State(state): State<AdminState>,
) -> Result<Json<Leftovers>, ApiError> {
    let leftovers = state.control.leftovers().await?;
    Ok(Json(Leftovers { leftovers }))
}

#[utoipa::path(delete, path = "/admin/leftovers/{id}", tag = "tenants", params(("id" = String, Path, description = "The tenant's id")), security(("bearer" = [])),
    responses((status = 200, description = "Its kept data deleted", body = tenant_router::operations::Removal), (status = 404, description = "No kept data of that tenant", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 409, description = "An operation runs", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
pub(super) async fn discard_leftover(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = TenantId::parse(&id)
        .map_err(|_| ApiError::NotFound(format!("no kept data of tenant '{id}'")))?;
    let removal = state.ops.discard_leftover(&id).await?;
    Ok(Json(removal).into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct OperationView {
    #[serde(flatten)]
    operation: tenant_router::journal::Journaled,
    running: bool,
}

/// Operations that did not finish.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Operations {
    operations: Vec<OperationView>,
}

#[utoipa::path(get, path = "/admin/operations", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, description = "Operations running or interrupted", body = Operations), crate::openapi::AdminProblems))]
pub(super) async fn list_operations(
    State(state): State<AdminState>,
) -> Result<Json<Operations>, ApiError> {
    let open: Vec<OperationView> = state
        .control
        .unfinished_operations()
        .await?
        .into_iter()
        .map(|(operation, running)| OperationView { operation, running })
        .collect();
    Ok(Json(Operations { operations: open }))
}
