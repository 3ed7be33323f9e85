//! The reference app: register, log in, and keep notes, per tenant. It is written the way a
//! user of the library would write theirs: plain axum handlers that take [`CurrentTenant`]
//! (or [`auth::AuthUser`]) and never name a tenant themselves.
//!
//! [`CurrentTenant`]: tenant_router::middleware::CurrentTenant

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

use crate::openapi::BearerAuth;

pub mod apex;
pub mod auth;
pub(crate) mod jobs;
mod notes;
pub use notes::PAGE_SQL as NOTES_PAGE_SQL;
pub mod timestamp;
mod users;

/// The reference app's API, as OpenAPI 3.1 (served at `/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "tenant-router reference app",
        description = "The reference app's API. Every route answers on a tenant's host (the `Host` header picks the tenant); errors are `application/problem+json`."
    ),
    paths(
        users::register, users::login,
        notes::list, notes::create, notes::show, notes::update, notes::remove,
        jobs::submit, jobs::status,
    ),
    modifiers(&BearerAuth),
    tags((name = "users"), (name = "notes"), (name = "jobs")),
)]
pub struct ApiDoc;

/// Settings of the reference app.
#[derive(Clone)]
pub struct AppConfig {
    /// How long a login token stays valid.
    pub session_ttl: Duration,
    /// Where background jobs go; without it, job routes answer 503.
    pub jobs: Option<tenant_router::jobs::JobQueue>,
    /// Argon2 behind its limit (shared with the apex login and the admin token check).
    pub passwords: std::sync::Arc<auth::PasswordLimiter>,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(86_400),
            jobs: None,
            passwords: std::sync::Arc::default(),
        }
    }
}

/// The tenant-scoped routes. Mount them behind a [`tenant_router::middleware::TenantLayer`].
pub fn router(config: AppConfig) -> Router {
    Router::new()
        .route("/api/register", post(users::register))
        .route("/api/login", post(users::login))
        .route("/api/notes", get(notes::list).post(notes::create))
        .route("/api/jobs", post(jobs::submit))
        .route("/api/jobs/{id}", get(jobs::status))
        .route(
            "/api/notes/{id}",
            get(notes::show).put(notes::update).delete(notes::remove),
        )
        // Shared: axum clones a route's state for every request.
        .with_state(std::sync::Arc::new(config))
}
