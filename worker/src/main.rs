//! `tenant-router-worker`: runs background jobs, each in its own tenant's context. Settings
//! are the router's (`tenant-config/router.toml`, `TENANT_ROUTER_*`, flags); it needs the
//! control database and Redis. An app with its own job kinds builds its own binary like this
//! one, passing its `JobKinds` to `run_worker`.

use std::process::ExitCode;

use clap::Parser;
use tenant_router_server::config::{Settings, SettingsArgs};
use tenant_router_server::reference_jobs as reference;
use tenant_router_server::server::shutdown_signal;
use tenant_router_server::worker_service::run_worker;

/// Run tenant-router background jobs until SIGTERM or Ctrl-C.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
}

fn main() -> ExitCode {
    if let Err(code) = tenant_router_server::process::init_tracing() {
        return code;
    }
    let cli = Cli::parse();
    tenant_router_server::process::run(async {
        let settings = Settings::load(&cli.settings)?;
        let kinds = reference::kinds_for(settings.diagnostic_jobs);
        run_worker(&settings, kinds, shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}
