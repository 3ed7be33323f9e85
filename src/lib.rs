//! # tenant-router
//!
//! Database-per-tenant routing for axum. A request's `Host` resolves to a tenant in an
//! `arc-swap`ped [`registry::Registry`]; [`middleware::TenantLayer`] hands the handler a
//! [`middleware::CurrentTenant`] carrying that tenant's own pool, and nothing else: its
//! [`CurrentTenant::db`](middleware::CurrentTenant::db) hands out connections (within the
//! registry's global connection budget) and the `tenant_id` scope every query binds.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use tenant_router::middleware::{CurrentTenant, TenantLayer};
//! use tenant_router::problem::ApiError;
//! use tenant_router::registry::{Registry, RegistryOptions};
//!
//! async fn count(tenant: CurrentTenant) -> Result<String, ApiError> {
//!     let db = tenant.db();
//!     let mut conn = db.conn().await?;
//!     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE tenant_id = $1")
//!         .bind(db.scope())
//!         .fetch_one(&mut *conn)
//!         .await?;
//!     Ok(format!("{}: {n}", tenant.id()))
//! }
//!
//! let registry = Arc::new(Registry::new(RegistryOptions::default()));
//! let app: Router = Router::new()
//!     .route("/count", get(count))
//!     .layer(TenantLayer::new(registry));
//! ```

pub mod bus;
pub mod control;
pub mod host;
#[cfg(feature = "jobs")]
pub mod jobs;
pub mod journal;
pub mod middleware;
pub mod moving;
pub mod namespace;
pub mod operations;
pub mod pool;
pub mod problem;
pub mod provision;
pub mod redis_endpoint;
pub mod registry;
pub mod router;
pub mod schema;
pub mod shared;
pub mod sync;
pub mod telemetry;
pub mod tenant;
#[cfg(feature = "testing")]
pub mod testing;

pub use redis_endpoint::RedisEndpoint;
pub use router::{Builder, TenantRouter};
