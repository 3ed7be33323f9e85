//! The settings as flags and environment variables take them.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Where the worker serves `/metrics` (behind the admin token) [default: not served].
    #[arg(long, env = "TENANT_ROUTER_WORKER_METRICS_LISTEN", global = true)]
    pub worker_metrics_listen: Option<SocketAddr>,
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
    /// PEM file of CA certificates trusted for a `rediss://` Redis, beside the system's.
    #[arg(long, env = "TENANT_ROUTER_REDIS_CA_FILE", global = true)]
    pub redis_ca_file: Option<PathBuf>,
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
