//! `demo`: its own PostgreSQL and Redis when none is configured, the demo tenants, the app
//! and a worker in one process.

use std::process::ExitCode;

use anyhow::Context as _;
use tenant_router::control::ControlDb;
use tenant_router::provision::{self, MigrationOutcome};
use tenant_router::tenant::Isolation;
use tenant_router::testing::{LocalPostgres, LocalRedis};
use tenant_router_server::admin_token::AdminTokenHash;
use tenant_router_server::config::Settings;
use tenant_router_server::server::{Application, shutdown_signal};

use super::tenants::import;

/// Where the demo keeps the admin token's hash.
const ADMIN_HASH_FILE: &str = "admin-token.hash";

/// The demo's admin token: made on first start (returned, to be printed once) with only its
/// hash kept in the data directory; later starts read the hash back. A configured hash wins.
fn demo_admin_token(settings: &mut Settings) -> anyhow::Result<Option<String>> {
    if settings.admin_token_hash.is_some() {
        return Ok(None);
    }
    let path = settings.data_dir.join(ADMIN_HASH_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        settings.admin_token_hash = Some(
            AdminTokenHash::parse(text.trim())
                .with_context(|| format!("{} (delete it to get a new token)", path.display()))?,
        );
        return Ok(None);
    }
    let (token, hash) = tenant_router_server::admin_token::generate();
    std::fs::create_dir_all(&settings.data_dir)?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(file, "{}", hash.as_str())?;
    }
    settings.admin_token_hash = Some(hash);
    Ok(Some(token))
}

pub(crate) async fn run(settings: &mut Settings) -> anyhow::Result<ExitCode> {
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
    let mut own_redis = None;
    if settings.redis_url.is_none() {
        let redis = LocalRedis::start_ephemeral().context("starting the demo's Redis")?;
        println!("started Redis on port {} (configuration bus)", redis.port());
        settings.redis_url = Some(redis.url());
        own_redis = Some(redis);
    }
    let new_token = demo_admin_token(settings)?;
    let control = ControlDb::connect_lazy(settings.require_database_url()?);
    control.migrate().await?;
    if import(settings, &settings.tenants_file.clone(), false).await? != ExitCode::SUCCESS {
        anyhow::bail!("importing the demo's tenants failed (see above)");
    }
    let tenants = control.load_tenants().await?;
    let dedicated: Vec<_> = tenants
        .iter()
        .filter(|t| t.isolation == Isolation::Dedicated)
        .cloned()
        .collect();
    let migrator = settings.tenant_migrations.load().await?;
    for (id, outcome) in provision::migrate_all(&dedicated, migrator, 4).await {
        if let MigrationOutcome::Failed(e) = outcome {
            anyhow::bail!("migrating tenant {id}: {e}");
        }
    }
    let app = Application::build(settings).await?;
    let addr = app.local_addr();
    println!("\ntenant-router demo is serving on http://{addr}");
    for t in &tenants {
        let hosts: Vec<&str> = t.hosts.iter().map(|h| h.as_str()).collect();
        let place = match t.isolation {
            Isolation::Dedicated => t.database.redacted(),
            Isolation::Shared => format!("shared: schema shared of {}", t.database.redacted()),
        };
        println!("  {} -> {} ({place})", hosts.join(", "), t.id);
    }
    println!(
        "\ntry:\n  curl -s -H 'Host: tenant-1.test.com' -H 'Content-Type: application/json' \\\n    \
         -d '{{\"username\":\"ada\",\"email\":\"ada@example.com\",\"password\":\"correct horse\"}}' \\\n    \
         http://{addr}/api/register\n\nCtrl-C stops the demo and everything it started."
    );
    println!("admin API on http://{}", app.admin_addr());
    match new_token {
        Some(token) => println!(
            "  admin token (shown this once; only its hash is kept in {}):\n    {token}",
            settings.data_dir.join(ADMIN_HASH_FILE).display()
        ),
        None => println!("  admin token: the one printed on the demo's first start"),
    }
    // One Ctrl-C stops the server and the in-process worker alike.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let worker_settings = settings.clone();
    let worker_stop = stopped(stop_rx.clone());
    let worker = tokio::spawn(async move {
        let kinds =
            tenant_router_server::reference_jobs::kinds_for(worker_settings.diagnostic_jobs);
        tenant_router_server::worker_service::run_worker(&worker_settings, kinds, worker_stop).await
    });
    println!(
        "  background jobs: a worker runs in this process (POST /api/jobs, /api/notes?async=true)"
    );
    app.run_until(stopped(stop_rx)).await?;
    match worker.await {
        Ok(Err(e)) => eprintln!("worker: {e:#}"),
        Err(e) => eprintln!("worker: {e}"),
        Ok(Ok(())) => {}
    }
    drop(own_redis);
    drop(own_postgres);
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}
