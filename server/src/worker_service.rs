//! The worker process: its own registry kept current like an app server's, and a `Worker`.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::config::Settings;
use tenant_router::jobs::{JobKinds, JobQueue, Keys, Worker};
use tenant_router::registry::RegistryOptions;

/// Runs a worker for `kinds` until `shutdown` completes, then stops it gracefully (see
/// [`Worker::run`]). The tenant registry is the worker's own, fed by the same configuration
/// bus and reconcile as the app servers'.
pub async fn run_worker(
    settings: &Settings,
    kinds: JobKinds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let redis = settings.require_redis("the worker")?;
    // The worker resolves no hosts, so it needs no base domain.
    let tenants = settings
        .tenant_router()?
        .registry_options(RegistryOptions {
            base_domain: None,
            ..settings.registry_options()
        })
        .start()
        .await?;
    let sync = Arc::clone(tenants.sync());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    if let Some(addr) = settings.worker_metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the worker's metrics listener {addr}"))?;
        let router = metrics_router(settings.admin_token_hash.clone().map(Arc::new));
        let http = settings.http;
        let stop = stop_rx.clone();
        tokio::spawn(crate::listener::serve(listener, router, http, stop));
    }
    crate::telemetry::prometheus();
    let queue = JobQueue::new(&redis, Keys::default(), kinds)?;
    let worker = Worker::new(queue, sync, settings.worker.clone());
    tracing::info!(worker = worker.name(), limits = %worker_limits(&settings.worker), "starting");
    let result = worker.run(&redis, stop_rx).await;
    tenants.shutdown().await;
    result
}

/// `GET /metrics`: the worker's histograms (job run time, queue wait, pool waits,
/// propagation), behind the admin token, checked and rationed as on the admin listener
/// ([`crate::admin::AdminTokenGate`], with one argon2 run at a time).
fn metrics_router(hash: Option<Arc<crate::admin_token::AdminTokenHash>>) -> axum::Router {
    use axum::http::{Extensions, HeaderMap, header};
    use axum::response::IntoResponse;
    let gate = crate::admin::AdminTokenGate::new(
        hash,
        Arc::new(crate::app::auth::PasswordLimiter::new(1)),
    );
    let handler = move |extensions: Extensions, headers: HeaderMap| {
        let gate = gate.clone();
        async move {
            let client = crate::admin::client_address(&extensions);
            if let Err(e) = gate.check(&headers, client).await {
                return e.into_response();
            }
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                crate::telemetry::prometheus().render(),
            )
                .into_response()
        }
    };
    axum::Router::new().route("/metrics", axum::routing::get(handler))
}

fn worker_limits(options: &tenant_router::jobs::WorkerOptions) -> String {
    format!(
        "concurrency {} (per tenant {})",
        options.concurrency, options.per_tenant
    )
}
