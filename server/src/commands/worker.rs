//! `worker`: background jobs, until a shutdown signal.

use std::process::ExitCode;

use tenant_router_server::config::Settings;
use tenant_router_server::server::shutdown_signal;

pub(crate) async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let kinds = tenant_router_server::reference_jobs::kinds_for(settings.diagnostic_jobs);
    tenant_router_server::worker_service::run_worker(settings, kinds, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
