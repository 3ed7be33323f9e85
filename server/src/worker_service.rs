//! The worker process: its own registry kept current like an app server's, and a `Worker`.

use std::future::Future;
use std::sync::Arc;

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
    let queue = JobQueue::new(&redis, Keys::default(), kinds)?;
    let worker = Worker::new(queue, sync, settings.worker.clone());
    tracing::info!(worker = worker.name(), limits = %worker_limits(&settings.worker), "starting");
    let result = worker.run(&redis, stop_rx).await;
    tenants.shutdown().await;
    result
}

fn worker_limits(options: &tenant_router::jobs::WorkerOptions) -> String {
    format!(
        "concurrency {} (per tenant {})",
        options.concurrency, options.per_tenant
    )
}
