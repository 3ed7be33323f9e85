//! The control database: where tenants are stored, and the only writer of their versions.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Row, migrate::Migrator};

use crate::tenant::{
    DatabaseUrl, Isolation, PoolSettings, Tenant, TenantHost, TenantId, TenantState,
};

/// Migrations of the control database (`migrations/control/`).
pub static CONTROL_MIGRATOR: Migrator = sqlx::migrate!("./migrations/control");

/// A handle on the control database.
#[derive(Clone)]
pub struct ControlDb {
    pool: PgPool,
    url: DatabaseUrl,
}

/// What an import or update asks a tenant to look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSpec {
    /// The tenant's id.
    pub id: TenantId,
    /// Its hosts; at least one.
    pub hosts: Vec<TenantHost>,
    /// Its database.
    pub database: DatabaseUrl,
    /// Whether the router created that database.
    pub provisioned: bool,
    /// Pool settings.
    pub pool: PoolSettings,
    /// State.
    pub state: TenantState,
    /// Dedicated or shared.
    pub isolation: Isolation,
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A host is already claimed by another tenant.
    #[error("host '{host}' already belongs to tenant '{owner}'")]
    HostTaken {
        /// The host.
        host: String,
        /// The tenant holding it.
        owner: String,
    },
    /// A tenant with this id exists.
    #[error("a tenant with this id already exists")]
    IdTaken,
    /// No tenant has this id.
    #[error("no such tenant")]
    NotFound,
    /// The tenant is at another version than the caller expected.
    #[error("the tenant is at version {current}")]
    Stale {
        /// Its current version.
        current: i64,
    },
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// What [`ControlDb::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// A new tenant was stored.
    Created,
    /// An existing tenant was changed; its version was bumped.
    Updated,
    /// The tenant already looked exactly like this; nothing was written.
    Unchanged,
}

const SELECT_TENANTS: &str = "
    SELECT t.id, t.database_url, t.max_connections, t.idle_timeout_secs, t.state, t.version,
           t.isolation, coalesce(array_agg(h.host ORDER BY h.host) FILTER (WHERE h.host IS NOT NULL), '{}')
               AS hosts
    FROM tenants t LEFT JOIN tenant_hosts h ON h.tenant_id = t.id";

impl ControlDb {
    /// Connects (lazily) to the control database.
    pub fn connect_lazy(url: &DatabaseUrl) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(url.connect_options().application_name("tenant-router"));
        Self {
            pool,
            url: url.clone(),
        }
    }

    /// A connection of its own, outside the pool: for a lock held across slow work
    /// (provisioning), which must not take a pooled connection that the work itself needs.
    pub async fn dedicated_connection(&self) -> anyhow::Result<sqlx::PgConnection> {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect_with(
            &self
                .url
                .connect_options()
                .application_name("tenant-router-lock"),
        )
        .await
        .context("connecting to the control database")
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the control database's migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        CONTROL_MIGRATOR
            .run(&self.pool)
            .await
            .context("migrating the control database")
    }

    /// True when a trivial query succeeds.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Every tenant. A row that does not parse is logged and skipped, so one bad row cannot
    /// take every other tenant down with it.
    pub async fn load_tenants(&self) -> anyhow::Result<Vec<Tenant>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TENANTS} GROUP BY t.id ORDER BY t.id"
        )))
        .fetch_all(&self.pool)
        .await
        .context("loading tenants from the control database")?;
        Ok(rows.iter().filter_map(parse_logged).collect())
    }

    /// Up to `limit` tenants with ids after `after`, in id order: keyset pagination, so a page
    /// boundary does not shift when tenants are added or removed meanwhile.
    pub async fn list_tenants(
        &self,
        after: Option<&TenantId>,
        limit: i64,
    ) -> anyhow::Result<Vec<Tenant>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TENANTS} WHERE t.id > $1 GROUP BY t.id ORDER BY t.id LIMIT $2"
        )))
        .bind(after.map_or("", TenantId::as_str))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("listing tenants")?;
        Ok(rows.iter().filter_map(parse_logged).collect())
    }

    /// One tenant.
    pub async fn get_tenant(&self, id: &TenantId) -> anyhow::Result<Option<Tenant>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TENANTS} WHERE t.id = $1 GROUP BY t.id"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().and_then(parse_logged))
    }

    /// Makes the stored tenant look like `spec`, in one transaction. The version is bumped
    /// only when something changed, so applying the same spec twice is a no-op.
    pub async fn upsert(&self, spec: &TenantSpec) -> Result<UpsertOutcome, WriteError> {
        Ok(self.write(spec, WriteMode::Upsert).await?.outcome)
    }

    /// Stores `spec` as `mode` allows, in one transaction under the writers' lock, and
    /// returns the tenant as stored (with its version).
    pub async fn write(&self, spec: &TenantSpec, mode: WriteMode) -> Result<Written, WriteError> {
        let mut tx = self.pool.begin().await.context("beginning a transaction")?;
        lock_writers(&mut tx).await?;
        let existing = sqlx::query(
            "SELECT database_url, max_connections, idle_timeout_secs, state, provisioned, version,
                    isolation,
                    array(SELECT host FROM tenant_hosts WHERE tenant_id = $1 ORDER BY host) AS hosts
             FROM tenants WHERE id = $1 FOR UPDATE",
        )
        .bind(spec.id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .context("reading the tenant")?;

        let mut hosts: Vec<String> = spec.hosts.iter().map(|h| h.to_string()).collect();
        hosts.sort();
        hosts.dedup();

        let stored = |version: i64| Tenant {
            id: spec.id.clone(),
            hosts: hosts
                .iter()
                .filter_map(|h| TenantHost::parse(h).ok())
                .collect(),
            database: spec.database.clone(),
            pool: spec.pool,
            state: spec.state,
            isolation: spec.isolation,
            version,
        };

        let outcome = match (&existing, mode) {
            (None, WriteMode::Update { .. }) => return Err(WriteError::NotFound),
            (Some(_), WriteMode::Create) => return Err(WriteError::IdTaken),
            (None, _) => UpsertOutcome::Created,
            (Some(row), _) => {
                let version: i64 = row.try_get("version").context("reading the version")?;
                if let WriteMode::Update {
                    expected_version: Some(expected),
                } = mode
                {
                    if expected != version {
                        return Err(WriteError::Stale { current: version });
                    }
                }
                let same = row.try_get::<String, _>("database_url").ok().as_deref()
                    == Some(spec.database.expose())
                    && row.try_get::<i32, _>("max_connections").ok()
                        == Some(spec.pool.max_connections as i32)
                    && row.try_get::<i32, _>("idle_timeout_secs").ok()
                        == Some(spec.pool.idle_timeout_secs as i32)
                    && row.try_get::<String, _>("state").ok().as_deref()
                        == Some(spec.state.as_str())
                    && row.try_get::<bool, _>("provisioned").ok() == Some(spec.provisioned)
                    && row.try_get::<String, _>("isolation").ok().as_deref()
                        == Some(spec.isolation.as_str())
                    && row.try_get::<Vec<String>, _>("hosts").ok().as_ref() == Some(&hosts);
                if same {
                    return Ok(Written {
                        outcome: UpsertOutcome::Unchanged,
                        tenant: stored(version),
                    });
                }
                UpsertOutcome::Updated
            }
        };

        let version: i64 = sqlx::query_scalar(
            "INSERT INTO tenants (id, database_url, max_connections, idle_timeout_secs, state, provisioned,
                                  isolation)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET
                 isolation = EXCLUDED.isolation,
                 database_url = EXCLUDED.database_url,
                 max_connections = EXCLUDED.max_connections,
                 idle_timeout_secs = EXCLUDED.idle_timeout_secs,
                 state = EXCLUDED.state,
                 provisioned = EXCLUDED.provisioned,
                 version = nextval('tenant_version_seq'),
                 updated_at = now()
             RETURNING version",
        )
        .bind(spec.id.as_str())
        .bind(spec.database.expose())
        .bind(spec.pool.max_connections as i32)
        .bind(spec.pool.idle_timeout_secs as i32)
        .bind(spec.state.as_str())
        .bind(spec.provisioned)
        .bind(spec.isolation.as_str())
        .fetch_one(&mut *tx)
        .await
        .context("writing the tenant")?;

        sqlx::query("DELETE FROM tenant_hosts WHERE tenant_id = $1 AND NOT (host = ANY($2))")
            .bind(spec.id.as_str())
            .bind(&hosts)
            .execute(&mut *tx)
            .await
            .context("removing old hosts")?;
        // One statement claims every host; a host already held by another tenant comes back
        // with that tenant's id.
        let owners: Vec<(String, String)> = sqlx::query_as(
            "INSERT INTO tenant_hosts (host, tenant_id) SELECT h, $2 FROM unnest($1::text[]) AS h
             ON CONFLICT (host) DO UPDATE SET host = EXCLUDED.host
             RETURNING host, tenant_id",
        )
        .bind(&hosts)
        .bind(spec.id.as_str())
        .fetch_all(&mut *tx)
        .await
        .context("claiming hosts")?;
        if let Some((host, owner)) = owners
            .into_iter()
            .find(|(_, owner)| owner != spec.id.as_str())
        {
            return Err(WriteError::HostTaken { host, owner });
        }
        tx.commit().await.context("committing the tenant")?;
        Ok(Written {
            outcome,
            tenant: stored(version),
        })
    }

    /// Every tenant and the highest committed version, read from one snapshot, so the
    /// version claims exactly what the list holds.
    pub async fn load_all(&self) -> anyhow::Result<(Vec<Tenant>, i64)> {
        let mut tx = self.pool.begin().await.context("beginning a transaction")?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TENANTS} GROUP BY t.id ORDER BY t.id"
        )))
        .fetch_all(&mut *tx)
        .await
        .context("loading tenants from the control database")?;
        let version: i64 = sqlx::query_scalar(MAX_VERSION).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok((rows.iter().filter_map(parse_logged).collect(), version))
    }
}

/// How [`ControlDb::write`] may treat an existing tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Create or update (the tenants file).
    Upsert,
    /// Create only; an existing id is [`WriteError::IdTaken`].
    Create,
    /// Update only; a missing id is [`WriteError::NotFound`]. With `expected_version`, a
    /// tenant at another version is [`WriteError::Stale`].
    Update {
        /// The version the caller last saw.
        expected_version: Option<i64>,
    },
}

/// What [`ControlDb::write`] did, and the tenant as stored.
#[derive(Debug, Clone)]
pub struct Written {
    /// Created, updated or unchanged.
    pub outcome: UpsertOutcome,
    /// The stored tenant.
    pub tenant: Tenant,
}

const MAX_VERSION: &str = "SELECT greatest(
    (SELECT coalesce(max(version), 0) FROM tenants),
    (SELECT coalesce(max(version), 0) FROM tenant_tombstones))";

/// Serialises writers for the rest of the transaction, so versions (taken from one sequence
/// inside the transaction) become visible in increasing order. Without it, a reader asking
/// for "everything after N" could see version N+2 commit before N+1 and skip N+1 for good.
async fn lock_writers(tx: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(7461110001)")
        .execute(tx)
        .await
        .context("taking the tenant writers' lock")?;
    Ok(())
}

/// One change to apply to a registry, in version order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The tenant now looks like this.
    Upsert(Tenant),
    /// The tenant was removed at this version.
    Remove {
        /// The removed tenant.
        id: TenantId,
        /// The version of the removal.
        version: i64,
    },
}

impl Change {
    /// The change's version.
    pub fn version(&self) -> i64 {
        match self {
            Self::Upsert(t) => t.version,
            Self::Remove { version, .. } => *version,
        }
    }
}

/// A removed tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Version of the removal.
    pub version: i64,
    /// Whether the router had created its database.
    pub provisioned: bool,
    /// That database.
    pub database: DatabaseUrl,
}

impl ControlDb {
    /// Removes a tenant, leaving a tombstone. `None` when no such tenant exists.
    pub async fn delete(&self, id: &TenantId) -> anyhow::Result<Option<Removed>> {
        let mut tx = self.pool.begin().await.context("beginning a transaction")?;
        lock_writers(&mut tx).await?;
        let row: Option<(bool, String)> =
            sqlx::query_as("DELETE FROM tenants WHERE id = $1 RETURNING provisioned, database_url")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .context("deleting the tenant")?;
        let Some((provisioned, database)) = row else {
            return Ok(None);
        };
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO tenant_tombstones (tenant_id) VALUES ($1) RETURNING version",
        )
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .context("writing the tombstone")?;
        tx.commit().await.context("committing the removal")?;
        Ok(Some(Removed {
            version,
            provisioned,
            database: DatabaseUrl::parse(&database)?,
        }))
    }

    /// The tenant holding `host`, if any.
    pub async fn host_owner(&self, host: &TenantHost) -> anyhow::Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT tenant_id FROM tenant_hosts WHERE host = $1")
                .bind(host.as_str())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Whether the router created this tenant's database (false for an unknown tenant).
    pub async fn is_provisioned(&self, id: &TenantId) -> anyhow::Result<bool> {
        Ok(
            sqlx::query_scalar::<_, bool>("SELECT provisioned FROM tenants WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or(false),
        )
    }

    /// A tenant whose database URL names database `name` (on any server), if any.
    pub async fn tenant_using_database(&self, name: &str) -> anyhow::Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM tenants
             WHERE right(split_part(database_url, '?', 1), length($1) + 1) = '/' || $1
             LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Highest committed version, of a tenant or a tombstone; 0 when there is none.
    pub async fn max_version(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(MAX_VERSION)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Every change with a version above `after`, in version order: what an instance that
    /// has applied everything up to `after` must apply to catch up. One statement, so one
    /// snapshot: together with the writers' lock, the result holds every committed version
    /// up to its last one.
    pub async fn changes_since(&self, after: i64) -> anyhow::Result<Vec<Change>> {
        let rows = sqlx::query(
            "SELECT t.id, t.database_url, t.max_connections, t.idle_timeout_secs, t.state,
                    t.version, t.isolation, coalesce(array_agg(h.host ORDER BY h.host)
                        FILTER (WHERE h.host IS NOT NULL), '{}') AS hosts,
                    false AS removed
             FROM tenants t LEFT JOIN tenant_hosts h ON h.tenant_id = t.id
             WHERE t.version > $1 GROUP BY t.id
             UNION ALL
             SELECT tenant_id, NULL, NULL, NULL, NULL, version, NULL, NULL, true
             FROM tenant_tombstones WHERE version > $1
             ORDER BY version",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .context("loading changes")?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<bool, _>("removed")? {
                let id: String = row.try_get("id")?;
                match TenantId::parse(&id) {
                    Ok(id) => changes.push(Change::Remove {
                        id,
                        version: row.try_get("version")?,
                    }),
                    Err(e) => {
                        tracing::error!(tenant.id = %id, error = %e, "skipping a bad tombstone")
                    }
                }
            } else if let Some(t) = parse_logged(row) {
                changes.push(Change::Upsert(t));
            }
        }
        Ok(changes)
    }
}

fn parse_logged(row: &PgRow) -> Option<Tenant> {
    match parse_tenant(row) {
        Ok(t) => Some(t),
        Err(e) => {
            let id: Option<String> = row.try_get("id").ok();
            tracing::error!(tenant.id = ?id, error = %e, "skipping a tenant row that does not parse");
            None
        }
    }
}

fn parse_tenant(row: &PgRow) -> anyhow::Result<Tenant> {
    let id = TenantId::parse(row.try_get("id")?)?;
    let hosts = row
        .try_get::<Vec<String>, _>("hosts")?
        .iter()
        .map(|h| TenantHost::parse(h))
        .collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!hosts.is_empty(), "tenant has no host");
    let pool = PoolSettings {
        max_connections: u32::try_from(row.try_get::<i32, _>("max_connections")?)?,
        idle_timeout_secs: u64::try_from(row.try_get::<i32, _>("idle_timeout_secs")?)?,
    };
    Ok(Tenant {
        id,
        hosts,
        database: DatabaseUrl::parse(row.try_get("database_url")?)?,
        pool,
        state: row.try_get::<String, _>("state")?.parse()?,
        isolation: row.try_get::<String, _>("isolation")?.parse()?,
        version: row.try_get("version")?,
    })
}
