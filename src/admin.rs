//! The admin API, on its own listener, every route behind `Authorization: Bearer <token>`
//! checked against the configured argon2 hash. Read-only so far: tenants and the registry.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::admin_token::AdminTokenHash;
use crate::app::auth::bearer_token;
use crate::control::ControlDb;
use crate::problem::{ApiError, ApiPath, ApiQuery};
use crate::registry::Registry;
use crate::tenant::{PoolSettings, Tenant, TenantId, TenantState};

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminState {
    /// This instance's registry.
    pub registry: Arc<Registry>,
    /// The control database.
    pub control: ControlDb,
    /// The token's hash; with none configured, every call is refused.
    pub token_hash: Option<Arc<AdminTokenHash>>,
}

/// The admin routes, with authentication.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/tenants", get(list_tenants))
        .route("/admin/tenants/{id}", get(show_tenant))
        .route("/admin/registry", get(registry))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

async fn require_token(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer_token(req.headers()).map(str::to_string);
    let (Some(token), Some(hash)) = (token, state.token_hash.clone()) else {
        return Err(ApiError::Unauthorized);
    };
    // argon2 takes tens of milliseconds of CPU: off the async workers.
    let valid = tokio::task::spawn_blocking(move || hash.verify(&token))
        .await
        .unwrap_or(false);
    if valid {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// A tenant as the admin API shows it: the database URL with its password masked.
#[derive(Serialize)]
struct TenantView {
    id: TenantId,
    hosts: Vec<String>,
    database: String,
    pool: PoolSettings,
    state: TenantState,
    version: i64,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        Self {
            id: t.id.clone(),
            hosts: t.hosts.iter().map(|h| h.to_string()).collect(),
            database: t.database.redacted(),
            pool: t.pool,
            state: t.state,
            version: t.version,
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct TenantPage {
    tenants: Vec<TenantView>,
    next_cursor: Option<TenantId>,
}

async fn list_tenants(
    State(state): State<AdminState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<TenantPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let after = q
        .cursor
        .filter(|c| !c.is_empty())
        .map(|c| TenantId::parse(&c))
        .transpose()
        .map_err(|_| ApiError::invalid("cursor", "is not a cursor this API returned"))?;
    let mut tenants = state
        .control
        .list_tenants(after.as_ref(), limit + 1)
        .await?;
    let next_cursor = if tenants.len() as i64 > limit {
        tenants.truncate(limit as usize);
        tenants.last().map(|t| t.id.clone())
    } else {
        None
    };
    Ok(Json(TenantPage {
        tenants: tenants.iter().map(TenantView::from).collect(),
        next_cursor,
    }))
}

async fn show_tenant(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TenantView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no tenant '{id}'"));
    let parsed = TenantId::parse(&id).map_err(|_| not_found())?;
    let tenant = state
        .control
        .get_tenant(&parsed)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(TenantView::from(&tenant)))
}

#[derive(Serialize)]
struct RegistryView {
    version: i64,
    tenants: Vec<RegistryTenant>,
}

#[derive(Serialize)]
struct RegistryTenant {
    id: TenantId,
    version: i64,
}

/// This instance's applied version and each tenant's, to check convergence from outside.
async fn registry(State(state): State<AdminState>) -> Json<RegistryView> {
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
        tenants,
    })
}
