//! Tenant writes, shared by the admin API and the CLI: validate, provision, commit to the
//! control database, then announce. The order is the contract: nothing is announced before
//! it is committed, and a provisioning failure leaves nothing behind.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::bus::{Hint, HintOp, Publisher};
use crate::control::{ControlDb, TenantSpec, WriteError, WriteMode};
use crate::problem::{ApiError, FieldError};
use crate::provision::{self, TenantMigrations};
use crate::shared::SharedDb;
use crate::sync::ConfigSync;
use crate::tenant::{
    DatabaseUrl, Isolation, PoolSettings, Tenant, TenantHost, TenantId, TenantState,
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
        WriteError::HostTaken { host, owner } => {
            OpError::Conflict(format!("host '{host}' already belongs to tenant '{owner}'"))
        }
        WriteError::IdTaken => OpError::Conflict(format!("a tenant '{id}' already exists")),
        WriteError::NotFound => OpError::NotFound(id.to_string()),
        WriteError::Stale { current } => OpError::Stale { current },
        WriteError::Other(e) => OpError::Other(e),
    }
}

/// What a removal did.
#[derive(Debug, Clone, Serialize)]
pub struct Removal {
    /// The removed tenant.
    pub id: TenantId,
    /// The version of the removal.
    pub version: i64,
    /// Whether its database was dropped.
    pub database_dropped: bool,
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
        }
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
    /// failure what was created is dropped again.
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
        // Two provisionings of one id wait for each other here (on a connection of its own,
        // outside the pool), so the loser sees the winner's tenant instead of dropping the
        // winner's fresh database. Closing the connection releases the lock.
        let mut lock = None;
        let mut registered = false;
        let (database, provisioned) = match new.database {
            _ if new.isolation == Isolation::Shared => {
                let (db, url) = self.shared_db().await?;
                registered = db.register(&new.id).await?;
                (url.clone(), None)
            }
            Some(url) => (url, None),
            None => {
                let mut conn = self.control.dedicated_connection().await?;
                sqlx::query(
                    "SELECT pg_advisory_lock(hashtextextended('tenant-router:create:' || $1, 0))",
                )
                .bind(new.id.as_str())
                .execute(&mut conn)
                .await
                .context("taking the tenant's creation lock")?;
                lock = Some(conn);
                if self.control.get_tenant(&new.id).await?.is_some() {
                    return Err(OpError::Conflict(format!(
                        "a tenant '{}' already exists",
                        new.id
                    )));
                }
                let name = provision::database_name(&new.id);
                if let Some(user) = self.control.tenant_using_database(&name).await? {
                    return Err(OpError::Conflict(format!(
                        "database '{name}' is already used by tenant '{user}'"
                    )));
                }
                let migrator = self
                    .migrations
                    .load()
                    .await
                    .map_err(OpError::Provisioning)?;
                let made = provision::provision(&self.provision_server, &new.id, &migrator)
                    .await
                    .map_err(OpError::Provisioning)?;
                tracing::info!(tenant.id = %new.id, database = %made.database,
                    migrations = made.migrations, adopted = !made.created, "provisioned");
                (made.database.clone(), Some(made))
            }
        };
        let spec = TenantSpec {
            id: new.id.clone(),
            hosts: new.hosts,
            database,
            provisioned: provisioned.is_some(),
            pool: new.pool,
            state: new.state,
            isolation: new.isolation,
        };
        let written = match self.control.write(&spec, WriteMode::Create).await {
            Ok(w) => w,
            Err(e) => {
                if let Some(made) = &provisioned {
                    self.drop_quietly(made.database.database_name().unwrap_or_default())
                        .await;
                }
                if registered {
                    if let Some((db, _)) = &self.shared {
                        let _ = db.unregister(&new.id).await;
                    }
                }
                return Err(write_error(e, &new.id));
            }
        };
        if let Some(conn) = lock.take() {
            let _ = sqlx::Connection::close(conn).await;
        }
        self.announce(HintOp::Upsert, &written.tenant.id, written.tenant.version)
            .await;
        Ok(written.tenant)
    }

    /// Changes a tenant. With `if_match`, a tenant at another version is refused
    /// ([`OpError::Stale`]); without it, a concurrent change is merged with, never lost.
    pub async fn update(
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

    /// Removes a tenant. With `drop_database`, its database (only one the router created)
    /// is dropped once no instance holds a connection to it, or after [`DROP_WAIT`].
    pub async fn remove(&self, id: &TenantId, drop_database: bool) -> Result<Removal, OpError> {
        let shared = self
            .control
            .get_tenant(id)
            .await?
            .is_some_and(|t| t.isolation == Isolation::Shared);
        if shared {
            let removed = self
                .control
                .delete(id)
                .await?
                .ok_or_else(|| OpError::NotFound(id.to_string()))?;
            self.announce(HintOp::Remove, id, removed.version).await;
            if drop_database {
                let (db, _) = self.shared_db().await?;
                let rows = db.purge(id).await.map_err(|e| {
                    OpError::Other(e.context(format!(
                        "tenant '{id}' was removed, but its shared rows could not be deleted"
                    )))
                })?;
                tracing::info!(tenant.id = %id, rows, "purged a shared tenant's rows");
            }
            return Ok(Removal {
                id: id.clone(),
                version: removed.version,
                database_dropped: drop_database,
            });
        }
        if drop_database && !self.control.is_provisioned(id).await? {
            return match self.control.get_tenant(id).await? {
                None => Err(OpError::NotFound(id.to_string())),
                Some(_) => Err(OpError::Conflict(format!(
                    "tenant '{id}' uses a database tenant-router did not create; it is never dropped"
                ))),
            };
        }
        let removed = self
            .control
            .delete(id)
            .await?
            .ok_or_else(|| OpError::NotFound(id.to_string()))?;
        self.announce(HintOp::Remove, id, removed.version).await;
        let mut database_dropped = false;
        if drop_database && removed.provisioned {
            let name = removed
                .database
                .database_name()
                .context("the provisioned database URL names no database")?
                .to_string();
            self.wait_until_unused(&name).await;
            provision::drop_database(&self.provision_server, &name)
                .await
                .map_err(|e| {
                    OpError::Other(e.context(format!(
                        "tenant '{id}' was removed, but its database could not be dropped"
                    )))
                })?;
            database_dropped = true;
        }
        Ok(Removal {
            id: id.clone(),
            version: removed.version,
            database_dropped,
        })
    }

    /// Moves a tenant to its own database or to the shared one: copies its rows, checks the
    /// counts, switches its configuration in one version bump, then deletes the source rows.
    /// Only this tenant's writes wait meanwhile (see [`crate::moving`]).
    pub async fn move_tenant(&self, id: &TenantId, to: Isolation) -> Result<MoveReport, OpError> {
        use crate::moving::{Source, copy_to_dedicated, copy_to_shared};
        let current = self
            .control
            .get_tenant(id)
            .await?
            .ok_or_else(|| OpError::NotFound(id.to_string()))?;
        if current.isolation == to {
            return Err(OpError::Conflict(format!(
                "tenant '{id}' is {} already",
                to.as_str()
            )));
        }
        let (shared, shared_url) = self.shared_db().await?;
        let (target, provisioned) = match to {
            Isolation::Shared => {
                shared.register(id).await?;
                (shared_url.clone(), false)
            }
            Isolation::Dedicated => {
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
        let spec = TenantSpec {
            id: id.clone(),
            hosts: current.hosts.clone(),
            database: target,
            provisioned,
            pool: current.pool,
            state: current.state,
            isolation: to,
        };
        let written = match self
            .control
            .write(
                &spec,
                WriteMode::Update {
                    expected_version: Some(current.version),
                },
            )
            .await
        {
            Ok(w) => w,
            Err(e) => {
                source.abandon().await;
                return Err(write_error(e, id));
            }
        };
        self.announce(HintOp::Upsert, id, written.tenant.version)
            .await;
        source.finish(id).await.map_err(|e| {
            OpError::Other(e.context(format!(
                "tenant '{id}' was switched to {}, but its old rows could not be deleted",
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
            })
        }
        _ => Err(errors),
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
                idle_timeout_secs: None,
            }),
            state: Some("paused".into()),
            isolation: Some("pooled".into()),
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
