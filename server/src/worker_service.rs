//! The worker process: its own registry kept current like an app server's, and a `Worker`.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::config::Settings;
use tenant_router::control::ControlDb;
use tenant_router::jobs::{JobKinds, JobQueue, Keys, Worker};
use tenant_router::registry::{Registry, RegistryOptions};
use tenant_router::sync::ConfigSync;

/// Runs a worker for `kinds` until `shutdown` completes, then stops it gracefully (see
/// [`Worker::run`]). The tenant registry is the worker's own, fed by the same configuration
/// bus and reconcile as the app servers'.
pub async fn run_worker(
    settings: &Settings,
    kinds: JobKinds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let redis_url = settings
        .redis_url
        .clone()
        .context("the worker needs Redis: set TENANT_ROUTER_REDIS_URL")?;
    let control = ControlDb::connect_lazy(settings.require_database_url()?);
    control.migrate().await?;
    let registry = Arc::new(Registry::new(RegistryOptions {
        base_domain: None,
        acquire_timeout: settings.acquire_timeout,
        shared_database: settings.shared_database(),
        max_total_connections: settings.max_total_connections,
        connection_limits: settings.connection_limits,
        default_rate_limit: settings.default_rate_limit,
    }));
    let sync = Arc::new(ConfigSync::new(registry, control));
    sync.full_load().await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let sync_task = tokio::spawn(Arc::clone(&sync).run(
        settings.bus(),
        settings.reconcile_interval,
        stop_rx.clone(),
    ));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let queue = JobQueue::new(&redis_url, Keys::default(), kinds)?;
    let worker = Worker::new(queue, sync, settings.worker.clone());
    tracing::info!(worker = worker.name(), limits = %worker_limits(&settings.worker), "starting");
    let result = worker.run(&redis_url, stop_rx).await;
    sync_task.abort();
    result
}

fn worker_limits(options: &tenant_router::jobs::WorkerOptions) -> String {
    format!(
        "concurrency {} (per tenant {})",
        options.concurrency, options.per_tenant
    )
}
