//! This instance as seen from outside: its registry (`/admin/registry`), to check
//! convergence, and the shared database's shards (`/admin/shards`).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use tenant_router::problem::ApiError;
use tenant_router::sync::BusReport;
use tenant_router::tenant::TenantId;

use super::AdminState;

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct RegistryView {
    version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    bus: Option<BusReport>,
    tenants: Vec<RegistryTenant>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct RegistryTenant {
    id: TenantId,
    version: i64,
}

#[utoipa::path(get, path = "/admin/shards", tag = "instance", security(("bearer" = [])),
    responses((status = 200, description = "Citus nodes, tables, placements and tenant statistics, or that Citus is not installed", body = Object), (status = 404, description = "No shared database is configured", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
/// The shared database's topology (Citus nodes, tables, placements, tenant statistics), or
/// a plain statement that Citus is not installed.
pub(super) async fn shards(
    State(state): State<AdminState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let shared = state.shared.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "no shared database is configured (TENANT_ROUTER_SHARED_DATABASE_URL)".into(),
        )
    })?;
    Ok(Json(shared.topology().await?))
}

#[utoipa::path(get, path = "/admin/registry", tag = "instance", security(("bearer" = [])),
    responses((status = 200, description = "This instance's version, bus and tenants", body = RegistryView), crate::openapi::AdminProblems))]
/// This instance's applied version and each tenant's, to check convergence from outside.
pub(super) async fn registry(State(state): State<AdminState>) -> Json<RegistryView> {
    let snapshot = state.registry.snapshot();
    let mut tenants: Vec<RegistryTenant> = snapshot
        .iter()
        .map(|e| RegistryTenant {
            id: e.tenant().id.clone(),
            version: e.tenant().version,
        })
        .collect();
    tenants.sort_by(|a, b| a.id.cmp(&b.id));
    Json(RegistryView {
        version: snapshot.version(),
        bus: state.sync.as_ref().map(|s| s.report()),
        tenants,
    })
}
