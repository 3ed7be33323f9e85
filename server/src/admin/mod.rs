//! The admin API, on its own listener, every route behind `Authorization: Bearer <token>`
//! checked against the configured argon2 hash: tenants (list, show, create, change, remove)
//! and this instance's registry. The console (`/`) is served beside it, without the token.

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::routing::get;

use crate::openapi::BearerAuth;
use tenant_router::control::ControlDb;
use tenant_router::operations::TenantOps;
use tenant_router::registry::Registry;
use tenant_router::sync::ConfigSync;

mod auth;
mod console;
mod instance;
mod jobs;
mod leftovers;
mod metrics;
mod tenants;

use auth::require_token;
use instance::{registry, shards};
use jobs::{delete_letter, delete_tenant_letters, list_letters, retry_letter};
use leftovers::{discard_leftover, list_leftovers, list_operations};
use metrics::{metrics, pools};
use tenants::{
    create_tenant, list_tenants, move_tenant, remove_tenant, show_tenant, update_tenant,
};

pub(crate) use auth::client_address;
pub use auth::{AdminTokenGate, TokenChecks};
pub use tenants::TenantView;

/// The admin API, as OpenAPI 3.1 (served at `/admin/openapi.json`, behind the token).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "tenant-router admin API",
        description = "Tenants, this instance, and dead and parked jobs. Every route takes `Authorization: Bearer <admin token>`; errors are `application/problem+json`."
    ),
    paths(
        tenants::list_tenants, tenants::create_tenant, tenants::show_tenant,
        tenants::update_tenant, tenants::remove_tenant, tenants::move_tenant,
        leftovers::list_leftovers, leftovers::discard_leftover, leftovers::list_operations,
        jobs::list_letters, jobs::delete_tenant_letters, jobs::delete_letter, jobs::retry_letter,
        instance::registry, instance::shards, metrics::pools, metrics::metrics,
    ),
    modifiers(&BearerAuth),
    tags((name = "tenants"), (name = "instance"), (name = "jobs")),
)]
pub struct ApiDoc;

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminState {
    /// This instance's registry.
    pub registry: Arc<Registry>,
    /// The control database.
    pub control: ControlDb,
    /// Tenant writes.
    pub ops: TenantOps,
    /// This instance's sync, for its bus report.
    pub sync: Option<Arc<ConfigSync>>,
    /// The admin token check.
    pub token: AdminTokenGate,
    /// The shared database, for `GET /admin/shards`.
    pub shared: Option<tenant_router::shared::SharedDb>,
    /// The job queue, for dead and parked jobs; `None` without Redis.
    pub jobs: Option<tenant_router::jobs::JobQueue>,
}

/// The admin routes, with authentication.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/admin/tenants/{id}",
            get(show_tenant).patch(update_tenant).delete(remove_tenant),
        )
        .route("/admin/tenants/{id}/move", axum::routing::post(move_tenant))
        .route("/admin/leftovers", get(list_leftovers))
        .route(
            "/admin/leftovers/{id}",
            axum::routing::delete(discard_leftover),
        )
        .route("/admin/operations", get(list_operations))
        .route(
            "/admin/jobs/{which}",
            get(list_letters).delete(delete_tenant_letters),
        )
        .route(
            "/admin/jobs/{which}/{job_id}",
            axum::routing::delete(delete_letter),
        )
        .route(
            "/admin/jobs/{which}/{job_id}/retry",
            axum::routing::post(retry_letter),
        )
        .route("/admin/registry", get(registry))
        .route("/admin/shards", get(shards))
        .route("/admin/pools", get(pools))
        .route("/metrics", get(metrics))
        .route("/admin/openapi.json", get(crate::openapi::admin_document))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
        // The console's page and assets hold no data: they are served without the token.
        .route("/", get(console::index))
        .route("/console.js", get(console::script))
        .route("/console.css", get(console::style))
        // The docs page holds no data; it fetches the document with the console's token.
        .merge(crate::openapi::docs_router(
            "/admin/docs",
            "/admin/openapi.json",
            true,
        ))
}
