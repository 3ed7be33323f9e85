//! The one entry point for an app that embeds the router: [`TenantRouter::builder`].
//!
//! It connects to the control database, loads every tenant, and starts what keeps the
//! registry current (the configuration sync: hints on Redis, catch-up after a disconnect, a
//! periodic reconcile). The idle-pool reaper runs as long as the registry lives. What it
//! hands back is the [`TenantLayer`] to put in front of tenant routes, the [`Registry`], and
//! the handle that stops the background work: dropping that handle stops nothing (an
//! embedded router that dropped it would silently stop seeing changes), only
//! [`TenantRouter::shutdown`] does.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::RedisEndpoint;
use crate::bus::DEFAULT_CHANNEL;
use crate::control::ControlDb;
use crate::middleware::TenantLayer;
use crate::namespace::RedisNamespace;
use crate::registry::{ConnectionLimits, Registry, RegistryOptions};
use crate::sync::{BusConfig, ConfigSync};
use crate::tenant::{DatabaseUrl, RateLimit};

/// Typed options for [`TenantRouter`]; start from [`TenantRouter::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct Builder {
    control: DatabaseUrl,
    redis: Option<RedisEndpoint>,
    channel: String,
    namespace: RedisNamespace,
    registry: RegistryOptions,
    reconcile_interval: Duration,
    migrate_control: bool,
}

impl Builder {
    /// Redis: the configuration bus (changes arrive within milliseconds instead of at the
    /// next reconcile) and each tenant's key namespace ([`crate::middleware::CurrentTenant::redis`]).
    pub fn redis(mut self, redis: impl Into<RedisEndpoint>) -> Self {
        self.redis = Some(redis.into());
        self
    }

    /// The Redis channel of configuration hints (default [`crate::bus::DEFAULT_CHANNEL`]); every
    /// instance and the admin side must agree on it.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// The prefix of every Redis key (default `tr:`).
    pub fn redis_namespace(mut self, namespace: RedisNamespace) -> Self {
        self.namespace = namespace;
        self
    }

    /// With `example.com`, `acme.example.com` resolves to tenant `acme` unless a tenant
    /// claims that host exactly.
    pub fn base_domain(mut self, domain: impl Into<String>) -> Self {
        self.registry.base_domain = Some(domain.into());
        self
    }

    /// Where shared tenants live (one pool for all of them).
    pub fn shared_database(mut self, url: DatabaseUrl) -> Self {
        self.registry.shared_database = Some(url);
        self
    }

    /// Most connections open at once across every tenant pool (default 64).
    pub fn max_total_connections(mut self, n: usize) -> Self {
        self.registry.max_total_connections = n;
        self
    }

    /// How long a request waits for a connection before a 503 (default 5 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.registry.acquire_timeout = timeout;
        self
    }

    /// Timeouts and lifetime of every tenant connection.
    pub fn connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.registry.connection_limits = limits;
        self
    }

    /// The request rate limit of tenants without one of their own (default: none).
    pub fn default_rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.registry.default_rate_limit = limit;
        self
    }

    /// All registry options at once (replaces what the setters above set).
    pub fn registry_options(mut self, options: RegistryOptions) -> Self {
        self.registry = options;
        self
    }

    /// How often the registry is compared with the control database even when no hint
    /// came (default 30 s). It is what repairs a missed hint when Redis is not configured.
    pub fn reconcile_interval(mut self, interval: Duration) -> Self {
        self.reconcile_interval = interval;
        self
    }

    /// Whether `start` migrates the control database first (default true). Turn it off
    /// when a separate step (`tenant-router migrate`) owns schema changes.
    pub fn migrate_control_database(mut self, migrate: bool) -> Self {
        self.migrate_control = migrate;
        self
    }

    /// Connects, loads every tenant and starts the sync. Fails when the control database
    /// cannot be read or the Redis URL is malformed; a Redis server that is down is not an
    /// error (the sync retries, and reconciles meanwhile).
    pub async fn start(self) -> anyhow::Result<TenantRouter> {
        let control = ControlDb::connect_lazy(&self.control);
        if self.migrate_control {
            control.migrate().await?;
        }
        let redis = self
            .redis
            .as_ref()
            .map(|redis| {
                redis
                    .pool(16, Duration::from_secs(2))
                    .context("the Redis URL")
            })
            .transpose()?;
        let registry = Arc::new(Registry::new(self.registry));
        let sync = Arc::new(ConfigSync::new(Arc::clone(&registry), control));
        sync.full_load()
            .await
            .context("loading the tenants from the control database")?;
        let bus = self.redis.map(|redis| BusConfig {
            redis,
            channel: self.channel,
        });
        let (stop, stopped) = watch::channel(false);
        let stop = Arc::new(stop);
        // The task keeps a sender of its own: the channel closes only when it ends, so no
        // drop elsewhere can stop it.
        let keep = Arc::clone(&stop);
        let run = Arc::clone(&sync).run(bus, self.reconcile_interval, stopped);
        let task = tokio::spawn(async move {
            let _keep = keep;
            run.await;
        });
        let mut layer = TenantLayer::new(Arc::clone(&registry));
        if let Some(pool) = &redis {
            layer = layer.with_redis(pool.clone(), self.namespace.clone());
        }
        Ok(TenantRouter {
            layer,
            registry,
            sync,
            redis,
            namespace: self.namespace,
            stop,
            task: Some(task),
        })
    }
}

/// A running router: the layer, the registry, and its background sync.
///
/// Dropping it leaves the sync running until the runtime ends; call
/// [`Self::shutdown`] to stop it.
pub struct TenantRouter {
    layer: TenantLayer,
    registry: Arc<Registry>,
    sync: Arc<ConfigSync>,
    redis: Option<deadpool_redis::Pool>,
    namespace: RedisNamespace,
    stop: Arc<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

impl TenantRouter {
    /// Options for a router whose tenants are in the control database at `control`.
    pub fn builder(control: DatabaseUrl) -> Builder {
        Builder {
            control,
            redis: None,
            channel: DEFAULT_CHANNEL.to_string(),
            namespace: RedisNamespace::default(),
            registry: RegistryOptions::default(),
            reconcile_interval: Duration::from_secs(30),
            migrate_control: true,
        }
    }

    /// The layer that resolves each request's `Host` to its tenant (cheap to clone).
    pub fn layer(&self) -> TenantLayer {
        self.layer.clone()
    }

    /// The registry the layer resolves against.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The sync that keeps the registry current (its bus state, a forced catch-up).
    pub fn sync(&self) -> &Arc<ConfigSync> {
        &self.sync
    }

    /// The Redis pool, when Redis is configured.
    pub fn redis(&self) -> Option<&deadpool_redis::Pool> {
        self.redis.as_ref()
    }

    /// The prefix of every Redis key.
    pub fn redis_namespace(&self) -> &RedisNamespace {
        &self.namespace
    }

    /// Stops the sync and waits for it to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl std::fmt::Debug for TenantRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRouter")
            .field("version", &self.registry.version())
            .field("tenants", &self.registry.snapshot().len())
            .finish_non_exhaustive()
    }
}
