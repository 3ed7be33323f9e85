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
/// propagation), behind the admin token. Token checks are rationed as on the admin
/// listener: each address gets [`crate::admin::TokenChecks::BURST`] at once, then one a
/// second (429), its checks run one at a time, and one argon2 runs at once, waited for at
/// most two seconds (503): a flood of wrong tokens cannot queue the real scrape behind it.
fn metrics_router(hash: Option<Arc<crate::admin_token::AdminTokenHash>>) -> axum::Router {
    use axum::extract::ConnectInfo;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use sha2::Digest as _;
    use tenant_router::problem::ApiError;

    // The digest of the last token argon2 accepted.
    let verified = Arc::new(std::sync::Mutex::new(None::<[u8; 32]>));
    let checks = Arc::new(crate::admin::TokenChecks::default());
    let one_argon2 = Arc::new(tokio::sync::Semaphore::new(1));
    let handler = move |peer: Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>,
                        headers: HeaderMap| {
        let (hash, verified, checks, one_argon2) = (
            hash.clone(),
            verified.clone(),
            checks.clone(),
            one_argon2.clone(),
        );
        async move {
            let token = crate::app::auth::bearer_token(&headers).map(str::to_string);
            let (Some(token), Some(hash)) = (token, hash) else {
                return ApiError::Unauthorized.into_response();
            };
            let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
            let known = || *verified.lock().unwrap_or_else(|e| e.into_inner()) == Some(digest);
            let valid = known() || {
                let client = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.0.ip());
                if let Err(wait) = checks.take(client) {
                    return ApiError::TooManyRequests {
                        detail: "too many admin token checks from this address; retry later".into(),
                        retry_after: wait,
                    }
                    .into_response();
                }
                let lock = checks.lock_for(client);
                let _one = lock.lock().await;
                let permit = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    one_argon2.acquire_owned(),
                )
                .await;
                let Ok(Ok(_permit)) = permit else {
                    return ApiError::Client(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "token checks are busy; retry later".into(),
                    )
                    .into_response();
                };
                known()
                    || tokio::task::spawn_blocking(move || hash.verify(&token))
                        .await
                        .unwrap_or(false)
            };
            if !valid {
                return ApiError::Unauthorized.into_response();
            }
            *verified.lock().unwrap_or_else(|e| e.into_inner()) = Some(digest);
            let response: Response = (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                crate::telemetry::prometheus().render(),
            )
                .into_response();
            response
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
