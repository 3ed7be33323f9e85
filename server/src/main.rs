//! `tenant-router`: the app server, the demo and the operator commands, over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tenant_router::control::ControlDb;
use tenant_router::operations::{
    NewTenantRequest, OpError, PoolRequest, TenantOps, TenantPatchRequest,
};
use tenant_router::problem::FieldError;
use tenant_router::provision::{self, MigrationOutcome};
use tenant_router::shared::SharedDb;
use tenant_router::tenant::{Isolation, RateLimit, TenantId};
use tenant_router::testing::{LocalPostgres, LocalRedis};
use tenant_router_server::admin::TenantView;
use tenant_router_server::admin_token::AdminTokenHash;
use tenant_router_server::config::{Settings, SettingsArgs};
use tenant_router_server::server::{Application, shutdown_signal};
use tenant_router_server::tenants_file::{self, ImportOutcome, TenantsFile};

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

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs that used up their attempts.
    #[command(subcommand)]
    Dead(LettersCommand),
    /// Jobs that did not run because of their tenant.
    #[command(subcommand)]
    Parked(LettersCommand),
}

#[derive(Subcommand)]
enum LettersCommand {
    /// List them, oldest first (JSON lines).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Queue one again for its own tenant, with fresh attempts.
    Retry {
        /// The job's id.
        job_id: String,
    },
    /// Delete one, or all of a tenant's.
    Purge {
        /// The job's id.
        job_id: Option<String>,
        /// Every one of this tenant's.
        #[arg(long, conflicts_with = "job_id")]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// Import a declarative tenants file; importing the same file twice changes nothing.
    Import {
        /// The file [default: the configured tenants file].
        #[arg(long)]
        file: Option<PathBuf>,
        /// Make existing tenants look like the file (state, hosts, pool, rate limit). Without it they
        /// are only compared, and differences reported. Isolation is never flipped: use
        /// `move`.
        #[arg(long)]
        force: bool,
    },
    /// List tenants (database passwords are masked).
    List,
    /// Add a tenant. Without --database, its database is created and migrated first.
    Add {
        /// The tenant's id: a-z, 0-9 and '-'.
        id: String,
        /// A host name it answers on (repeat for more).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// An existing database URL instead of provisioning one.
        #[arg(long)]
        database: Option<String>,
        #[command(flatten)]
        pool: PoolArgs,
        #[command(flatten)]
        rate: RateLimitArgs,
        /// active or suspended [default: active].
        #[arg(long)]
        state: Option<String>,
        /// dedicated (its own database) or shared (the shared database) [default: dedicated].
        #[arg(long)]
        isolation: Option<String>,
        /// Take over data already there: what a removal of this id kept, or an existing
        /// tenant_<id> database.
        #[arg(long)]
        adopt: bool,
    },
    /// Change a tenant; what is not given is left alone.
    Update {
        /// The tenant's id.
        id: String,
        /// Replace the hosts with these (repeat for more).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Move it to this database (no data is copied).
        #[arg(long)]
        database: Option<String>,
        #[command(flatten)]
        pool: PoolArgs,
        #[command(flatten)]
        rate: RateLimitArgs,
        /// active or suspended.
        #[arg(long)]
        state: Option<String>,
        /// Refuse unless the tenant is at this version.
        #[arg(long)]
        if_match: Option<i64>,
    },
    /// Move a tenant to its own database or to the shared one: rows copied and counted,
    /// configuration switched in one version bump, then the source rows deleted.
    Move {
        /// The tenant's id.
        id: String,
        /// dedicated or shared.
        #[arg(long)]
        to: String,
    },
    /// Give a shared tenant a shard of its own (Citus `isolate_tenant_to_new_shard`).
    Isolate {
        /// The tenant's id.
        id: String,
    },
    /// Remove a tenant. Without --drop-database its data (database or shared rows, Redis
    /// keys, jobs, files) is kept, and the id cannot be created again until that data is
    /// adopted (`add --adopt`) or discarded (`purge`).
    Remove {
        /// The tenant's id.
        id: String,
        /// Delete everything of it: its database (if tenant-router created it) or shared
        /// rows, its Redis keys and jobs, its files.
        #[arg(long, alias = "purge")]
        drop_database: bool,
    },
    /// Delete what the removal of a tenant kept (see `remove`).
    Purge {
        /// The removed tenant's id.
        id: String,
    },
    /// List what removals kept.
    Leftovers,
    /// List operations that did not finish: running, or interrupted (their process died).
    Doctor,
    /// Complete an interrupted move or removal of a tenant, or roll back an interrupted
    /// create.
    Repair {
        /// The tenant's id.
        id: String,
    },
}

#[derive(clap::Args)]
struct PoolArgs {
    /// Most connections of the tenant's pool.
    #[arg(long)]
    max_connections: Option<u32>,
    /// Seconds an idle connection is kept.
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// Milliseconds a statement may run (0: the router's default).
    #[arg(long)]
    statement_timeout_ms: Option<u32>,
    /// Milliseconds a transaction may sit idle (0: the router's default).
    #[arg(long)]
    idle_in_transaction_timeout_ms: Option<u32>,
}

#[derive(clap::Args)]
struct RateLimitArgs {
    /// Requests per second the tenant may make (on update, 0: the router's default).
    #[arg(long)]
    rate_limit_rps: Option<u32>,
    /// Requests at once above that rate [default: the rate].
    #[arg(long)]
    rate_limit_burst: Option<u32>,
}

impl RateLimitArgs {
    /// `None`: not given; `Some(None)`: back to the default; `Some(Some(_))`: this limit.
    fn request(&self) -> Option<Option<RateLimit>> {
        self.rate_limit_rps.map(|rps| {
            (rps > 0).then(|| RateLimit {
                requests_per_second: rps,
                burst: self.rate_limit_burst.unwrap_or(rps),
            })
        })
    }
}

impl PoolArgs {
    fn request(&self) -> Option<PoolRequest> {
        // 0 on the command line clears an override, as `null` does in the API.
        let clearable = |v: Option<u32>| v.map(|ms| (ms > 0).then_some(ms));
        let any = self.max_connections.is_some()
            || self.idle_timeout_secs.is_some()
            || self.statement_timeout_ms.is_some()
            || self.idle_in_transaction_timeout_ms.is_some();
        any.then_some(PoolRequest {
            max_connections: self.max_connections,
            idle_timeout_secs: self.idle_timeout_secs,
            statement_timeout_ms: clearable(self.statement_timeout_ms),
            idle_in_transaction_timeout_ms: clearable(self.idle_in_transaction_timeout_ms),
        })
    }
}

fn main() -> ExitCode {
    tenant_router_server::process::init_tracing();
    let cli = Cli::parse();
    tenant_router_server::process::run(run(cli))
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
        Command::Worker => {
            let kinds = tenant_router_server::reference_jobs::kinds_for(settings.diagnostic_jobs);
            tenant_router_server::worker_service::run_worker(&settings, kinds, shutdown_signal())
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::AdminToken => {
            let (token, hash) = tenant_router_server::admin_token::generate();
            println!("token: {token}");
            println!("TENANT_ROUTER_ADMIN_TOKEN_HASH='{}'", hash.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { jobs } => migrate(&settings, jobs).await,
        Command::Tenants(TenantsCommand::Import { file, force }) => {
            let path = file.unwrap_or_else(|| settings.tenants_file.clone());
            import(&settings, &path, force).await
        }
        Command::Tenants(TenantsCommand::Add {
            id,
            hosts,
            database,
            pool,
            state,
            isolation,
            adopt,
            rate,
        }) => {
            let request = NewTenantRequest {
                id: Some(id),
                hosts: Some(hosts),
                database,
                pool: pool.request(),
                state,
                isolation,
                adopt: Some(adopt),
                rate_limit: rate.request().flatten(),
            };
            let new = match request.validate() {
                Ok(new) => new,
                Err(errors) => return Ok(invalid(&errors)),
            };
            let result = operations(&settings).await?.create(new).await;
            report(result.map(|t| TenantView::from(&t)))
        }
        Command::Tenants(TenantsCommand::Update {
            id,
            hosts,
            database,
            pool,
            state,
            if_match,
            rate,
        }) => {
            let id = match parse_id(id) {
                Ok(id) => id,
                Err(e) => return report::<TenantView>(Err(e)),
            };
            let patch = TenantPatchRequest {
                hosts: (!hosts.is_empty()).then_some(hosts),
                database,
                pool: pool.request(),
                state,
                rate_limit: rate.request(),
            };
            let result = operations(&settings)
                .await?
                .update(&id, patch, if_match)
                .await;
            report(result.map(|t| TenantView::from(&t)))
        }
        Command::Tenants(TenantsCommand::Move { id, to }) => {
            let id = match parse_id(id) {
                Ok(id) => id,
                Err(e) => return report::<TenantView>(Err(e)),
            };
            let to = match to.parse::<Isolation>() {
                Ok(to) => to,
                Err(e) => return Ok(invalid(&[FieldError::new("--to", e.0)])),
            };
            let result = operations(&settings).await?.move_tenant(&id, to).await;
            report(result)
        }
        Command::Tenants(TenantsCommand::Isolate { id }) => {
            let control = ControlDb::connect_lazy(settings.require_database_url()?);
            let found = match TenantId::parse(&id) {
                Ok(parsed) => control.get_tenant(&parsed).await?,
                Err(_) => None,
            };
            let Some(tenant) = found else {
                return report::<TenantView>(Err(OpError::NotFound(id)));
            };
            if tenant.isolation != Isolation::Shared {
                eprintln!(
                    "error: tenant '{id}' has a database of its own; only shared tenants have shards"
                );
                return Ok(ExitCode::from(2));
            }
            let url = settings
                .shared_database()
                .context("no shared database is configured")?;
            let lock = match control.lock_tenant(&tenant.id).await {
                Ok(lock) => lock,
                Err(e) => return report::<TenantView>(Err(OpError::from(e))),
            };
            let shard = SharedDb::connect_lazy(&url).isolate(&tenant.id).await;
            lock.finish("").await;
            let shard = shard?;
            println!(
                "{}",
                serde_json::json!({ "tenant": tenant.id, "shard": shard })
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenants(TenantsCommand::Remove { id, drop_database }) => {
            let id = match parse_id(id) {
                Ok(id) => id,
                Err(e) => return report::<TenantView>(Err(e)),
            };
            let result = operations(&settings)
                .await?
                .remove(&id, drop_database)
                .await;
            report(result)
        }
        Command::Tenants(TenantsCommand::Purge { id }) => {
            let id = match parse_id(id) {
                Ok(id) => id,
                Err(e) => return report::<TenantView>(Err(e)),
            };
            let result = operations(&settings).await?.discard_leftover(&id).await;
            report(result)
        }
        Command::Tenants(TenantsCommand::Leftovers) => {
            let ops = operations(&settings).await?;
            for l in ops.control().leftovers().await? {
                println!(
                    "{}\tincarnation {}\t{}\tremoved at v{}\t{}",
                    l.tenant_id,
                    l.incarnation,
                    l.isolation.as_str(),
                    l.removed_version,
                    l.database.redacted()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenants(TenantsCommand::Doctor) => {
            let ops = operations(&settings).await?;
            let open = ops.control().unfinished_operations().await?;
            if open.is_empty() {
                println!("no unfinished operations");
            }
            let mut interrupted = 0;
            for (op, running) in &open {
                if !running {
                    interrupted += 1;
                }
                println!(
                    "{}\t{}\t{}\tstep {}\tsince {}{}",
                    op.tenant_id,
                    if *running { "running" } else { "INTERRUPTED" },
                    op.kind,
                    op.step,
                    op.started_at,
                    if *running {
                        String::new()
                    } else {
                        format!("\t(tenant-router tenants repair {})", op.tenant_id)
                    }
                );
            }
            Ok(if interrupted > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Tenants(TenantsCommand::Repair { id }) => {
            let id = match parse_id(id) {
                Ok(id) => id,
                Err(e) => return report::<TenantView>(Err(e)),
            };
            let result = operations(&settings).await?.repair(&id).await;
            report(result)
        }
        Command::Jobs(command) => jobs_command(&settings, command).await,
        Command::Tenants(TenantsCommand::List) => {
            let control = ControlDb::connect_lazy(settings.require_database_url()?);
            for t in control.load_tenants().await? {
                let hosts: Vec<&str> = t.hosts.iter().map(|h| h.as_str()).collect();
                println!(
                    "{}\t{}\t{}\tv{}\t{}\t{}",
                    t.id,
                    t.state.as_str(),
                    t.isolation.as_str(),
                    t.version,
                    hosts.join(","),
                    t.database.redacted()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn jobs_command(settings: &Settings, command: JobsCommand) -> anyhow::Result<ExitCode> {
    use tenant_router::jobs::{JobQueue, Keys, Letters};
    let url = settings
        .redis_url
        .as_deref()
        .context("jobs live in Redis: set TENANT_ROUTER_REDIS_URL")?;
    let queue = JobQueue::new(
        url,
        Keys::default(),
        tenant_router_server::reference_jobs::kinds_for(true),
    )?;
    let (which, command) = match command {
        JobsCommand::Dead(c) => (Letters::Dead, c),
        JobsCommand::Parked(c) => (Letters::Parked, c),
    };
    let tenant = |raw: Option<String>| -> Result<Option<TenantId>, ExitCode> {
        raw.map(|t| TenantId::parse(&t))
            .transpose()
            .map_err(|e| invalid(&[FieldError::new("--tenant", e.0)]))
    };
    match command {
        LettersCommand::List { tenant: t, limit } => {
            let t = match tenant(t) {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            if !(1..=1000).contains(&limit) {
                return Ok(invalid(&[FieldError::new("--limit", "must be 1 to 1000")]));
            }
            let (letters, _) = queue.letters(which, t.as_ref(), None, limit).await?;
            for l in letters {
                println!("{}", serde_json::to_string(&l)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        LettersCommand::Retry { job_id } => match queue.retry_letter(which, &job_id).await? {
            Some(l) => {
                println!("{}", serde_json::json!({ "retried": l }));
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error: no such job '{job_id}'");
                Ok(ExitCode::from(2))
            }
        },
        LettersCommand::Purge { job_id, tenant: t } => {
            let t = match tenant(t) {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            if job_id.is_none() && t.is_none() {
                return Ok(invalid(&[FieldError::new(
                    "job_id",
                    "give a job id or --tenant",
                )]));
            }
            let n = queue
                .delete_letters(which, job_id.as_deref(), t.as_ref())
                .await?;
            println!("{}", serde_json::json!({ "deleted": n }));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Tenant operations for a CLI command: the control database (migrated), and hints on the
/// bus when Redis is configured, so running servers apply the change at once.
async fn operations(settings: &Settings) -> anyhow::Result<TenantOps> {
    let control = ControlDb::connect_lazy(settings.require_database_url()?);
    control.migrate().await?;
    settings.tenant_ops(control)
}

/// An id as the commands take it: one that cannot be a tenant's is simply not found.
fn parse_id(raw: String) -> Result<TenantId, OpError> {
    TenantId::parse(&raw).map_err(|_| OpError::NotFound(raw))
}

fn invalid(errors: &[FieldError]) -> ExitCode {
    eprintln!("error: invalid input");
    for e in errors {
        eprintln!("  {}: {}", e.field, e.message);
    }
    ExitCode::from(2)
}

/// Prints the result as JSON on stdout, or the error on stderr. Exit status 2 for a
/// mistake in the input (the HTTP API's 4xx), 1 for anything else.
fn report<T: serde::Serialize>(result: Result<T, OpError>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(value) => {
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(OpError::Invalid(errors)) => Ok(invalid(&errors)),
        Err(e @ (OpError::NotFound(_) | OpError::Conflict(_) | OpError::Stale { .. })) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(anyhow::Error::from(e)),
    }
}

async fn import(
    settings: &Settings,
    path: &std::path::Path,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let file = TenantsFile::load(path)?;
    let ops = operations(settings).await?;
    let lines = tenants_file::import(&ops, &file, force).await?;
    let mut refused = 0;
    for line in &lines {
        match &line.outcome {
            ImportOutcome::Created => println!("{}: created", line.id),
            ImportOutcome::Unchanged => println!("{}: unchanged", line.id),
            ImportOutcome::Updated(what) => {
                println!("{}: updated: {}", line.id, what.join("; "))
            }
            ImportOutcome::Drift(what) => {
                println!(
                    "{}: differs from the file, left alone (--force applies it): {}",
                    line.id,
                    what.join("; ")
                )
            }
            ImportOutcome::Refused(why) => {
                refused += 1;
                eprintln!("{}: refused: {why}", line.id)
            }
        }
    }
    Ok(if refused > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn migrate(settings: &Settings, jobs: usize) -> anyhow::Result<ExitCode> {
    let control = ControlDb::connect_lazy(settings.require_database_url()?);
    control.migrate().await?;
    println!("control database: migrated");
    let (tenants, shared): (Vec<_>, Vec<_>) = control
        .load_tenants()
        .await?
        .into_iter()
        .partition(|t| t.isolation == Isolation::Dedicated);
    if !shared.is_empty() {
        let url = settings
            .shared_database()
            .context("shared tenants exist, but no shared database is configured")?;
        let prepared = SharedDb::connect_lazy(&url).prepare().await?;
        println!(
            "shared database ({} shared tenants): migrated{}",
            shared.len(),
            if prepared.citus { ", on Citus" } else { "" }
        );
    }
    let migrator = settings.tenant_migrations.load().await?;
    let total = tenants.len();
    let started = std::time::Instant::now();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = std::time::Instant::now();
    let (mut ok, mut bad) = (0, 0);
    let outcomes =
        provision::migrate_all_with_progress(&tenants, migrator, jobs, |done, outcome| {
            if matches!(outcome, MigrationOutcome::Failed(_)) {
                bad += 1;
            } else {
                ok += 1;
            }
            if terminal {
                // A bar on a terminal, redrawn in place.
                let width = 30;
                let filled = done * width / total.max(1);
                eprint!(
                    "\r[{}{}] {done}/{total} ({bad} failed)",
                    "#".repeat(filled),
                    ".".repeat(width - filled)
                );
                if done == total {
                    eprintln!();
                }
            } else if done == total || last_line.elapsed() >= std::time::Duration::from_secs(2) {
                // Periodic lines otherwise (logs, CI).
                last_line = std::time::Instant::now();
                eprintln!(
                    "progress: {done}/{total} tenants ({ok} ok, {bad} failed, {:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
        })
        .await;
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
