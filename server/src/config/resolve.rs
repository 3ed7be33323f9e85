//! The settings file, and how flags, environment, file and defaults resolve into
//! [`Settings`], every value checked and every bad one named by its setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use tenant_router::tenant::DatabaseUrl;

use super::{Settings, SettingsArgs};
use crate::admin_token::AdminTokenHash;

/// The settings file's shape; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSettings {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    worker_metrics_listen: Option<SocketAddr>,
    database_url: Option<String>,
    redis_url: Option<String>,
    redis_ca_file: Option<PathBuf>,
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

impl Settings {
    pub(super) fn resolve(args: &SettingsArgs, file: FileSettings) -> anyhow::Result<Self> {
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
        let settings = Self {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:9500".parse().expect("literal")),
            worker_metrics_listen: args.worker_metrics_listen.or(file.worker_metrics_listen),
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
            redis_ca_file: args.redis_ca_file.clone().or(file.redis_ca_file),
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
                None => tenant_router::provision::TenantMigrations::Embedded(
                    &crate::schema::TENANT_MIGRATOR,
                ),
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
        };
        // A CA file that cannot be read, holds no certificate, or comes without rediss://
        // stops the start here, named, rather than at the first connection.
        if let Some(redis) = settings.redis()? {
            redis
                .client()
                .context("redis_ca_file (TENANT_ROUTER_REDIS_CA_FILE)")?;
        }
        Ok(settings)
    }
}

pub(super) fn read_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading settings file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing settings file {}", path.display()))
}
