//! Settings: `tenant-config/router.toml`, each value overridable by a `TENANT_ROUTER_*`
//! environment variable or a command-line flag (flag beats environment beats file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tenant_router::control::ControlDb;
use tenant_router::operations::TenantOps;

use anyhow::Context as _;
use serde::Deserialize;

use crate::admin_token::AdminTokenHash;
use tenant_router::tenant::DatabaseUrl;

/// Where the settings file is looked for when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "tenant-config/router.toml";

/// Settings given on the command line or in the environment. Every field is optional: what is
/// not given here comes from the file, then from the defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingsArgs {
    /// Settings file [default: tenant-config/router.toml when it exists].
    #[arg(long, env = "TENANT_ROUTER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address of the tenant-facing HTTP listener [default: 127.0.0.1:9500].
    #[arg(long, env = "TENANT_ROUTER_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,
    /// Address of the admin listener [default: 127.0.0.1:9501].
    #[arg(long, env = "TENANT_ROUTER_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<SocketAddr>,
    /// URL of the control database, the source of truth for tenants.
    #[arg(
        long,
        env = "TENANT_ROUTER_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// URL of Redis, for the configuration bus.
    #[arg(
        long,
        env = "TENANT_ROUTER_REDIS_URL",
        global = true,
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// Server where tenant databases are created [default: the control database's server].
    #[arg(
        long,
        env = "TENANT_ROUTER_PROVISION_URL",
        global = true,
        hide_env_values = true
    )]
    pub provision_url: Option<String>,
    /// Argon2 PHC hash of the admin API token.
    #[arg(
        long,
        env = "TENANT_ROUTER_ADMIN_TOKEN_HASH",
        global = true,
        hide_env_values = true
    )]
    pub admin_token_hash: Option<String>,
    /// Directory for the demo's own PostgreSQL and Redis [default: .tenant-router].
    #[arg(long, env = "TENANT_ROUTER_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Base domain for wildcard hosts: `<id>.<base domain>` resolves to tenant `<id>`.
    #[arg(long, env = "TENANT_ROUTER_BASE_DOMAIN", global = true)]
    pub base_domain: Option<String>,
    /// Declarative tenants file, imported by `demo` and `tenants import`
    /// [default: tenant-config/tenants.toml].
    #[arg(long, env = "TENANT_ROUTER_TENANTS_FILE", global = true)]
    pub tenants_file: Option<PathBuf>,
    /// Milliseconds a request waits for a connection of its tenant's pool [default: 5000].
    #[arg(long, env = "TENANT_ROUTER_ACQUIRE_TIMEOUT_MS", global = true)]
    pub acquire_timeout_ms: Option<u64>,
    /// Seconds between reconciles with the control database, which catch changes whose hint
    /// was lost [default: 30].
    #[arg(long, env = "TENANT_ROUTER_RECONCILE_INTERVAL", global = true)]
    pub reconcile_interval: Option<u64>,
    /// Redis channel for configuration hints [default: tenant-router:tenants].
    #[arg(long, env = "TENANT_ROUTER_REDIS_CHANNEL", global = true)]
    pub redis_channel: Option<String>,
    /// Directory of tenant migrations (`<version>_<name>.sql`) [default: the ones built in,
    /// for the reference app].
    #[arg(long, env = "TENANT_ROUTER_TENANT_MIGRATIONS", global = true)]
    pub tenant_migrations: Option<PathBuf>,
    /// Worker: jobs running at once [default: 32].
    #[arg(long, env = "TENANT_ROUTER_WORKER_CONCURRENCY", global = true)]
    pub worker_concurrency: Option<usize>,
    /// Worker: jobs of one tenant running at once [default: 8].
    #[arg(long, env = "TENANT_ROUTER_WORKER_TENANT_CONCURRENCY", global = true)]
    pub worker_tenant_concurrency: Option<usize>,
    /// Worker: attempts before a job goes to the dead letters [default: 5].
    #[arg(long, env = "TENANT_ROUTER_JOB_MAX_ATTEMPTS", global = true)]
    pub job_max_attempts: Option<u32>,
    /// Worker: milliseconds without a heartbeat before another worker takes a job over
    /// [default: 30000].
    #[arg(long, env = "TENANT_ROUTER_JOB_VISIBILITY_TIMEOUT_MS", global = true)]
    pub job_visibility_timeout_ms: Option<u64>,
    /// Worker: first retry delay in milliseconds, doubled per attempt [default: 500].
    #[arg(long, env = "TENANT_ROUTER_JOB_BACKOFF_MS", global = true)]
    pub job_backoff_ms: Option<u64>,
    /// Worker: seconds running jobs get to finish on SIGTERM [default: 10].
    #[arg(long, env = "TENANT_ROUTER_WORKER_GRACE_SECS", global = true)]
    pub worker_grace_secs: Option<u64>,
    /// Accept the diagnostic job kinds (`diag.*`) [default: false].
    #[arg(long, env = "TENANT_ROUTER_DIAGNOSTIC_JOBS", global = true)]
    pub diagnostic_jobs: Option<bool>,
    /// Where jobs write files, one directory per tenant [default: <data_dir>/files].
    #[arg(long, env = "TENANT_ROUTER_FILES_DIR", global = true)]
    pub files_dir: Option<PathBuf>,
    /// The shared database of shared tenants (schema `shared` in it)
    /// [default: the control database].
    #[arg(
        long,
        env = "TENANT_ROUTER_SHARED_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub shared_database_url: Option<String>,
    /// The apex host, where `POST /api/login` finds a user's tenant by email
    /// [default: test.com].
    #[arg(long, env = "TENANT_ROUTER_APEX_HOST", global = true)]
    pub apex_host: Option<String>,
    /// Most tenant connections open at once, across all tenant pools [default: 64].
    #[arg(long, env = "TENANT_ROUTER_MAX_TOTAL_CONNECTIONS", global = true)]
    pub max_total_connections: Option<usize>,
    /// Seconds a connection may take to send a request head, or stay idle between
    /// requests, before it is closed [default: 10].
    #[arg(long, env = "TENANT_ROUTER_HEADER_TIMEOUT_SECS", global = true)]
    pub header_timeout_secs: Option<u64>,
    /// Seconds a request may take before it is answered 503 [default: 30].
    #[arg(long, env = "TENANT_ROUTER_REQUEST_TIMEOUT_SECS", global = true)]
    pub request_timeout_secs: Option<u64>,
    /// Open connections per listener at most [default: 2048].
    #[arg(long, env = "TENANT_ROUTER_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,
    /// Seconds open connections get to finish on shutdown [default: 10].
    #[arg(long, env = "TENANT_ROUTER_DRAIN_TIMEOUT_SECS", global = true)]
    pub drain_timeout_secs: Option<u64>,
    /// Milliseconds a tenant's statement may run [default: 25000]; a tenant's pool
    /// settings may override it.
    #[arg(long, env = "TENANT_ROUTER_STATEMENT_TIMEOUT_MS", global = true)]
    pub statement_timeout_ms: Option<u32>,
    /// Milliseconds a tenant's transaction may sit idle before its session is ended
    /// [default: 60000]; a tenant's pool settings may override it.
    #[arg(
        long,
        env = "TENANT_ROUTER_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        global = true
    )]
    pub idle_in_transaction_timeout_ms: Option<u32>,
    /// Queued and delayed jobs a tenant may have at once; more are a 429 [default: 10000].
    #[arg(long, env = "TENANT_ROUTER_JOB_MAX_QUEUED_PER_TENANT", global = true)]
    pub job_max_queued_per_tenant: Option<u64>,
    /// Entries the dead-letter and parked streams keep, about [default: 100000].
    #[arg(long, env = "TENANT_ROUTER_JOB_DEAD_MAX_LEN", global = true)]
    pub job_dead_max_len: Option<usize>,
    /// Requests per second each tenant may make, unless it has a limit of its own
    /// [default: no limit].
    #[arg(long, env = "TENANT_ROUTER_RATE_LIMIT_RPS", global = true)]
    pub rate_limit_rps: Option<u32>,
    /// Requests at once above that rate [default: the rate].
    #[arg(long, env = "TENANT_ROUTER_RATE_LIMIT_BURST", global = true)]
    pub rate_limit_burst: Option<u32>,
    /// Seconds a tenant connection is reused at most [default: 1800].
    #[arg(
        long,
        env = "TENANT_ROUTER_CONNECTION_MAX_LIFETIME_SECS",
        global = true
    )]
    pub connection_max_lifetime_secs: Option<u64>,
    /// Argon2 runs at once (logins, registrations, admin token checks) [default: the
    /// number of cores].
    #[arg(long, env = "TENANT_ROUTER_PASSWORD_HASH_CONCURRENCY", global = true)]
    pub password_hash_concurrency: Option<usize>,
}

/// The settings file's shape; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    database_url: Option<String>,
    redis_url: Option<String>,
    provision_url: Option<String>,
    admin_token_hash: Option<String>,
    data_dir: Option<PathBuf>,
    base_domain: Option<String>,
    tenants_file: Option<PathBuf>,
    acquire_timeout_ms: Option<u64>,
    session_ttl_secs: Option<u64>,
    max_body_bytes: Option<usize>,
    reconcile_interval: Option<u64>,
    redis_channel: Option<String>,
    tenant_migrations: Option<PathBuf>,
    worker_concurrency: Option<usize>,
    worker_tenant_concurrency: Option<usize>,
    job_max_attempts: Option<u32>,
    job_visibility_timeout_ms: Option<u64>,
    job_backoff_ms: Option<u64>,
    worker_grace_secs: Option<u64>,
    diagnostic_jobs: Option<bool>,
    files_dir: Option<PathBuf>,
    shared_database_url: Option<String>,
    apex_host: Option<String>,
    max_total_connections: Option<usize>,
    header_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    drain_timeout_secs: Option<u64>,
    password_hash_concurrency: Option<usize>,
    statement_timeout_ms: Option<u32>,
    idle_in_transaction_timeout_ms: Option<u32>,
    connection_max_lifetime_secs: Option<u64>,
    rate_limit_rps: Option<u32>,
    rate_limit_burst: Option<u32>,
    job_max_queued_per_tenant: Option<u64>,
    job_dead_max_len: Option<usize>,
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Tenant-facing listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Control database.
    pub database_url: Option<DatabaseUrl>,
    /// Redis, for the configuration bus.
    pub redis_url: Option<String>,
    /// Provisioning server; `None` means the control database's server.
    pub provision_url: Option<DatabaseUrl>,
    /// Argon2 hash of the admin token.
    pub admin_token_hash: Option<AdminTokenHash>,
    /// The demo's data directory.
    pub data_dir: PathBuf,
    /// Wildcard base domain.
    pub base_domain: Option<String>,
    /// Declarative tenants file.
    pub tenants_file: PathBuf,
    /// How long a request waits for a tenant connection.
    pub acquire_timeout: Duration,
    /// How long a login token is valid.
    pub session_ttl: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How often to reconcile with the control database.
    pub reconcile_interval: Duration,
    /// Redis channel for configuration hints.
    pub redis_channel: String,
    /// Where tenant migrations come from.
    pub tenant_migrations: tenant_router::provision::TenantMigrations,
    /// How the worker runs (its consumer name is made at start).
    pub worker: tenant_router::jobs::WorkerOptions,
    /// Whether the `diag.*` job kinds are accepted.
    pub diagnostic_jobs: bool,
    /// The shared database; `None` means the control database.
    pub shared_database_url: Option<DatabaseUrl>,
    /// The apex host.
    pub apex_host: String,
    /// The global connection budget of the tenant pools.
    pub max_total_connections: usize,
    /// Limits of both HTTP listeners.
    pub http: crate::listener::HttpLimits,
    /// Argon2 runs at once.
    pub password_hash_concurrency: usize,
    /// What every tenant connection is opened with.
    pub connection_limits: tenant_router::registry::ConnectionLimits,
    /// The request rate limit of tenants without one of their own.
    pub default_rate_limit: Option<tenant_router::tenant::RateLimit>,
    /// Queued and delayed jobs a tenant may have at once.
    pub job_max_queued_per_tenant: u64,
}

impl Settings {
    /// Reads the file (the one named, or the default path if it exists) and applies the
    /// overrides.
    pub fn load(args: &SettingsArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                read_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => FileSettings::default(),
        };
        Self::resolve(args, file)
    }

    /// The settings from `args` and the defaults alone, ignoring any settings file. For
    /// embedding and tests.
    pub fn from_args(args: &SettingsArgs) -> anyhow::Result<Self> {
        Self::resolve(args, FileSettings::default())
    }

    fn resolve(args: &SettingsArgs, file: FileSettings) -> anyhow::Result<Self> {
        let url = |name: &str, value: Option<String>| -> anyhow::Result<Option<DatabaseUrl>> {
            value
                .map(|v| DatabaseUrl::parse(&v).context(name.to_string()))
                .transpose()
        };
        let base_domain = args.base_domain.clone().or(file.base_domain);
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(".tenant-router"));
        if let Some(d) = &base_domain {
            tenant_router::tenant::TenantHost::parse(d).context("base_domain")?;
        }
        Ok(Self {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:9500".parse().expect("literal")),
            admin_listen: args
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| "127.0.0.1:9501".parse().expect("literal")),
            database_url: url(
                "database_url (TENANT_ROUTER_DATABASE_URL)",
                args.database_url.clone().or(file.database_url),
            )?,
            redis_url: match args
                .redis_url
                .clone()
                .or(file.redis_url)
                .filter(|u| !u.trim().is_empty())
            {
                Some(url) => {
                    redis::Client::open(url.as_str())
                        .map_err(|e| anyhow::anyhow!("{e}"))
                        .context("redis_url (TENANT_ROUTER_REDIS_URL) is not a Redis URL")?;
                    Some(url)
                }
                None => None,
            },
            provision_url: url(
                "provision_url (TENANT_ROUTER_PROVISION_URL)",
                args.provision_url.clone().or(file.provision_url),
            )?,
            admin_token_hash: args
                .admin_token_hash
                .clone()
                .or(file.admin_token_hash)
                // An empty value (an unset compose variable, say) means none.
                .filter(|h| !h.trim().is_empty())
                .map(|h| AdminTokenHash::parse(h.trim()))
                .transpose()
                .context("admin_token_hash (TENANT_ROUTER_ADMIN_TOKEN_HASH)")?,
            data_dir: data_dir.clone(),
            base_domain,
            tenants_file: args
                .tenants_file
                .clone()
                .or(file.tenants_file)
                .unwrap_or_else(|| PathBuf::from("tenant-config/tenants.toml")),
            acquire_timeout: Duration::from_millis(
                args.acquire_timeout_ms
                    .or(file.acquire_timeout_ms)
                    .unwrap_or(5000),
            ),
            session_ttl: Duration::from_secs(file.session_ttl_secs.unwrap_or(86_400)),
            max_body_bytes: file.max_body_bytes.unwrap_or(64 * 1024),
            reconcile_interval: {
                let secs = args
                    .reconcile_interval
                    .or(file.reconcile_interval)
                    .unwrap_or(30);
                anyhow::ensure!(
                    (1..=86_400).contains(&secs),
                    "reconcile_interval (TENANT_ROUTER_RECONCILE_INTERVAL) must be 1 to 86400 seconds"
                );
                Duration::from_secs(secs)
            },
            redis_channel: args
                .redis_channel
                .clone()
                .or(file.redis_channel)
                .unwrap_or_else(|| tenant_router::bus::DEFAULT_CHANNEL.to_string()),
            tenant_migrations: match args.tenant_migrations.clone().or(file.tenant_migrations) {
                Some(dir) => tenant_router::provision::TenantMigrations::Dir(dir),
                None => tenant_router::provision::TenantMigrations::BuiltIn,
            },
            worker: {
                let defaults = tenant_router::jobs::WorkerOptions::default();
                let concurrency = args
                    .worker_concurrency
                    .or(file.worker_concurrency)
                    .unwrap_or(defaults.concurrency);
                let per_tenant = args
                    .worker_tenant_concurrency
                    .or(file.worker_tenant_concurrency)
                    .unwrap_or(defaults.per_tenant);
                anyhow::ensure!(
                    (1..=10_000).contains(&concurrency) && (1..=concurrency).contains(&per_tenant),
                    "worker_concurrency must be 1 to 10000 and worker_tenant_concurrency 1 to \
                     worker_concurrency (TENANT_ROUTER_WORKER_CONCURRENCY, \
                     TENANT_ROUTER_WORKER_TENANT_CONCURRENCY)"
                );
                let max_attempts = args
                    .job_max_attempts
                    .or(file.job_max_attempts)
                    .unwrap_or(defaults.max_attempts);
                anyhow::ensure!(
                    (1..=100).contains(&max_attempts),
                    "job_max_attempts (TENANT_ROUTER_JOB_MAX_ATTEMPTS) must be 1 to 100"
                );
                let visibility = args
                    .job_visibility_timeout_ms
                    .or(file.job_visibility_timeout_ms)
                    .unwrap_or(defaults.visibility_timeout.as_millis() as u64);
                anyhow::ensure!(
                    visibility >= 300,
                    "job_visibility_timeout_ms (TENANT_ROUTER_JOB_VISIBILITY_TIMEOUT_MS) must be at least 300"
                );
                tenant_router::jobs::WorkerOptions {
                    concurrency,
                    per_tenant,
                    max_attempts,
                    visibility_timeout: Duration::from_millis(visibility),
                    backoff: args
                        .job_backoff_ms
                        .or(file.job_backoff_ms)
                        .map_or(defaults.backoff, Duration::from_millis),
                    grace: args
                        .worker_grace_secs
                        .or(file.worker_grace_secs)
                        .map_or(defaults.grace, Duration::from_secs),
                    files_dir: args
                        .files_dir
                        .clone()
                        .or(file.files_dir)
                        .unwrap_or_else(|| data_dir.join("files")),
                    dead_max_len: {
                        let n = args
                            .job_dead_max_len
                            .or(file.job_dead_max_len)
                            .unwrap_or(defaults.dead_max_len);
                        anyhow::ensure!(
                            (100..=100_000_000).contains(&n),
                            "job_dead_max_len (TENANT_ROUTER_JOB_DEAD_MAX_LEN) must be 100 to 100000000"
                        );
                        n
                    },
                    ..defaults
                }
            },
            diagnostic_jobs: args
                .diagnostic_jobs
                .or(file.diagnostic_jobs)
                .unwrap_or(false),
            shared_database_url: url(
                "shared_database_url (TENANT_ROUTER_SHARED_DATABASE_URL)",
                args.shared_database_url
                    .clone()
                    .or(file.shared_database_url),
            )?,
            max_total_connections: {
                let n = args
                    .max_total_connections
                    .or(file.max_total_connections)
                    .unwrap_or(64);
                anyhow::ensure!(
                    (1..=100_000).contains(&n),
                    "max_total_connections (TENANT_ROUTER_MAX_TOTAL_CONNECTIONS) must be 1 to 100000"
                );
                n
            },
            apex_host: {
                let raw = args
                    .apex_host
                    .clone()
                    .or(file.apex_host)
                    .unwrap_or_else(|| "test.com".into());
                tenant_router::tenant::TenantHost::parse(&raw)
                    .context("apex_host (TENANT_ROUTER_APEX_HOST)")?
                    .to_string()
            },
            http: {
                let defaults = crate::listener::HttpLimits::default();
                let secs = |name: &str, value: Option<u64>, default: Duration| match value {
                    None => Ok(default),
                    Some(0) => Err(anyhow::anyhow!("{name} must be at least 1")),
                    Some(n) if n > 86_400 => Err(anyhow::anyhow!("{name} must be at most 86400")),
                    Some(n) => Ok(Duration::from_secs(n)),
                };
                let max_connections = args
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or(defaults.max_connections);
                anyhow::ensure!(
                    (1..=1_000_000).contains(&max_connections),
                    "max_connections (TENANT_ROUTER_MAX_CONNECTIONS) must be 1 to 1000000"
                );
                crate::listener::HttpLimits {
                    header_timeout: secs(
                        "header_timeout_secs (TENANT_ROUTER_HEADER_TIMEOUT_SECS)",
                        args.header_timeout_secs.or(file.header_timeout_secs),
                        defaults.header_timeout,
                    )?,
                    request_timeout: secs(
                        "request_timeout_secs (TENANT_ROUTER_REQUEST_TIMEOUT_SECS)",
                        args.request_timeout_secs.or(file.request_timeout_secs),
                        defaults.request_timeout,
                    )?,
                    max_connections,
                    drain_timeout: secs(
                        "drain_timeout_secs (TENANT_ROUTER_DRAIN_TIMEOUT_SECS)",
                        args.drain_timeout_secs.or(file.drain_timeout_secs),
                        defaults.drain_timeout,
                    )?,
                }
            },
            connection_limits: {
                let defaults = tenant_router::registry::ConnectionLimits::default();
                let ms = |name: &str, value: Option<u32>, default: u32| match value {
                    None => Ok(default),
                    Some(n) if (1..=3_600_000).contains(&n) => Ok(n),
                    Some(_) => Err(anyhow::anyhow!("{name} must be 1 to 3600000")),
                };
                let lifetime = args
                    .connection_max_lifetime_secs
                    .or(file.connection_max_lifetime_secs)
                    .map_or(defaults.max_lifetime, Duration::from_secs);
                anyhow::ensure!(
                    (1..=86_400).contains(&lifetime.as_secs()),
                    "connection_max_lifetime_secs (TENANT_ROUTER_CONNECTION_MAX_LIFETIME_SECS) must be 1 to 86400"
                );
                tenant_router::registry::ConnectionLimits {
                    statement_timeout_ms: ms(
                        "statement_timeout_ms (TENANT_ROUTER_STATEMENT_TIMEOUT_MS)",
                        args.statement_timeout_ms.or(file.statement_timeout_ms),
                        defaults.statement_timeout_ms,
                    )?,
                    idle_in_transaction_timeout_ms: ms(
                        "idle_in_transaction_timeout_ms (TENANT_ROUTER_IDLE_IN_TRANSACTION_TIMEOUT_MS)",
                        args.idle_in_transaction_timeout_ms
                            .or(file.idle_in_transaction_timeout_ms),
                        defaults.idle_in_transaction_timeout_ms,
                    )?,
                    max_lifetime: lifetime,
                }
            },
            job_max_queued_per_tenant: {
                let n = args
                    .job_max_queued_per_tenant
                    .or(file.job_max_queued_per_tenant)
                    .unwrap_or(tenant_router::jobs::DEFAULT_MAX_QUEUED_PER_TENANT);
                anyhow::ensure!(
                    (1..=100_000_000).contains(&n),
                    "job_max_queued_per_tenant (TENANT_ROUTER_JOB_MAX_QUEUED_PER_TENANT) must be 1 to 100000000"
                );
                n
            },
            default_rate_limit: match args.rate_limit_rps.or(file.rate_limit_rps) {
                None => None,
                Some(rps) => {
                    let limit = tenant_router::tenant::RateLimit {
                        requests_per_second: rps,
                        burst: args
                            .rate_limit_burst
                            .or(file.rate_limit_burst)
                            .unwrap_or(rps),
                    };
                    limit.validate().context(
                        "rate_limit_rps / rate_limit_burst (TENANT_ROUTER_RATE_LIMIT_*)",
                    )?;
                    Some(limit)
                }
            },
            password_hash_concurrency: {
                let n = args
                    .password_hash_concurrency
                    .or(file.password_hash_concurrency)
                    .unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
                    });
                anyhow::ensure!(
                    (1..=1024).contains(&n),
                    "password_hash_concurrency (TENANT_ROUTER_PASSWORD_HASH_CONCURRENCY) must be 1 to 1024"
                );
                n
            },
        })
    }

    /// The bus to subscribe to, when Redis is configured.
    pub fn bus(&self) -> Option<tenant_router::sync::BusConfig> {
        self.redis_url
            .as_ref()
            .map(|url| tenant_router::sync::BusConfig {
                url: url.clone(),
                channel: self.redis_channel.clone(),
            })
    }

    /// The shared database: the configured one, else the control database.
    pub fn shared_database(&self) -> Option<DatabaseUrl> {
        self.shared_database_url
            .clone()
            .or_else(|| self.database_url.clone())
    }

    /// The control database URL, or an error naming the setting.
    pub fn require_database_url(&self) -> anyhow::Result<&DatabaseUrl> {
        self.database_url.as_ref().context(
            "no control database configured: set TENANT_ROUTER_DATABASE_URL, \
             database_url in the settings file, or pass --database-url",
        )
    }

    /// Where tenant databases are created: the provisioning URL, else the control database's
    /// server (its maintenance database `postgres`).
    pub fn provision_server(&self) -> anyhow::Result<DatabaseUrl> {
        match &self.provision_url {
            Some(url) => Ok(url.clone()),
            None => Ok(self.require_database_url()?.with_database("postgres")),
        }
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading settings file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing settings file {}", path.display()))
}

impl Settings {
    /// Operations as the settings describe them: the provisioning server, migrations, the
    /// bus, the shared database, the base domain's wildcard hosts, and what a purge deletes
    /// (the jobs' Redis keys and files).
    pub fn tenant_ops(&self, control: ControlDb) -> anyhow::Result<TenantOps> {
        let settings = self;
        let control = control.with_base_domain(settings.base_domain.as_deref());
        let publisher = settings
            .redis_url
            .as_deref()
            .map(|url| tenant_router::bus::Publisher::new(url, &settings.redis_channel))
            .transpose()?;
        let redis = match settings.redis_url.as_deref() {
            Some(url) => Some((
                deadpool_redis::Config::from_url(url)
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .context("the Redis URL")?,
                tenant_router::namespace::RedisNamespace::default(),
            )),
            None => None,
        };
        Ok(TenantOps::new(
            control,
            settings.provision_server()?,
            settings.tenant_migrations.clone(),
        )
        .with_publisher(publisher)
        .with_shared(settings.shared_database())
        .with_redis(redis)
        .with_files_dir(Some(settings.worker.files_dir.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1000\"\nbase_domain = \"example.org\"\n",
        )
        .unwrap();
        let args = SettingsArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:2000".parse().unwrap()),
            ..Default::default()
        };
        let s = Settings::load(&args).unwrap();
        assert_eq!(s.listen.port(), 2000);
        assert_eq!(s.base_domain.as_deref(), Some("example.org"));
        assert_eq!(s.admin_listen.port(), 9501);

        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let err = Settings::load(&args).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }

    #[test]
    fn empty_values_are_unset_and_bad_ones_are_named() {
        let s = Settings::from_args(&SettingsArgs {
            admin_token_hash: Some(String::new()),
            redis_url: Some(" ".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(s.admin_token_hash.is_none() && s.redis_url.is_none() && s.bus().is_none());
        assert_eq!(s.reconcile_interval, Duration::from_secs(30));

        let err = |args: SettingsArgs| format!("{:#}", Settings::from_args(&args).unwrap_err());
        assert!(
            err(SettingsArgs {
                redis_url: Some("http://nope".into()),
                ..Default::default()
            })
            .contains("TENANT_ROUTER_REDIS_URL")
        );
        assert!(
            err(SettingsArgs {
                reconcile_interval: Some(0),
                ..Default::default()
            })
            .contains("TENANT_ROUTER_RECONCILE_INTERVAL")
        );

        let s = Settings::from_args(&SettingsArgs {
            redis_url: Some("redis://127.0.0.1:6390/".into()),
            reconcile_interval: Some(5),
            ..Default::default()
        })
        .unwrap();
        let bus = s.bus().unwrap();
        assert_eq!(bus.channel, "tenant-router:tenants");
        assert_eq!(s.reconcile_interval, Duration::from_secs(5));
    }

    #[test]
    fn provision_server_defaults_to_control_server() {
        let args = SettingsArgs {
            config: Some(PathBuf::from("/nonexistent/ignored")),
            ..Default::default()
        };
        assert!(Settings::load(&args).is_err(), "a named file must exist");
        let args = SettingsArgs {
            database_url: Some("postgres://u:p@h:5/control".into()),
            ..Default::default()
        };
        let s = Settings::load(&args).unwrap();
        assert_eq!(
            s.provision_server().unwrap().expose(),
            "postgres://u:p@h:5/postgres"
        );
    }
}
