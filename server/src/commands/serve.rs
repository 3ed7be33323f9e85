//! `serve`: the app and the admin API, until a shutdown signal.

use std::process::ExitCode;

use tenant_router_server::config::Settings;
use tenant_router_server::server::{Application, shutdown_signal};

pub(crate) async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let app = Application::build(settings).await?;
    tracing::info!(listen = %app.local_addr(), tenants = app.registry().snapshot().len(), "serving");
    app.run_until(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
