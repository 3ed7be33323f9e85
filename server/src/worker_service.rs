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
/// propagation), behind the admin token.
fn metrics_router(hash: Option<Arc<crate::admin_token::AdminTokenHash>>) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use sha2::Digest as _;
    // The digest of the last token argon2 accepted, and one argon2 check at a time.
    let verified = Arc::new(std::sync::Mutex::new(None::<[u8; 32]>));
    let one_check = Arc::new(tokio::sync::Semaphore::new(1));
    let handler = move |headers: axum::http::HeaderMap| {
        let (hash, verified, one_check) = (hash.clone(), verified.clone(), one_check.clone());
        async move {
            let token = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string);
            let (Some(token), Some(hash)) = (token, hash) else {
                return tenant_router::problem::problem_response(
                    StatusCode::UNAUTHORIZED,
                    "a valid admin token is required",
                );
            };
            let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
            let known = *verified.lock().unwrap_or_else(|e| e.into_inner()) == Some(digest);
            let valid = known || {
                let _one = one_check.acquire().await;
                tokio::task::spawn_blocking(move || hash.verify(&token))
                    .await
                    .unwrap_or(false)
            };
            if !valid {
                return tenant_router::problem::problem_response(
                    StatusCode::UNAUTHORIZED,
                    "a valid admin token is required",
                );
            }
            *verified.lock().unwrap_or_else(|e| e.into_inner()) = Some(digest);
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
