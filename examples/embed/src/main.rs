//! tenant-router embedded in an axum app. `GET /whoami` on a tenant's host answers
//! `{"tenant": "<id>"}`; on a host no tenant claims, the layer answers a 404 problem.
//!
//! It reads the settings the `tenant-router` binary reads: `TENANT_ROUTER_DATABASE_URL`
//! (the control database), `TENANT_ROUTER_REDIS_URL` (optional: changes then arrive within
//! milliseconds), `TENANT_ROUTER_REDIS_CHANNEL`, `TENANT_ROUTER_BASE_DOMAIN` and
//! `TENANT_ROUTER_LISTEN` (default 127.0.0.1:3000).

use anyhow::Context as _;
use axum::{Json, Router, routing::get};
use serde_json::{Value, json};
use tenant_router::TenantRouter;
use tenant_router::middleware::CurrentTenant;
use tenant_router::tenant::DatabaseUrl;

async fn whoami(tenant: CurrentTenant) -> Json<Value> {
    Json(json!({ "tenant": tenant.id() }))
}

fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let control = setting("TENANT_ROUTER_DATABASE_URL")
        .context("set TENANT_ROUTER_DATABASE_URL to the control database")?;
    let mut builder = TenantRouter::builder(DatabaseUrl::parse(&control)?);
    if let Some(url) = setting("TENANT_ROUTER_REDIS_URL") {
        builder = builder.redis(url);
    }
    if let Some(channel) = setting("TENANT_ROUTER_REDIS_CHANNEL") {
        builder = builder.channel(channel);
    }
    if let Some(domain) = setting("TENANT_ROUTER_BASE_DOMAIN") {
        builder = builder.base_domain(domain);
    }
    // Keeps the registry current until `shutdown` (dropping it would not stop that).
    let router = builder.start().await?;

    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(router.layer())
        // Routes that are not a tenant's go outside the layer.
        .merge(Router::new().route("/healthz", get(|| async { "ok" })));

    let listen = setting("TENANT_ROUTER_LISTEN").unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    router.shutdown().await;
    Ok(())
}
