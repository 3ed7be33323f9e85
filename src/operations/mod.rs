//! Tenant writes, shared by the admin API and the CLI: validate, provision, commit to the
//! control database, then announce. The order is the contract: nothing is announced before
//! it is committed, and a provisioning failure leaves nothing behind.

use std::sync::Arc;
use std::time::Duration;

use crate::bus::{Hint, HintOp, Publisher};
use crate::control::ControlDb;
use crate::problem::FieldError;
use crate::provision::{self, TenantMigrations};
use crate::schema::TenantSchema;
use crate::shared::SharedDb;
use crate::sync::ConfigSync;
use crate::tenant::{DatabaseUrl, TenantId};

mod create;
mod errors;
mod moves;
mod remove;
mod repair;
mod requests;
mod update;

pub use errors::OpError;
pub use moves::MoveReport;
pub use remove::Removal;
pub use requests::{NewTenant, NewTenantRequest, PoolRequest, TenantPatchRequest};

/// How long a removal with `drop_database` waits for every instance to close its
/// connections before dropping the database anyway.
pub const DROP_WAIT: Duration = Duration::from_secs(10);

/// Tenant writes. Cheap to clone.
#[derive(Clone)]
pub struct TenantOps {
    control: ControlDb,
    provision_server: DatabaseUrl,
    schema: TenantSchema,
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
    /// Operations on `control`, provisioning on `provision_server`, for an app whose tenant
    /// data `schema` describes (its dedicated databases are migrated with the schema's
    /// migrations unless [`Self::with_tenant_migrations`] says otherwise).
    pub fn new(control: ControlDb, provision_server: DatabaseUrl, schema: TenantSchema) -> Self {
        Self {
            control,
            provision_server,
            schema,
            migrations: TenantMigrations::Embedded(schema.dedicated_migrations()),
            publisher: None,
            local: None,
            drop_wait: DROP_WAIT,
            shared: None,
            shared_ready: Arc::default(),
            redis: None,
            files_dir: None,
        }
    }

    /// Where dedicated databases' migrations come from instead of the schema (a directory
    /// read at each use, for instance).
    pub fn with_tenant_migrations(mut self, migrations: TenantMigrations) -> Self {
        self.migrations = migrations;
        self
    }

    /// The app's tenant schema.
    pub fn schema(&self) -> &TenantSchema {
        &self.schema
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
            .get_or_try_init(|| async { shared.0.prepare(&self.schema).await.map(drop) })
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
        crate::moving::lift_guard(database, &self.schema)
            .await
            .map_err(|e| {
                OpError::Invalid(vec![FieldError::new(
                    "database",
                    format!("cannot be used: {e:#}"),
                )])
            })?;
        Ok(())
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
            let _ = publisher.publish(&Hint::new(op, id.clone(), version)).await;
        }
        if let Some(sync) = &self.local
            && let Err(e) = sync.catch_up().await
        {
            tracing::warn!(error = %format!("{e:#}"), "applying a change locally failed; the reconcile will");
        }
    }
}
