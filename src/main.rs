//! `tenant-router`: the app server, the demo and the operator commands, over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tenant_router::config::{Settings, SettingsArgs};
use tenant_router::control::ControlDb;
use tenant_router::local::LocalPostgres;
use tenant_router::provision::{self, MigrationOutcome};
use tenant_router::server::{Application, shutdown_signal};
use tenant_router::tenants_file::{self, TenantsFile};

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
    /// Migrate the control database, then every tenant's database.
    Migrate {
        /// How many tenants to migrate at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Print a fresh admin API token and the argon2 hash to configure
    /// (TENANT_ROUTER_ADMIN_TOKEN_HASH). Only the hash should be stored.
    AdminToken,
    /// Manage tenants in the control database.
    #[command(subcommand)]
    Tenants(TenantsCommand),
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// Import a declarative tenants file; importing the same file twice changes nothing.
    Import {
        /// The file [default: the configured tenants file].
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List tenants (database passwords are masked).
    List,
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TENANT_ROUTER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::load(&cli.settings)?;
    match cli.command {
        Command::Serve => {
            let app = Application::build(&settings).await?;
            tracing::info!(listen = %app.local_addr(), tenants = app.registry().snapshot().len(), "serving");
            app.run_until(shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => demo(&mut settings).await,
        Command::AdminToken => {
            let (token, hash) = tenant_router::admin_token::generate();
            println!("token: {token}");
            println!("TENANT_ROUTER_ADMIN_TOKEN_HASH='{}'", hash.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { jobs } => migrate(&settings, jobs).await,
        Command::Tenants(TenantsCommand::Import { file }) => {
            let control = ControlDb::connect_lazy(settings.require_database_url()?);
            control.migrate().await?;
            let path = file.unwrap_or_else(|| settings.tenants_file.clone());
            import(&control, &settings, &path).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenants(TenantsCommand::List) => {
            let control = ControlDb::connect_lazy(settings.require_database_url()?);
            for t in control.load_tenants().await? {
                let hosts: Vec<&str> = t.hosts.iter().map(|h| h.as_str()).collect();
                println!(
                    "{}\t{}\tv{}\t{}\t{}",
                    t.id,
                    t.state.as_str(),
                    t.version,
                    hosts.join(","),
                    t.database.redacted()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn import(
    control: &ControlDb,
    settings: &Settings,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let file = TenantsFile::load(path)?;
    let server = settings.provision_server()?;
    for line in tenants_file::import(control, &server, &file).await? {
        println!("{}: {:?}", line.id, line.outcome);
    }
    Ok(())
}

async fn migrate(settings: &Settings, jobs: usize) -> anyhow::Result<ExitCode> {
    let control = ControlDb::connect_lazy(settings.require_database_url()?);
    control.migrate().await?;
    println!("control database: migrated");
    let tenants = control.load_tenants().await?;
    let outcomes = provision::migrate_all(&tenants, jobs).await;
    let (mut migrated, mut current, mut failed) = (0, 0, Vec::new());
    for (id, outcome) in &outcomes {
        match outcome {
            MigrationOutcome::Migrated(n) => {
                migrated += 1;
                println!("{id}: migrated ({n} applied)");
            }
            MigrationOutcome::Current => {
                current += 1;
                println!("{id}: already current");
            }
            MigrationOutcome::Failed(e) => {
                failed.push(id.to_string());
                println!("{id}: FAILED: {e}");
            }
        }
    }
    println!(
        "summary: {migrated} migrated, {current} already current, {} failed{}",
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        }
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn demo(settings: &mut Settings) -> anyhow::Result<ExitCode> {
    // Kept alive until the end of the demo; dropping it stops the server.
    let mut own_postgres = None;
    if settings.database_url.is_none() {
        let dir = settings.data_dir.join("postgres");
        println!("starting PostgreSQL in {} ...", dir.display());
        let pg = LocalPostgres::open(&dir)
            .await
            .context("starting the demo's PostgreSQL")?;
        settings.database_url = Some(pg.create_database("tenant_router").await?);
        own_postgres = Some(pg);
    }
    let control = ControlDb::connect_lazy(settings.require_database_url()?);
    control.migrate().await?;
    import(&control, settings, &settings.tenants_file.clone()).await?;
    let tenants = control.load_tenants().await?;
    for (id, outcome) in provision::migrate_all(&tenants, 4).await {
        if let MigrationOutcome::Failed(e) = outcome {
            anyhow::bail!("migrating tenant {id}: {e}");
        }
    }
    let app = Application::build(settings).await?;
    let addr = app.local_addr();
    println!("\ntenant-router demo is serving on http://{addr}");
    for t in &tenants {
        let hosts: Vec<&str> = t.hosts.iter().map(|h| h.as_str()).collect();
        println!(
            "  {} -> {} ({})",
            hosts.join(", "),
            t.id,
            t.database.redacted()
        );
    }
    println!(
        "\ntry:\n  curl -s -H 'Host: tenant-1.test.com' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"username\":\"ada\",\"email\":\"ada@example.com\",\"password\":\"correct horse\"}}' \\\n    \
         http://{addr}/api/register\n\nCtrl-C stops the demo and everything it started."
    );
    app.run_until(shutdown_signal()).await?;
    drop(own_postgres);
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}
