//! Settings: `tenant-config/router.toml`, each value overridable by a `TENANT_ROUTER_*`
//! environment variable or a command-line flag (flag beats environment beats file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tenant_router::RedisEndpoint;
use tenant_router::control::ControlDb;
use tenant_router::operations::TenantOps;
use tenant_router::tenant::DatabaseUrl;

use crate::admin_token::AdminTokenHash;

mod args;
mod resolve;

use resolve::{FileSettings, read_file};

pub use args::SettingsArgs;

/// Where the settings file is looked for when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "tenant-config/router.toml";

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Tenant-facing listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// The worker's `/metrics` listener (behind the admin token); `None`: not served.
    pub worker_metrics_listen: Option<SocketAddr>,
    /// Control database.
    pub database_url: Option<DatabaseUrl>,
    /// Redis, for the configuration bus.
    pub redis_url: Option<String>,
    /// Extra CA certificates (PEM) trusted for a `rediss://` Redis, beside the system's.
    pub redis_ca_file: Option<PathBuf>,
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

    /// Redis, when configured: its URL and the CA file's certificates.
    pub fn redis(&self) -> anyhow::Result<Option<RedisEndpoint>> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        let endpoint = RedisEndpoint::new(url.as_str());
        Ok(Some(match &self.redis_ca_file {
            Some(path) => endpoint
                .with_ca_file(path)
                .context("redis_ca_file (TENANT_ROUTER_REDIS_CA_FILE)")?,
            None => endpoint,
        }))
    }

    /// Redis, or an error saying what needs it.
    pub fn require_redis(&self, what: &str) -> anyhow::Result<RedisEndpoint> {
        self.redis()?
            .with_context(|| format!("{what} needs Redis: set TENANT_ROUTER_REDIS_URL"))
    }

    /// The bus to subscribe to, when Redis is configured.
    pub fn bus(&self) -> anyhow::Result<Option<tenant_router::sync::BusConfig>> {
        Ok(self.redis()?.map(|redis| tenant_router::sync::BusConfig {
            redis,
            channel: self.redis_channel.clone(),
        }))
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

impl Settings {
    /// The registry options the settings describe.
    pub fn registry_options(&self) -> tenant_router::registry::RegistryOptions {
        tenant_router::registry::RegistryOptions {
            base_domain: self.base_domain.clone(),
            acquire_timeout: self.acquire_timeout,
            shared_database: self.shared_database(),
            max_total_connections: self.max_total_connections,
            connection_limits: self.connection_limits,
            default_rate_limit: self.default_rate_limit,
        }
    }

    /// A router as the settings describe it: the control database, the registry options,
    /// Redis (when set), its channel and the reconcile interval.
    pub fn tenant_router(&self) -> anyhow::Result<tenant_router::Builder> {
        let mut builder =
            tenant_router::TenantRouter::builder(self.require_database_url()?.clone())
                .registry_options(self.registry_options())
                .channel(self.redis_channel.clone())
                .reconcile_interval(self.reconcile_interval);
        if let Some(redis) = self.redis()? {
            builder = builder.redis(redis);
        }
        Ok(builder)
    }

    /// Operations as the settings describe them: the provisioning server, migrations, the
    /// bus, the shared database, the base domain's wildcard hosts, and what a purge deletes
    /// (the jobs' Redis keys and files).
    pub fn tenant_ops(&self, control: ControlDb) -> anyhow::Result<TenantOps> {
        let settings = self;
        let control = control.with_base_domain(settings.base_domain.as_deref());
        let redis_endpoint = settings.redis()?;
        let publisher = redis_endpoint
            .as_ref()
            .map(|redis| tenant_router::bus::Publisher::new(redis, &settings.redis_channel))
            .transpose()?;
        let redis = match &redis_endpoint {
            Some(redis) => Some((
                redis
                    .pool(16, Duration::from_secs(2))
                    .context("the Redis URL")?,
                tenant_router::namespace::RedisNamespace::default(),
            )),
            None => None,
        };
        Ok(TenantOps::new(
            control,
            settings.provision_server()?,
            crate::schema::schema(),
        )
        .with_tenant_migrations(settings.tenant_migrations.clone())
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
        assert!(
            s.admin_token_hash.is_none() && s.redis_url.is_none() && s.bus().unwrap().is_none()
        );
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
        let bus = s.bus().unwrap().unwrap();
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
