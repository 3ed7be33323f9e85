//! [`TestKit`]: what an app's integration tests need around tenant-router, in one value:
//! throwaway PostgreSQL and Redis, a control database of the test's own, tenants of both
//! kinds, a started router, and [`TestKit::drain`] for the job queue.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::OnceCell;

use super::drain::{DrainOptions, drain};
use super::{LocalPostgres, LocalRedis};
use crate::bus::{Hint, HintOp, Publisher};
use crate::control::{ControlDb, TenantSpec, WriteMode};
use crate::jobs::{DrainReport, JobKinds, JobQueue, Keys, WorkerOptions};
use crate::namespace::RedisNamespace;
use crate::registry::{Registry, RegistryOptions};
use crate::router::{Builder, TenantRouter};
use crate::schema::TenantSchema;
use crate::shared::SharedDb;
use crate::sync::ConfigSync;
use crate::tenant::{
    DatabaseUrl, Isolation, PoolSettings, Tenant, TenantHost, TenantId, TenantState,
};

/// The PostgreSQL server every kit of this test process uses (started on first use, gone
/// when the process exits); each kit makes its own databases on it.
pub async fn process_postgres() -> anyhow::Result<&'static LocalPostgres> {
    static PG: OnceCell<LocalPostgres> = OnceCell::const_new();
    PG.get_or_try_init(LocalPostgres::start_ephemeral).await
}

/// The Redis server every kit of this test process uses; each kit keeps to its own key
/// prefix and configuration channel on it.
pub async fn process_redis() -> anyhow::Result<&'static LocalRedis> {
    static REDIS: OnceCell<LocalRedis> = OnceCell::const_new();
    REDIS
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(LocalRedis::start_ephemeral)
                .await
                .context("starting Redis")?
        })
        .await
}

/// A test's own tenant-router world, over the servers of its process
/// ([`process_postgres`], [`process_redis`]): a fresh control database, a Redis key prefix
/// and configuration channel no other kit uses, and helpers that create tenants the way
/// the app's migrations define them. Kits of concurrent tests do not see each other.
///
/// Tenants written through the kit are visible at once to every router it started and to
/// [`Self::drain`]; a hint goes out on the kit's channel for routers started elsewhere.
/// Databases are left on the throwaway server, which goes when the test process exits.
///
/// ```no_run
/// use axum::{Router, body::Body, routing::get};
/// use tenant_router::middleware::CurrentTenant;
/// use tenant_router::schema::TenantSchema;
/// use tenant_router::jobs::JobKinds;
/// use tenant_router::testing::TestKit;
/// use tower::ServiceExt as _;
///
/// # async fn example(schema: TenantSchema, kinds: JobKinds) -> anyhow::Result<()> {
/// // `schema` and `kinds` are the app's own: its tenant tables and migrations, its jobs.
/// let kit = TestKit::builder(schema).jobs(kinds).start().await?;
/// let acme = kit.dedicated_tenant("acme", &["acme.test"]).await?;
/// kit.shared_tenant("globex", &["globex.test"]).await?;
///
/// let router = kit.router().await?;
/// let app = Router::new()
///     .route("/whoami", get(|t: CurrentTenant| async move { t.id().to_string() }))
///     .layer(router.layer());
/// let request = http::Request::get("/whoami")
///     .header("host", "acme.test")
///     .body(Body::empty())?;
/// assert_eq!(app.oneshot(request).await?.status(), 200);
///
/// kit.queue()
///     .submit(&acme, "users.welcome", serde_json::json!({"email": "a@acme.test"}), None, None)
///     .await?;
/// let report = kit.drain().await?;
/// assert_eq!((report.succeeded, report.dead), (1, 0));
/// # Ok(())
/// # }
/// ```
pub struct TestKit {
    name: String,
    postgres: &'static LocalPostgres,
    redis_url: String,
    control: ControlDb,
    namespace: RedisNamespace,
    channel: String,
    schema: TenantSchema,
    base_domain: Option<String>,
    queue: JobQueue,
    drain: DrainOptions,
    files: tempfile::TempDir,
    publisher: Publisher,
    /// The registry jobs run against in [`Self::drain`].
    jobs_sync: Arc<ConfigSync>,
    /// The syncs of the routers handed out, to bring them up to date after a write.
    routers: Mutex<Vec<Weak<ConfigSync>>>,
    shared_prepared: OnceCell<()>,
    databases: AtomicU32,
}

/// Options for a [`TestKit`]; start from [`TestKit::builder`].
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct TestKitBuilder {
    schema: TenantSchema,
    kinds: JobKinds,
    worker: WorkerOptions,
    base_domain: Option<String>,
}

impl TestKitBuilder {
    /// The job kinds the kit's queue accepts and [`TestKit::drain`] runs (default: none).
    pub fn jobs(mut self, kinds: JobKinds) -> Self {
        self.kinds = kinds;
        self
    }

    /// Adjusts the options of the worker [`TestKit::drain`] runs jobs with (default:
    /// [`DrainOptions`]'s, a zero backoff; `files_dir` is the kit's own directory).
    pub fn worker(mut self, adjust: impl FnOnce(&mut WorkerOptions)) -> Self {
        adjust(&mut self.worker);
        self
    }

    /// The base domain of the kit's control database and routers: with `test.com`,
    /// `acme.test.com` resolves to tenant `acme`.
    pub fn base_domain(mut self, domain: impl Into<String>) -> Self {
        self.base_domain = Some(domain.into());
        self
    }

    /// Starts the servers if this process has none yet, and makes the kit's control
    /// database.
    pub async fn start(self) -> anyhow::Result<TestKit> {
        static KITS: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kit_{}_{}",
            std::process::id(),
            KITS.fetch_add(1, Ordering::Relaxed)
        );
        let postgres = process_postgres().await?;
        let redis_url = process_redis().await?.url();
        let control_url = postgres.create_database(&format!("{name}_control")).await?;
        let control =
            ControlDb::connect_lazy(&control_url).with_base_domain(self.base_domain.as_deref());
        control.migrate().await?;
        let namespace = RedisNamespace::new(&format!("{name}:"));
        let channel = format!("tenant-router:{name}");
        let queue = JobQueue::new(&redis_url, Keys::from(&namespace), self.kinds)?;
        let files = tempfile::Builder::new()
            .prefix("tenant-router-kit-")
            .tempdir()?;
        let drain = DrainOptions {
            worker: WorkerOptions {
                name: name.clone(),
                files_dir: files.path().to_path_buf(),
                ..self.worker
            },
            ..DrainOptions::default()
        };
        let registry = Registry::new(registry_options(&control_url, &self.base_domain));
        let jobs_sync = Arc::new(ConfigSync::new(Arc::new(registry), control.clone()));
        jobs_sync.full_load().await?;
        Ok(TestKit {
            publisher: Publisher::new(&redis_url, &channel)?,
            name,
            postgres,
            redis_url,
            control,
            namespace,
            channel,
            schema: self.schema,
            base_domain: self.base_domain,
            queue,
            drain,
            files,
            jobs_sync,
            routers: Mutex::default(),
            shared_prepared: OnceCell::new(),
            databases: AtomicU32::new(0),
        })
    }
}

fn registry_options(control_url: &DatabaseUrl, base_domain: &Option<String>) -> RegistryOptions {
    RegistryOptions {
        base_domain: base_domain.clone(),
        // Shared tenants live in the control database's shared schema, as the server's
        // default has it: one pool for all of them.
        shared_database: Some(control_url.clone()),
        ..RegistryOptions::default()
    }
}

impl TestKit {
    /// Options for a kit whose tenants have `schema`'s tables and migrations.
    pub fn builder(schema: TenantSchema) -> TestKitBuilder {
        TestKitBuilder {
            schema,
            kinds: JobKinds::new(),
            worker: DrainOptions::default().worker,
            base_domain: None,
        }
    }

    /// The kit's control database.
    pub fn control_url(&self) -> &DatabaseUrl {
        self.control.url()
    }

    /// A handle on it, for tenant changes the kit has no helper for (then
    /// [`Self::catch_up`]).
    pub fn control(&self) -> &ControlDb {
        &self.control
    }

    /// The Redis server (shared with the other kits of this process: keep to
    /// [`Self::redis_namespace`] and [`Self::channel`]).
    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// The prefix of every Redis key of this kit: give it to the app's router
    /// ([`Builder::redis_namespace`]) and job queue ([`Keys::from`]).
    pub fn redis_namespace(&self) -> &RedisNamespace {
        &self.namespace
    }

    /// The configuration channel of this kit ([`Builder::channel`]).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The PostgreSQL server the kit's databases are on.
    pub fn postgres(&self) -> &'static LocalPostgres {
        self.postgres
    }

    /// The job queue, under the kit's namespace, for the kinds given to
    /// [`TestKitBuilder::jobs`].
    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    /// Where jobs run by [`Self::drain`] write files (`<dir>/<tenant id>/`); removed with
    /// the kit.
    pub fn files_dir(&self) -> &std::path::Path {
        self.files.path()
    }

    /// A dedicated tenant: a database of its own, migrated with the schema's dedicated
    /// migrations, serving `hosts`.
    pub async fn dedicated_tenant(&self, id: &str, hosts: &[&str]) -> anyhow::Result<Tenant> {
        let id = TenantId::parse(id).with_context(|| format!("tenant id {id:?}"))?;
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let database = self
            .postgres
            .create_database(&database_name(&self.name, n, &id))
            .await?;
        migrate(&database, self.schema.dedicated_migrations())
            .await
            .with_context(|| format!("migrating the database of tenant {id}"))?;
        self.write(spec(id, hosts, database, Isolation::Dedicated)?)
            .await
    }

    /// A shared tenant: rows in the shared schema of the control database (prepared for
    /// the schema on first use), registered in the tenant directory, serving `hosts`.
    pub async fn shared_tenant(&self, id: &str, hosts: &[&str]) -> anyhow::Result<Tenant> {
        let id = TenantId::parse(id).with_context(|| format!("tenant id {id:?}"))?;
        let shared = SharedDb::connect_lazy(self.control_url());
        self.shared_prepared
            .get_or_try_init(|| prepare_shared(&shared, &self.schema))
            .await
            .context("preparing the shared schema")?;
        shared.register(&id).await?;
        let spec = spec(id, hosts, self.control_url().clone(), Isolation::Shared)?;
        self.write(spec).await
    }

    /// A started router over the kit's control database and Redis, with every tenant
    /// written so far; the kit brings it up to date after each tenant it writes.
    pub async fn router(&self) -> anyhow::Result<TenantRouter> {
        self.router_with(|b| b).await
    }

    /// [`Self::router`], with the builder adjusted first (pool limits, timeouts).
    pub async fn router_with(
        &self,
        adjust: impl FnOnce(Builder) -> Builder,
    ) -> anyhow::Result<TenantRouter> {
        let builder = TenantRouter::builder(self.control_url().clone())
            .redis(self.redis_url.clone())
            .channel(self.channel.clone())
            .redis_namespace(self.namespace.clone())
            .registry_options(registry_options(self.control_url(), &self.base_domain));
        let router = adjust(builder).start().await?;
        self.routers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(router.sync()));
        Ok(router)
    }

    /// Brings every router the kit started, and the registry [`Self::drain`] uses, up to
    /// date with the control database: after changing tenants without the kit.
    pub async fn catch_up(&self) -> anyhow::Result<()> {
        let syncs: Vec<Arc<ConfigSync>> = {
            let mut routers = self.routers.lock().unwrap_or_else(|e| e.into_inner());
            routers.retain(|w| w.strong_count() > 0);
            routers.iter().filter_map(Weak::upgrade).collect()
        };
        for sync in syncs.iter().chain([&self.jobs_sync]) {
            sync.catch_up().await?;
        }
        Ok(())
    }

    /// Runs every job queued in the kit's queue (all tenants'), and every retry as it falls
    /// due, to completion, one at a time; returns when none is queued, running or due.
    ///
    /// Retries: the drain's worker has a zero backoff (unless [`TestKitBuilder::worker`]
    /// set one), so a failed attempt is retried within the same drain until it succeeds or
    /// its attempts run out. Jobs scheduled for later (`run_at`) do not run before their
    /// time: they are left in the queue and counted in [`DrainReport::delayed`]. See
    /// [`super::drain()`] and [`crate::jobs::Worker::run_pending`].
    pub async fn drain(&self) -> anyhow::Result<DrainReport> {
        self.jobs_sync.catch_up().await?;
        drain(&self.queue, &self.jobs_sync, &self.drain).await
    }

    /// Stores a new tenant, tells the routers, and returns it as stored.
    async fn write(&self, spec: TenantSpec) -> anyhow::Result<Tenant> {
        let id = spec.id.clone();
        let written = self
            .control
            .write(&spec, WriteMode::Create)
            .await
            .with_context(|| format!("writing tenant {id}"))?;
        // For routers the kit did not start (another process on the kit's channel); a
        // failed publish is logged, and theirs reconcile.
        let _ = self
            .publisher
            .publish(&Hint::new(HintOp::Upsert, id, written.tenant.version))
            .await;
        self.catch_up().await?;
        Ok(written.tenant)
    }
}

impl std::fmt::Debug for TestKit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKit")
            .field("name", &self.name)
            .field("control", self.control_url())
            .field("redis", &self.redis_url)
            .finish_non_exhaustive()
    }
}

/// The one place the kit prepares the shared schema, for `schema`'s app.
async fn prepare_shared(shared: &SharedDb, schema: &TenantSchema) -> anyhow::Result<()> {
    shared.prepare(schema).await.map(drop)
}

/// Applies `migrator` to the database at `url`. (A pool of one rather than a connection:
/// the future of `Migrator::run` on a connection cannot be sent across threads.)
async fn migrate(url: &DatabaseUrl, migrator: &Migrator) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(url.connect_options())
        .await?;
    let result = migrator.run(&pool).await;
    pool.close().await;
    Ok(result?)
}

fn spec(
    id: TenantId,
    hosts: &[&str],
    database: DatabaseUrl,
    isolation: Isolation,
) -> anyhow::Result<TenantSpec> {
    anyhow::ensure!(!hosts.is_empty(), "tenant {id} needs at least one host");
    let hosts = hosts
        .iter()
        .map(|h| TenantHost::parse(h).with_context(|| format!("host {h:?}")))
        .collect::<anyhow::Result<_>>()?;
    Ok(TenantSpec {
        id,
        hosts,
        database,
        provisioned: false,
        pool: PoolSettings::default(),
        state: TenantState::Active,
        isolation,
        incarnation: None,
        rate_limit: None,
    })
}

/// `<kit>_<n>_<id>`, with `-` as `_` and within PostgreSQL's 63 bytes: unique by `kit` and
/// `n`, readable by the id.
fn database_name(kit: &str, n: u32, id: &TenantId) -> String {
    let mut name = format!("{kit}_{n}_{}", id.as_str().replace('-', "_"));
    name.truncate(63);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_fit_postgres_and_stay_apart() {
        let long = TenantId::parse("a-".repeat(31).trim_end_matches('-')).unwrap();
        let one = database_name("kit_4242424_17", 3, &long);
        let two = database_name("kit_4242424_17", 4, &long);
        assert!(one.len() <= 63, "{one}");
        assert_ne!(one, two);
        assert_eq!(
            database_name("kit_1_0", 0, &TenantId::parse("acme-co").unwrap()),
            "kit_1_0_0_acme_co"
        );
    }

    #[test]
    fn a_spec_needs_a_host_and_parses_them() {
        let id = TenantId::parse("acme").unwrap();
        let url = DatabaseUrl::parse("postgres://u@127.0.0.1:5432/acme").unwrap();
        assert!(spec(id.clone(), &[], url.clone(), Isolation::Dedicated).is_err());
        assert!(spec(id.clone(), &["not a host"], url.clone(), Isolation::Shared).is_err());
        let s = spec(id, &["acme.test"], url, Isolation::Shared).unwrap();
        assert_eq!(s.hosts, [TenantHost::parse("acme.test").unwrap()]);
        assert_eq!(s.isolation, Isolation::Shared);
    }
}
