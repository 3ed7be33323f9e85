//! `tenant-router`: the app server, the demo and the operator commands, over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tenant_router_server::config::{Settings, SettingsArgs};

mod commands;

use commands::jobs::JobsCommand;
use commands::tenants::TenantsCommand;

/// Database-per-tenant router: a request's Host header picks the tenant's own database.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve tenants from the configured control database.
    Serve,
    /// Bring up a demo with its own PostgreSQL: tenant-1.test.com and tenant-2.test.com.
    Demo,
    /// Run background jobs (the same as the `tenant-router-worker` binary).
    Worker,
    /// Migrate the control database, then every tenant's database.
    Migrate {
        /// How many tenants to migrate at once.
        #[arg(long, default_value_t = 8)]
        jobs: usize,
    },
    /// Print a fresh admin API token and the argon2 hash to configure
    /// (TENANT_ROUTER_ADMIN_TOKEN_HASH). Only the hash should be stored.
    AdminToken,
    /// Manage tenants in the control database.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Dead-lettered and parked jobs: list, retry, purge.
    #[command(subcommand)]
    Jobs(JobsCommand),
}

fn main() -> ExitCode {
    if let Err(code) = tenant_router_server::process::init_tracing() {
        return code;
    }
    let cli = Cli::parse();
    tenant_router_server::process::run(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::load(&cli.settings)?;
    match cli.command {
        Command::Serve => commands::serve::run(&settings).await,
        Command::Demo => commands::demo::run(&mut settings).await,
        Command::Worker => commands::worker::run(&settings).await,
        Command::AdminToken => commands::admin_token::run(),
        Command::Migrate { jobs } => commands::migrate::run(&settings, jobs).await,
        Command::Tenants(command) => commands::tenants::run(&settings, command).await,
        Command::Jobs(command) => commands::jobs::run(&settings, command).await,
    }
}
