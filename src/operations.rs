//! Tenant writes, shared by the admin API and the CLI: validate, provision, commit to the
//! control database, then announce. The order is the contract: nothing is announced before
//! it is committed, and a provisioning failure leaves nothing behind.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::bus::{Hint, HintOp, Publisher};
use crate::control::{ControlDb, Leftover, TenantSpec, WriteError, WriteMode};
use crate::journal::{Operation, Refused};
use crate::problem::{ApiError, FieldError};
use crate::provision::{self, TenantMigrations};
use crate::shared::SharedDb;
use crate::sync::ConfigSync;
use crate::tenant::{
    DatabaseUrl, Isolation, PoolSettings, RateLimit, Tenant, TenantHost, TenantId, TenantState,
};

/// How long a removal with `drop_database` waits for every instance to close its
/// connections before dropping the database anyway.
pub const DROP_WAIT: Duration = Duration::from_secs(10);

/// A tenant to create, as a client sends it. Every field is checked; see [`NewTenant`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenantRequest {
    /// Id: `[a-z0-9-]`, 1 to 63 characters.
    pub id: Option<String>,
    /// At least one host name, no port.
    pub hosts: Option<Vec<String>>,
    /// An existing database; without it one is provisioned.
    pub database: Option<String>,
    /// Pool settings; omitted ones take the defaults.
    pub pool: Option<PoolRequest>,
    /// `active` (default) or `suspended`.
    pub state: Option<String>,
    /// `dedicated` (default: its own database) or `shared` (the shared database).
    pub isolation: Option<String>,
    /// Take over data that is already there: what a removal of this id kept, or an existing
    /// `tenant_<id>` database. Without it, such data makes the create a 409.
    pub adopt: Option<bool>,
    /// Its own request rate limit; omitted: the router's default.
    pub rate_limit: Option<RateLimit>,
}

/// Pool settings as a client sends them; omitted fields keep their current (or default)
/// values.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRequest {
    /// Most connections.
    pub max_connections: Option<u32>,
    /// Seconds before an idle connection closes.
    pub idle_timeout_secs: Option<u64>,
    /// Milliseconds a statement may run; `null` returns to the router's default.
    #[serde(default, deserialize_with = "some_or_null")]
    pub statement_timeout_ms: Option<Option<u32>>,
    /// Milliseconds a transaction may sit idle; `null` returns to the router's default.
    #[serde(default, deserialize_with = "some_or_null")]
    pub idle_in_transaction_timeout_ms: Option<Option<u32>>,
}

/// A field that may be absent (left alone), `null` (cleared) or a value.
fn some_or_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A change to a tenant, as a client sends it; omitted fields are left alone.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPatchRequest {
    /// Replaces the hosts.
    pub hosts: Option<Vec<String>>,
    /// Moves the tenant to another database (no data is copied).
    pub database: Option<String>,
    /// Changes pool settings.
    pub pool: Option<PoolRequest>,
    /// `active` or `suspended`.
    pub state: Option<String>,
    /// Its own request rate limit; `null` returns to the router's default.
    #[serde(default, deserialize_with = "some_or_null")]
    pub rate_limit: Option<Option<RateLimit>>,
}

/// A validated [`NewTenantRequest`].
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Id.
    pub id: TenantId,
    /// Hosts.
    pub hosts: Vec<TenantHost>,
    /// Database, or `None` to provision.
    pub database: Option<DatabaseUrl>,
    /// Pool.
    pub pool: PoolSettings,
    /// State.
    pub state: TenantState,
    /// Dedicated or shared.
    pub isolation: Isolation,
    /// Take over data that is already there (see [`NewTenantRequest::adopt`]).
    pub adopt: bool,
    /// Its own request rate limit.
    pub rate_limit: Option<RateLimit>,
}

impl NewTenantRequest {
    /// Checks every field, reporting all that are wrong at once.
    pub fn validate(self) -> Result<NewTenant, Vec<FieldError>> {
        let mut errors = Vec::new();
        let id = match self.id.as_deref() {
            None => {
                errors.push(FieldError::new("id", "is required"));
                None
            }
            Some(raw) => TenantId::parse(raw)
                .map_err(|e| errors.push(FieldError::new("id", e.0)))
                .ok(),
        };
        let hosts = match self.hosts {
            None => {
                errors.push(FieldError::new("hosts", "is required"));
                None
            }
            Some(raw) => parse_hosts(&raw, &mut errors),
        };
        let database = parse_database(self.database.as_deref(), &mut errors);
        let pool = parse_pool(self.pool, PoolSettings::default(), &mut errors);
        let state = parse_state(self.state.as_deref(), &mut errors).unwrap_or_default();
        let isolation = match self.isolation.as_deref().map(str::parse::<Isolation>) {
            None => Isolation::Dedicated,
            Some(Ok(i)) => i,
            Some(Err(e)) => {
                errors.push(FieldError::new("isolation", e.0));
                Isolation::Dedicated
            }
        };
        if let Some(Err(e)) = self.rate_limit.as_ref().map(RateLimit::validate) {
            errors.push(FieldError::new("rate_limit", e.0));
        }
        if isolation == Isolation::Shared && self.database.is_some() {
            errors.push(FieldError::new(
                "database",
                "a shared tenant lives in the shared database; omit it",
            ));
        }
        match (id, hosts, pool) {
            (Some(id), Some(hosts), Some(pool)) if errors.is_empty() => Ok(NewTenant {
                id,
                hosts,
                database,
                pool,
                state,
                isolation,
                adopt: self.adopt.unwrap_or(false),
                rate_limit: self.rate_limit,
            }),
            _ => Err(errors),
        }
    }
}

fn parse_hosts(raw: &[String], errors: &mut Vec<FieldError>) -> Option<Vec<TenantHost>> {
    if raw.is_empty() {
        errors.push(FieldError::new("hosts", "needs at least one host"));
        return None;
    }
    if raw.len() > 100 {
        errors.push(FieldError::new("hosts", "at most 100 hosts per tenant"));
        return None;
    }
    let mut hosts: Vec<TenantHost> = Vec::with_capacity(raw.len());
    let mut ok = true;
    for (i, h) in raw.iter().enumerate() {
        match TenantHost::parse(h) {
            Ok(host) => hosts.push(host),
            Err(e) => {
                ok = false;
                errors.push(FieldError::new(format!("hosts[{i}]"), e.0));
            }
        }
    }
    hosts.sort();
    hosts.dedup();
    ok.then_some(hosts)
}

fn parse_database(raw: Option<&str>, errors: &mut Vec<FieldError>) -> Option<DatabaseUrl> {
    raw.and_then(|url| {
        DatabaseUrl::parse(url)
            .map_err(|e| errors.push(FieldError::new("database", e.0)))
            .ok()
    })
}

fn parse_pool(
    raw: Option<PoolRequest>,
    base: PoolSettings,
    errors: &mut Vec<FieldError>,
) -> Option<PoolSettings> {
    let Some(raw) = raw else { return Some(base) };
    let pool = PoolSettings {
        max_connections: raw.max_connections.unwrap_or(base.max_connections),
        idle_timeout_secs: raw.idle_timeout_secs.unwrap_or(base.idle_timeout_secs),
        statement_timeout_ms: raw
            .statement_timeout_ms
            .unwrap_or(base.statement_timeout_ms),
        idle_in_transaction_timeout_ms: raw
            .idle_in_transaction_timeout_ms
            .unwrap_or(base.idle_in_transaction_timeout_ms),
    };
    match pool.validate() {
        Ok(()) => Some(pool),
        Err(e) => {
            errors.push(FieldError::new("pool", e.0));
            None
        }
    }
}

fn parse_state(raw: Option<&str>, errors: &mut Vec<FieldError>) -> Option<TenantState> {
    raw.and_then(|s| {
        s.parse::<TenantState>()
            .map_err(|_| errors.push(FieldError::new("state", "must be 'active' or 'suspended'")))
            .ok()
    })
}

/// Why a tenant operation failed. Converts into the matching problem response.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// 422.
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    /// 404.
    #[error("no tenant '{0}'")]
    NotFound(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 412: the tenant is at another version than `If-Match` said.
    #[error("the tenant is at version {current}, not the one given in If-Match")]
    Stale {
        /// Its version now.
        current: i64,
    },
    /// Provisioning failed; nothing was kept.
    #[error("provisioning failed, nothing was kept and retrying is safe: {0:#}")]
    Provisioning(anyhow::Error),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Invalid(errors) => ApiError::Invalid(errors),
            OpError::NotFound(_) => ApiError::NotFound(e.to_string()),
            OpError::Conflict(msg) => ApiError::Conflict(msg),
            OpError::Stale { .. } => {
                ApiError::Client(http::StatusCode::PRECONDITION_FAILED, e.to_string())
            }
            OpError::Provisioning(_) => {
                tracing::error!(error = %e, "provisioning a tenant failed");
                // The cause names the failing migration or server; URLs in it are redacted.
                ApiError::Client(http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            OpError::Other(e) => ApiError::Internal(e),
        }
    }
}

fn write_error(e: WriteError, id: &TenantId) -> OpError {
    match e {
        WriteError::Leftover(l) => OpError::Conflict(leftover_message(&l)),
        WriteError::WildcardTaken { host, owner } => OpError::Conflict(format!(
            "host '{host}' is the wildcard host of tenant '{owner}'"
        )),
        WriteError::HostTaken { host, owner } => {
            OpError::Conflict(format!("host '{host}' already belongs to tenant '{owner}'"))
        }
        WriteError::IdTaken => OpError::Conflict(format!("a tenant '{id}' already exists")),
        WriteError::NotFound => OpError::NotFound(id.to_string()),
        WriteError::Stale { current } => OpError::Stale { current },
        WriteError::Other(e) => OpError::Other(e),
    }
}

fn leftover_message(l: &Leftover) -> String {
    let what = match l.isolation {
        Isolation::Dedicated => format!(
            "its database '{}'",
            l.database.database_name().unwrap_or_else(|| "?".into())
        ),
        Isolation::Shared => "its rows in the shared database".to_string(),
    };
    format!(
        "tenant '{id}' was removed (version {v}) and {what}, jobs and files were kept. \
         Create it with \"adopt\": true to take that data back, or discard it first: \
         DELETE /admin/leftovers/{id} (CLI: tenant-router tenants purge {id})",
        id = l.tenant_id,
        v = l.removed_version,
    )
}

impl From<Refused> for OpError {
    fn from(e: Refused) -> Self {
        match e {
            Refused::Other(e) => Self::Other(e),
            refused => Self::Conflict(refused.to_string()),
        }
    }
}

/// What a removal did.
#[derive(Debug, Clone, Serialize)]
pub struct Removal {
    /// The removed tenant.
    pub id: TenantId,
    /// The version of the removal.
    pub version: i64,
    /// Whether its database was dropped (or its shared rows deleted).
    pub database_dropped: bool,
    /// Whether everything else of it was deleted: Redis keys, jobs, files.
    pub purged: bool,
    /// What the purge removed from Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<crate::namespace::Purged>,
}

/// What a move did.
#[derive(Debug, Clone, Serialize)]
pub struct MoveReport {
    /// The tenant.
    pub id: TenantId,
    /// Where it was.
    pub from: Isolation,
    /// Where it is.
    pub to: Isolation,
    /// The version of the switch.
    pub version: i64,
    /// Rows copied per table (equal at source and target).
    pub copied: Vec<crate::moving::Copied>,
}

/// Tenant writes. Cheap to clone.
#[derive(Clone)]
pub struct TenantOps {
    control: ControlDb,
    provision_server: DatabaseUrl,
    migrations: TenantMigrations,
    publisher: Option<Publisher>,
    local: Option<Arc<ConfigSync>>,
    drop_wait: Duration,
    shared: Option<(SharedDb, DatabaseUrl)>,
    shared_ready: Arc<tokio::sync::OnceCell<()>>,
    redis: Option<(deadpool_redis::Pool, crate::namespace::RedisNamespace)>,
    files_dir: Option<std::path::PathBuf>,
}

impl TenantOps {
    /// Operations on `control`, provisioning on `provision_server`.
    pub fn new(
        control: ControlDb,
        provision_server: DatabaseUrl,
        migrations: TenantMigrations,
    ) -> Self {
        Self {
            control,
            provision_server,
            migrations,
            publisher: None,
            local: None,
            drop_wait: DROP_WAIT,
            shared: None,
            shared_ready: Arc::default(),
            redis: None,
            files_dir: None,
        }
    }

    /// Where jobs keep a tenant's Redis keys, so a purge deletes them.
    pub fn with_redis(
        mut self,
        redis: Option<(deadpool_redis::Pool, crate::namespace::RedisNamespace)>,
    ) -> Self {
        self.redis = redis;
        self
    }

    /// Where jobs keep a tenant's files (`<dir>/<id>`), so a purge deletes them.
    pub fn with_files_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.files_dir = dir;
        self
    }

    /// The control database.
    pub fn control(&self) -> &ControlDb {
        &self.control
    }

    /// Where shared tenants live.
    pub fn with_shared(mut self, url: Option<DatabaseUrl>) -> Self {
        self.shared = url.map(|u| (SharedDb::connect_lazy(&u), u));
        self
    }

    async fn shared_db(&self) -> Result<&(SharedDb, DatabaseUrl), OpError> {
        let shared = self.shared.as_ref().ok_or_else(|| {
            OpError::Invalid(vec![FieldError::new(
                "isolation",
                "no shared database is configured (TENANT_ROUTER_SHARED_DATABASE_URL)",
            )])
        })?;
        self.shared_ready
            .get_or_try_init(|| async { shared.0.prepare().await.map(drop) })
            .await
            .map_err(OpError::Other)?;
        Ok(shared)
    }

    /// Announces every change on the bus.
    pub fn with_publisher(mut self, publisher: Option<Publisher>) -> Self {
        self.publisher = publisher;
        self
    }

    /// Applies every change to this instance's registry before returning, so the instance
    /// that made a change serves it at once.
    pub fn with_local_sync(mut self, sync: Arc<ConfigSync>) -> Self {
        self.local = Some(sync);
        self
    }

    /// How long a dropping removal waits for connections to close.
    pub fn with_drop_wait(mut self, wait: Duration) -> Self {
        self.drop_wait = wait;
        self
    }

    /// Creates a tenant. Without a database, one is created and migrated first; on any
    /// failure what was created is dropped again. Data already there (what a removal of
    /// this id kept, an existing `tenant_<id>` database, rows in the shared schema) is a 409
    /// unless `adopt` is set.
    pub async fn create(&self, new: NewTenant) -> Result<Tenant, OpError> {
        // Clear answers before any work; the write below re-checks atomically.
        if self.control.get_tenant(&new.id).await?.is_some() {
            return Err(OpError::Conflict(format!(
                "a tenant '{}' already exists",
                new.id
            )));
        }
        for host in &new.hosts {
            if let Some(owner) = self.control.host_owner(host).await? {
                return Err(OpError::Conflict(format!(
                    "host '{host}' already belongs to tenant '{owner}'"
                )));
            }
        }
        // One operation per tenant: a second create of the id (from any instance) waits for
        // nothing and gets a 409; one killed half-way is resumed by the next.
        let mut op = self
            .control
            .begin_operation(
                &new.id,
                "create",
                serde_json::json!({"isolation": new.isolation.as_str()}),
            )
            .await?;
        let result = self.create_locked(&new, &mut op).await;
        // A database an interrupted run of this create made, and this run did not use
        // (it failed, or the tenant went elsewhere): never left behind unowned.
        let made = op
            .resumed()
            .and_then(|r| r.detail.get("database"))
            .and_then(|d| d.as_str());
        if let Some(name) = made {
            let used_here = result
                .as_ref()
                .is_ok_and(|t| t.database.database_name().as_deref() == Some(name));
            if !used_here && self.control.tenant_using_database(name).await?.is_none() {
                self.drop_quietly(name).await;
            }
        }
        match &result {
            Ok(_) => op.finish("done").await,
            Err(e) => op.finish(&format!("failed: {e}")).await,
        }
        let tenant = result?;
        self.announce(HintOp::Upsert, &tenant.id, tenant.version)
            .await;
        Ok(tenant)
    }

    async fn create_locked(&self, new: &NewTenant, op: &mut Operation) -> Result<Tenant, OpError> {
        if self.control.get_tenant(&new.id).await?.is_some() {
            return Err(OpError::Conflict(format!(
                "a tenant '{}' already exists",
                new.id
            )));
        }
        // The database an interrupted create of this id made: it holds nothing but
        // migrations (the tenant was never committed, so never served).
        let made_before: Option<String> = op
            .resumed()
            .and_then(|r| r.detail.get("database"))
            .and_then(|d| d.as_str())
            .map(str::to_string);
        let leftover = self.control.leftover(&new.id).await?;
        let mut incarnation = None;
        let mut registered = false;
        let mut created_here: Option<String> = None;
        let (database, provisioned) = match (&leftover, new.isolation) {
            (Some(l), _) if !new.adopt => return Err(OpError::Conflict(leftover_message(l))),
            (Some(l), isolation) => {
                if l.isolation != isolation {
                    return Err(OpError::Conflict(format!(
                        "the kept data of tenant '{}' is {}; adopt it as {} and move it \
                         afterwards",
                        new.id,
                        l.isolation.as_str(),
                        l.isolation.as_str()
                    )));
                }
                if new.database.as_ref().is_some_and(|d| *d != l.database) {
                    return Err(OpError::Conflict(format!(
                        "the kept data of tenant '{}' is in another database; omit `database` \
                         to adopt it",
                        new.id
                    )));
                }
                incarnation = Some(l.incarnation);
                match isolation {
                    Isolation::Shared => {
                        let (db, url) = self.shared_db().await?;
                        db.register(&new.id).await?;
                        (url.clone(), false)
                    }
                    Isolation::Dedicated => {
                        let migrator = self
                            .migrations
                            .load()
                            .await
                            .map_err(OpError::Provisioning)?;
                        if let provision::MigrationOutcome::Failed(e) =
                            provision::migrate_tenant_with(&l.database, &migrator).await
                        {
                            return Err(OpError::Provisioning(anyhow::anyhow!(
                                "migrating the adopted database: {e}"
                            )));
                        }
                        crate::moving::lift_guard(&l.database).await?;
                        (l.database.clone(), l.provisioned)
                    }
                }
            }
            (None, Isolation::Shared) => {
                let (db, url) = self.shared_db().await?;
                registered = db.register(&new.id).await?;
                if !registered && !new.adopt && db.has_rows(&new.id).await? {
                    return Err(OpError::Conflict(format!(
                        "the shared database holds rows of tenant '{}' that no tenant owns; \
                         create it with \"adopt\": true to take them over, or delete them \
                         first (DELETE /admin/leftovers/{})",
                        new.id, new.id
                    )));
                }
                (url.clone(), false)
            }
            (None, Isolation::Dedicated) if new.database.is_some() => {
                // A database given by hand is adopted by saying so, unless another tenant
                // (or a removed tenant's kept data) has it.
                let database = new.database.clone().unwrap_or_else(|| unreachable!());
                self.check_database_free(&new.id, &database).await?;
                (database, false)
            }
            (None, Isolation::Dedicated) => {
                let name = provision::database_name(&new.id);
                if let Some(user) = self.control.tenant_using_database(&name).await? {
                    return Err(OpError::Conflict(format!(
                        "database '{name}' is already used by tenant '{user}'"
                    )));
                }
                let exists = provision::database_exists(&self.provision_server, &name).await?;
                let ours = made_before.as_deref() == Some(name.as_str());
                if exists && !ours && !new.adopt {
                    return Err(OpError::Conflict(format!(
                        "database '{name}' already exists on the provisioning server and \
                         belongs to no tenant (left by an earlier tenant, or made by hand); \
                         create with \"adopt\": true to take it over as this tenant's, or \
                         drop it first"
                    )));
                }
                // The journal says whether this create makes the database (and may drop it on
                // a rollback) or adopts one that was there (never dropped).
                let detail = if exists && !ours {
                    serde_json::json!({"adopting": name})
                } else {
                    serde_json::json!({"database": name})
                };
                op.step("provisioning", detail, None).await?;
                let migrator = self
                    .migrations
                    .load()
                    .await
                    .map_err(OpError::Provisioning)?;
                let made = provision::provision(&self.provision_server, &new.id, &migrator)
                    .await
                    .map_err(OpError::Provisioning)?;
                tracing::info!(tenant.id = %new.id, database = %made.database,
                    migrations = made.migrations, adopted = exists && !ours, "provisioned");
                if exists && !ours {
                    crate::moving::lift_guard(&made.database).await?;
                }
                if !exists || ours {
                    created_here = Some(name);
                }
                op.step("provisioned", serde_json::json!({}), None).await?;
                // An existing database adopted by hand was not made by the router: it is
                // never dropped by it.
                (made.database, !exists || ours)
            }
        };
        let spec = TenantSpec {
            id: new.id.clone(),
            hosts: new.hosts.clone(),
            database,
            provisioned,
            pool: new.pool,
            state: new.state,
            isolation: new.isolation,
            incarnation,
            rate_limit: new.rate_limit,
        };
        match self.control.write(&spec, WriteMode::Create).await {
            Ok(written) => {
                if incarnation.is_some() {
                    // Adopted: its jobs that waited for this run now.
                    #[cfg(feature = "jobs")]
                    if let Some((pool, ns)) = &self.redis {
                        let keys = crate::jobs::Keys::from(ns);
                        if let Err(e) = crate::jobs::wake_tenant(pool, &keys, &new.id).await {
                            tracing::warn!(tenant.id = %new.id, error = %e,
                                "the adopted tenant's waiting jobs run at their next look");
                        }
                    }
                }
                Ok(written.tenant)
            }
            Err(e) => {
                if let Some(name) = &created_here {
                    self.drop_quietly(name).await;
                }
                if registered {
                    if let Some((db, _)) = &self.shared {
                        let _ = db.unregister(&new.id).await;
                    }
                }
                Err(write_error(e, &new.id))
            }
        }
    }

    /// Refuses a database that another tenant uses, or that a removed tenant's kept data is
    /// in: two tenants on one database would read each other's rows.
    async fn check_database_free(
        &self,
        id: &TenantId,
        database: &DatabaseUrl,
    ) -> Result<(), OpError> {
        let Some(name) = database.database_name() else {
            return Err(OpError::Invalid(vec![FieldError::new(
                "database",
                "must name a database",
            )]));
        };
        // The router's own databases hold every tenant's configuration, or every shared
        // tenant's rows: never one tenant's.
        let shared = self
            .shared
            .as_ref()
            .and_then(|(_, url)| url.database_name());
        if self.control.url().database_name().as_deref() == Some(name.as_str())
            || shared.as_deref() == Some(name.as_str())
        {
            return Err(OpError::Conflict(format!(
                "database '{name}' is tenant-router's control or shared database, never a \
                 tenant's"
            )));
        }
        let users = self.control.database_users(&name).await?;
        if let Some((owner, _)) = users.iter().find(|(owner, _)| owner != id.as_str()) {
            return Err(OpError::Conflict(format!(
                "database '{name}' is already the database of tenant '{owner}' (or of its kept \
                 data); two tenants never share a database name, on any server"
            )));
        }
        // It must be reachable, and writable by a tenant again if an earlier move out of it
        // left its guard.
        crate::moving::lift_guard(database).await.map_err(|e| {
            OpError::Invalid(vec![FieldError::new(
                "database",
                format!("cannot be used: {e:#}"),
            )])
        })?;
        Ok(())
    }

    /// Changes a tenant. With `if_match`, a tenant at another version is refused
    /// ([`OpError::Stale`]); without it, a concurrent change is merged with, never lost.
    /// Refused with a 409 while another operation (a move, a removal) runs on the tenant.
    pub async fn update(
        &self,
        id: &TenantId,
        patch: TenantPatchRequest,
        if_match: Option<i64>,
    ) -> Result<Tenant, OpError> {
        let lock = self.control.lock_tenant(id).await?;
        let result = self.update_locked(id, patch, if_match).await;
        lock.finish("").await;
        result
    }

    async fn update_locked(
        &self,
        id: &TenantId,
        patch: TenantPatchRequest,
        if_match: Option<i64>,
    ) -> Result<Tenant, OpError> {
        for _attempt in 0..5 {
            let current = self
                .control
                .get_tenant(id)
                .await?
                .ok_or_else(|| OpError::NotFound(id.to_string()))?;
            if let Some(expected) = if_match {
                if expected != current.version {
                    return Err(OpError::Stale {
                        current: current.version,
                    });
                }
            }
            let provisioned = self.control.is_provisioned(id).await?;
            let spec = merge(&current, provisioned, &patch).map_err(OpError::Invalid)?;
            if spec.database != current.database {
                self.check_database_free(id, &spec.database).await?;
            }
            match self
                .control
                .write(
                    &spec,
                    WriteMode::Update {
                        expected_version: Some(current.version),
                    },
                )
                .await
            {
                Ok(written) => {
                    if written.tenant.version != current.version {
                        self.announce(HintOp::Upsert, id, written.tenant.version)
                            .await;
                    }
                    return Ok(written.tenant);
                }
                // Someone else changed it between our read and our write.
                Err(WriteError::Stale { current }) if if_match.is_some() => {
                    return Err(OpError::Stale { current });
                }
                Err(WriteError::Stale { .. }) => continue,
                Err(e) => return Err(write_error(e, id)),
            }
        }
        Err(OpError::Conflict(format!(
            "tenant '{id}' kept changing under this update; retry"
        )))
    }

    /// Removes a tenant. Without `purge`, everything of it stays (its database or shared
    /// rows, Redis keys, jobs, files) as a [`Leftover`] that only an explicit adopt brings
    /// back. With `purge`, all of it is deleted: a database only when the router created it,
    /// once no instance holds a connection to it, or after [`DROP_WAIT`]. A removal killed
    /// half-way is completed by retrying it.
    pub async fn remove(&self, id: &TenantId, purge: bool) -> Result<Removal, OpError> {
        let mut op = self
            .control
            .begin_operation(id, "remove", serde_json::json!({"purge": purge}))
            .await?;
        let resumed = op.resumed().cloned();
        let purge = purge
            || resumed
                .as_ref()
                .is_some_and(|r| r.detail.get("purge") == Some(&serde_json::Value::Bool(true)));
        let resuming = resumed.is_some();
        let result = self.remove_locked(id, purge, resuming, &mut op).await;
        match &result {
            Ok(_) => op.finish("done").await,
            // Nothing was done: the journal closes. Anything half-done leaves it open.
            Err(e @ (OpError::NotFound(_) | OpError::Conflict(_))) if !resuming => {
                op.finish(&format!("refused: {e}")).await
            }
            Err(e) => {
                tracing::error!(tenant.id = %id, error = %e,
                    "a removal stopped half-way; retry it to complete it");
                op.abandon().await;
            }
        }
        result
    }

    async fn remove_locked(
        &self,
        id: &TenantId,
        purge: bool,
        resuming: bool,
        op: &mut Operation,
    ) -> Result<Removal, OpError> {
        let current = self.control.get_tenant(id).await?;
        let version = match &current {
            Some(t) => {
                if purge
                    && t.isolation == Isolation::Dedicated
                    && !self.control.is_provisioned(id).await?
                {
                    return Err(OpError::Conflict(format!(
                        "tenant '{id}' uses a database tenant-router did not create; it is \
                         never dropped (remove it without drop_database)"
                    )));
                }
                let removed = self
                    .control
                    .delete(id)
                    .await?
                    .ok_or_else(|| OpError::NotFound(id.to_string()))?;
                self.announce(HintOp::Remove, id, removed.version).await;
                op.step(
                    "removed",
                    serde_json::json!({"version": removed.version}),
                    None,
                )
                .await?;
                removed.version
            }
            // A removal killed after its commit: finish what it started, announcing it
            // again in case it died before it could.
            None if resuming => {
                let version = self
                    .control
                    .leftover(id)
                    .await?
                    .map_or(0, |l| l.removed_version);
                self.announce(HintOp::Remove, id, version).await;
                version
            }
            None => return Err(OpError::NotFound(id.to_string())),
        };
        if !purge {
            return Ok(Removal {
                id: id.clone(),
                version,
                database_dropped: false,
                purged: false,
                redis: None,
            });
        }
        let Some(leftover) = self.control.leftover(id).await? else {
            return Ok(Removal {
                id: id.clone(),
                version,
                database_dropped: false,
                purged: true,
                redis: None,
            });
        };
        let (database_dropped, redis) = self.purge_leftover(id, &leftover).await?;
        Ok(Removal {
            id: id.clone(),
            version,
            database_dropped,
            purged: true,
            redis,
        })
    }

    /// Deletes what a removal kept (see [`Self::remove`]): `DELETE /admin/leftovers/{id}`.
    pub async fn discard_leftover(&self, id: &TenantId) -> Result<Removal, OpError> {
        let op = self
            .control
            .begin_operation(id, "remove", serde_json::json!({"purge": true}))
            .await?;
        let result = async {
            if self.control.get_tenant(id).await?.is_some() {
                return Err(OpError::Conflict(format!(
                    "tenant '{id}' exists; remove it with DELETE /admin/tenants/{id}?drop_database=true"
                )));
            }
            let leftover = match self.control.leftover(id).await? {
                Some(l) => l,
                None => {
                    // Rows in the shared schema that no leftover records (a crashed create
                    // or move of an earlier version): deletable too.
                    let has_rows = match &self.shared {
                        Some(_) => self.shared_db().await?.0.has_rows(id).await?,
                        None => false,
                    };
                    if !has_rows {
                        return Err(OpError::NotFound(format!("{id} (no kept data)")));
                    }
                    let rows = self.shared_db().await?.0.purge(id).await?;
                    tracing::info!(tenant.id = %id, rows, "deleted unowned shared rows");
                    return Ok(Removal {
                        id: id.clone(),
                        version: 0,
                        database_dropped: true,
                        purged: true,
                        redis: None,
                    });
                }
            };
            let (database_dropped, redis) = self.purge_leftover(id, &leftover).await?;
            Ok(Removal {
                id: id.clone(),
                version: leftover.removed_version,
                database_dropped,
                purged: true,
                redis,
            })
        }
        .await;
        match &result {
            Ok(_) => op.finish("done").await,
            Err(e) => op.finish(&format!("failed: {e}")).await,
        }
        result
    }

    /// Deletes the data of a removed incarnation: its database (when the router made it) or
    /// shared rows, its Redis keys and jobs, its files; then forgets the leftover.
    async fn purge_leftover(
        &self,
        id: &TenantId,
        leftover: &Leftover,
    ) -> Result<(bool, Option<crate::namespace::Purged>), OpError> {
        let mut database_dropped = false;
        match leftover.isolation {
            Isolation::Shared => {
                let (db, _) = self.shared_db().await?;
                let rows = db.purge(id).await.map_err(|e| {
                    OpError::Other(e.context(format!(
                        "tenant '{id}' was removed, but its shared rows could not be deleted; \
                         retry the removal"
                    )))
                })?;
                tracing::info!(tenant.id = %id, rows, "purged a shared tenant's rows");
                database_dropped = true;
            }
            Isolation::Dedicated if leftover.provisioned => {
                let name = leftover
                    .database
                    .database_name()
                    .context("the provisioned database URL names no database")?
                    .to_string();
                let users = self.control.database_users(&name).await?;
                if let Some((user, _)) = users.iter().find(|(user, _)| user != id.as_str()) {
                    return Err(OpError::Conflict(format!(
                        "database '{name}' of the removed tenant '{id}' is now used by tenant \
                         '{user}'; it is not dropped"
                    )));
                }
                self.wait_until_unused(&name).await;
                provision::drop_database(&self.provision_server, &name)
                    .await
                    .map_err(|e| {
                        OpError::Other(e.context(format!(
                            "tenant '{id}' was removed, but its database could not be \
                             dropped; retry the removal"
                        )))
                    })?;
                database_dropped = true;
            }
            Isolation::Dedicated => {}
        }
        let redis = match &self.redis {
            Some((pool, ns)) => Some(
                purge_redis(pool, ns, id, leftover.incarnation)
                    .await
                    .map_err(|e| {
                        OpError::Other(anyhow::anyhow!(
                            "tenant '{id}' was removed, but its Redis keys could not be \
                             deleted ({e}); retry the removal"
                        ))
                    })?,
            ),
            None => None,
        };
        if let Some(dir) = &self.files_dir {
            let path = dir.join(id.as_str());
            match tokio::fs::remove_dir_all(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(OpError::Other(anyhow::anyhow!(
                        "tenant '{id}' was removed, but its files ({}) could not be deleted \
                         ({e}); retry the removal",
                        path.display()
                    )));
                }
            }
        }
        self.control
            .forget_leftover(id, leftover.incarnation)
            .await?;
        Ok((database_dropped, redis))
    }

    /// Moves a tenant to its own database or to the shared one: copies its rows, checks the
    /// counts, closes the source to writes, switches its configuration in one version bump,
    /// then deletes the source rows (see [`crate::moving`]). Only this tenant's writes wait
    /// meanwhile. One operation per tenant: a second move while one runs is a 409; a move to
    /// where the tenant is already does nothing; a move killed anywhere is completed by
    /// retrying it.
    pub async fn move_tenant(&self, id: &TenantId, to: Isolation) -> Result<MoveReport, OpError> {
        let mut op = self
            .control
            .begin_operation(id, "move", serde_json::json!({"to": to.as_str()}))
            .await?;
        let result = self.move_locked(id, to, &mut op).await;
        match &result {
            Ok(_) => op.finish("done").await,
            Err(e) if op.is_clean() => op.finish(&format!("failed: {e}")).await,
            Err(e) => {
                tracing::error!(tenant.id = %id, error = %e,
                    "a move stopped half-way; retry it to complete it");
                op.abandon().await;
            }
        }
        result
    }

    async fn move_locked(
        &self,
        id: &TenantId,
        to: Isolation,
        op: &mut Operation,
    ) -> Result<MoveReport, OpError> {
        use crate::moving::{Source, copy_to_dedicated, copy_to_shared};
        let resumed = op.resumed().cloned();
        if resumed
            .as_ref()
            .is_some_and(|r| r.detail.get("to").and_then(|t| t.as_str()) != Some(to.as_str()))
        {
            let r = resumed
                .as_ref()
                .map(|r| r.detail.clone())
                .unwrap_or_default();
            op.mark_dirty();
            return Err(OpError::Conflict(format!(
                "an interrupted move of tenant '{id}' (to {}) must be completed first: retry it",
                r.get("to").and_then(|t| t.as_str()).unwrap_or("?")
            )));
        }
        let current = self
            .control
            .get_tenant(id)
            .await?
            .ok_or_else(|| OpError::NotFound(id.to_string()))?;
        if current.isolation == to {
            // Where it should be. A move killed after its switch left the source's rows:
            // delete them now (the journal knows where they are).
            if let Some(r) = &resumed {
                let from: Option<Isolation> = r
                    .detail
                    .get("from")
                    .and_then(|f| f.as_str())
                    .and_then(|f| f.parse().ok());
                if let (Some(from), Some(source)) = (from, &r.database) {
                    op.mark_dirty();
                    // The switch may never have been announced (killed right after it).
                    self.announce(HintOp::Upsert, id, current.version).await;
                    let source_provisioned =
                        r.detail.get("source_provisioned") == Some(&serde_json::Value::Bool(true));
                    self.retire_source(from, source, source_provisioned, id)
                        .await
                        .map_err(|e| {
                            OpError::Other(e.context("deleting the rows left at the source"))
                        })?;
                    tracing::info!(tenant.id = %id, "completed an interrupted move");
                }
            }
            return Ok(MoveReport {
                id: id.clone(),
                from: current.isolation,
                to,
                version: current.version,
                copied: Vec::new(),
            });
        }
        if current.isolation == Isolation::Dedicated {
            if let Some(name) = current.database.database_name() {
                let users = self.control.database_users(&name).await?;
                if let Some((other, _)) = users.iter().find(|(user, _)| user != id.as_str()) {
                    return Err(OpError::Conflict(format!(
                        "tenant '{id}' shares database '{name}' with tenant '{other}': a move \
                         would close it to both; give one of them a database of its own first"
                    )));
                }
            }
        }
        let source_provisioned = self.control.is_provisioned(id).await?;
        op.step(
            "started",
            serde_json::json!({
                "from": current.isolation.as_str(),
                "source_provisioned": source_provisioned,
            }),
            Some(&current.database),
        )
        .await?;
        // What an interrupted run of this move made at the target is its own to replace;
        // anything else there is someone's data, never overwritten.
        let made_before = |key: &str| {
            resumed
                .as_ref()
                .and_then(|r| r.detail.get(key))
                .and_then(|v| v.as_bool())
                == Some(true)
        };
        let (shared, shared_url) = self.shared_db().await?;
        let (target, provisioned) = match to {
            Isolation::Shared => {
                let registered = shared.register(id).await?;
                if !registered && !made_before("target_registered") && shared.has_rows(id).await? {
                    return Err(OpError::Conflict(format!(
                        "the shared database holds rows of tenant '{id}' that no tenant owns; \
                         delete them first (DELETE /admin/leftovers/{id})"
                    )));
                }
                op.step(
                    "target",
                    serde_json::json!({"target_registered": true}),
                    None,
                )
                .await?;
                (shared_url.clone(), false)
            }
            Isolation::Dedicated => {
                let name = provision::database_name(id);
                if let Some(owner) = self.control.database_owner(&name).await? {
                    return Err(OpError::Conflict(format!(
                        "database '{name}' is the database of tenant '{owner}' (or of its kept \
                         data); tenant '{id}' cannot move there"
                    )));
                }
                if provision::database_exists(&self.provision_server, &name).await?
                    && !made_before("target_created")
                {
                    return Err(OpError::Conflict(format!(
                        "database '{name}' already exists on the provisioning server and \
                         belongs to no tenant; drop it first, then move"
                    )));
                }
                op.step("target", serde_json::json!({"target_created": true}), None)
                    .await?;
                let migrator = self
                    .migrations
                    .load()
                    .await
                    .map_err(OpError::Provisioning)?;
                let made = provision::provision(&self.provision_server, id, &migrator)
                    .await
                    .map_err(OpError::Provisioning)?;
                (made.database, true)
            }
        };
        let (source, rows) = Source::lock(current.isolation, &current.database, id).await?;
        // The version check before anything destructive: nothing changed the tenant since
        // it was read (the operation lock keeps other writers of this tenant out; this
        // catches one that bypassed it).
        let now = self.control.get_tenant(id).await?;
        if now.as_ref().map(|t| t.version) != Some(current.version) {
            source.abandon().await;
            return Err(OpError::Conflict(format!(
                "tenant '{id}' changed while the move started; retry"
            )));
        }
        let copied = match to {
            Isolation::Shared => copy_to_shared(shared, id, &rows).await,
            Isolation::Dedicated => copy_to_dedicated(&target, &rows).await,
        };
        let copied = match copied {
            Ok(c) => c,
            Err(e) => {
                source.abandon().await;
                return Err(OpError::Other(
                    e.context("copying the tenant's rows; nothing was switched"),
                ));
            }
        };
        op.step("copied", serde_json::json!({}), None).await?;
        op.mark_dirty();
        source
            .guard(id)
            .await
            .map_err(|e| OpError::Other(e.context("closing the source to writes")))?;
        op.step("guarded", serde_json::json!({}), None).await?;
        let spec = TenantSpec {
            id: id.clone(),
            hosts: current.hosts.clone(),
            database: target,
            provisioned,
            pool: current.pool,
            state: current.state,
            isolation: to,
            incarnation: None,
            rate_limit: current.rate_limit,
        };
        let written = self
            .control
            .write(
                &spec,
                WriteMode::Update {
                    expected_version: Some(current.version),
                },
            )
            .await
            .map_err(|e| write_error(e, id))?;
        op.step("switched", serde_json::json!({}), None).await?;
        self.announce(HintOp::Upsert, id, written.tenant.version)
            .await;
        op.step("announced", serde_json::json!({}), None).await?;
        self.retire_source(current.isolation, &current.database, source_provisioned, id)
            .await
            .map_err(|e| {
                OpError::Other(e.context(format!(
                    "tenant '{id}' was switched to {}, but its old rows could not be deleted; \
                     retry the move to delete them",
                    to.as_str()
                )))
            })?;
        Ok(MoveReport {
            id: id.clone(),
            from: current.isolation,
            to,
            version: written.tenant.version,
            copied,
        })
    }

    /// Completes or rolls back an interrupted operation on `id` (see
    /// [`crate::journal`]): a move or removal is completed, a create is rolled back (its
    /// database dropped; the client's retry creates it again).
    pub async fn repair(&self, id: &TenantId) -> Result<String, OpError> {
        let Some(open) = self.control.unfinished_operation(id).await? else {
            return Ok(format!("tenant '{id}': nothing to repair"));
        };
        match open.kind.as_str() {
            "move" => {
                let to: Isolation = open
                    .detail
                    .get("to")
                    .and_then(|t| t.as_str())
                    .and_then(|t| t.parse().ok())
                    .context("the journal names no target")?;
                let report = self.move_tenant(id, to).await?;
                Ok(format!(
                    "tenant '{id}': the move to {} is complete (version {})",
                    to.as_str(),
                    report.version
                ))
            }
            "remove" => {
                let purge = open.detail.get("purge") == Some(&serde_json::Value::Bool(true));
                let removal = self.remove(id, purge).await?;
                Ok(format!(
                    "tenant '{id}': the removal is complete (version {}, purged: {})",
                    removal.version, removal.purged
                ))
            }
            "create" => {
                let op = self
                    .control
                    .begin_operation(id, "create", serde_json::json!({}))
                    .await?;
                let mut said = format!("tenant '{id}': the interrupted create was rolled back");
                if self.control.get_tenant(id).await?.is_some() {
                    said = format!("tenant '{id}': the create had completed");
                } else if let Some(name) = open.detail.get("database").and_then(|d| d.as_str()) {
                    if self.control.tenant_using_database(name).await?.is_none() {
                        self.drop_quietly(name).await;
                        said.push_str(&format!(" (database '{name}' dropped)"));
                    }
                }
                op.finish("rolled back").await;
                Ok(said)
            }
            other => Err(OpError::Conflict(format!(
                "tenant '{id}': an unknown operation '{other}' is open in the journal"
            ))),
        }
    }

    /// The last step of a move: the source's rows go. A dedicated database the router made
    /// is dropped (once no instance holds a connection to it, or after the drop wait), so an
    /// instance that missed the switch finds no database, not an empty one, and catches up;
    /// a database given by hand keeps its guard and loses its rows.
    async fn retire_source(
        &self,
        from: Isolation,
        source: &DatabaseUrl,
        provisioned: bool,
        id: &TenantId,
    ) -> anyhow::Result<()> {
        match (from, source.database_name()) {
            (Isolation::Dedicated, Some(name)) if provisioned => {
                // Another tenant on it (a database given twice before the rule existed):
                // only this tenant's rows go.
                let users = self.control.database_users(&name).await?;
                if users.iter().any(|(user, _)| user != id.as_str()) {
                    tracing::warn!(tenant.id = %id, database = %name,
                        "the moved tenant's old database is another tenant's too; left as it is");
                    return Ok(());
                }
                self.wait_until_unused(&name).await;
                provision::drop_database(&self.provision_server, &name).await
            }
            _ => crate::moving::clean_source(from, source, id).await,
        }
    }

    async fn wait_until_unused(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + self.drop_wait;
        loop {
            match provision::sessions_on(&self.provision_server, name).await {
                Ok(0) => return,
                Ok(n) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(database = %name, sessions = n,
                        "connections remain after the wait; dropping with FORCE");
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not count sessions");
                    return;
                }
            }
        }
    }

    async fn drop_quietly(&self, name: &str) {
        if let Err(e) = provision::drop_database(&self.provision_server, name).await {
            tracing::error!(database = %name, error = %format!("{e:#}"),
                "could not drop a database whose tenant was refused");
        }
    }

    /// Publishes the hint, then brings this instance's registry up to date.
    async fn announce(&self, op: HintOp, id: &TenantId, version: i64) {
        if let Some(publisher) = &self.publisher {
            let _ = publisher
                .publish(&Hint {
                    op,
                    tenant_id: id.clone(),
                    version,
                })
                .await;
        }
        if let Some(sync) = &self.local {
            if let Err(e) = sync.catch_up().await {
                tracing::warn!(error = %format!("{e:#}"), "applying a change locally failed; the reconcile will");
            }
        }
    }
}

/// The tenant as it will look after `patch`.
fn merge(
    current: &Tenant,
    provisioned: bool,
    patch: &TenantPatchRequest,
) -> Result<TenantSpec, Vec<FieldError>> {
    let mut errors = Vec::new();
    let hosts = match &patch.hosts {
        Some(raw) => parse_hosts(raw, &mut errors),
        None => Some(current.hosts.clone()),
    };
    let database = parse_database(patch.database.as_deref(), &mut errors);
    if current.isolation == Isolation::Shared && database.is_some() {
        errors.push(FieldError::new(
            "database",
            "a shared tenant lives in the shared database; move it with `tenants move`",
        ));
    }
    let pool = parse_pool(patch.pool, current.pool, &mut errors);
    let state = parse_state(patch.state.as_deref(), &mut errors);
    let rate_limit = patch.rate_limit.unwrap_or(current.rate_limit);
    if let Some(Err(e)) = rate_limit.as_ref().map(RateLimit::validate) {
        errors.push(FieldError::new("rate_limit", e.0));
    }
    match (hosts, pool) {
        (Some(hosts), Some(pool)) if errors.is_empty() => {
            let moved = database.as_ref().is_some_and(|d| *d != current.database);
            Ok(TenantSpec {
                id: current.id.clone(),
                hosts,
                // A database given by hand was not created by the router: never drop it.
                provisioned: provisioned && !moved,
                database: database.unwrap_or_else(|| current.database.clone()),
                pool,
                state: state.unwrap_or(current.state),
                isolation: current.isolation,
                incarnation: None,
                rate_limit,
            })
        }
        _ => Err(errors),
    }
}

/// Everything of a removed incarnation in Redis: with jobs, its streams and letters too.
async fn purge_redis(
    pool: &deadpool_redis::Pool,
    ns: &crate::namespace::RedisNamespace,
    id: &TenantId,
    incarnation: i64,
) -> Result<crate::namespace::Purged, String> {
    #[cfg(feature = "jobs")]
    {
        crate::jobs::purge_tenant(pool, &crate::jobs::Keys::from(ns), id, Some(incarnation))
            .await
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "jobs"))]
    {
        let _ = incarnation;
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        let keys = crate::namespace::purge(&mut conn, ns, id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(crate::namespace::Purged {
            keys,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_field_is_named() {
        let request = NewTenantRequest {
            id: Some("Acme'; DROP TABLE tenants;--".into()),
            hosts: Some(vec!["ok.example.com".into(), "bad.example.com:8080".into()]),
            database: Some("mysql://x".into()),
            pool: Some(PoolRequest {
                max_connections: Some(0),
                ..Default::default()
            }),
            state: Some("paused".into()),
            isolation: Some("pooled".into()),
            adopt: None,
            rate_limit: None,
        };
        let errors = request.validate().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["id", "hosts[1]", "database", "pool", "state", "isolation"]
        );
    }

    #[test]
    fn hosts_are_normalised_and_deduplicated() {
        let new = NewTenantRequest {
            id: Some("acme".into()),
            hosts: Some(vec!["ACME.Example.com.".into(), "acme.example.com".into()]),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let hosts: Vec<&str> = new.hosts.iter().map(|h| h.as_str()).collect();
        assert_eq!(hosts, ["acme.example.com"]);
        assert!(new.database.is_none());
        assert_eq!(new.state, TenantState::Active);
    }

    #[test]
    fn a_missing_id_and_empty_hosts_are_refused() {
        let errors = NewTenantRequest {
            hosts: Some(vec![]),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["id", "hosts"]);
    }
}
