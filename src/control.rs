//! The control database: where tenants are stored, and the only writer of their versions.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Row, migrate::Migrator};

use crate::tenant::{
    DatabaseUrl, Isolation, PoolSettings, RateLimit, Tenant, TenantHost, TenantId, TenantState,
};

/// Migrations of the control database (`migrations/control/`).
pub static CONTROL_MIGRATOR: Migrator = sqlx::migrate!("./migrations/control");

/// A handle on the control database.
#[derive(Clone)]
pub struct ControlDb {
    pool: PgPool,
    url: DatabaseUrl,
    base_domain: Option<std::sync::Arc<str>>,
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
    /// The incarnation: `None` keeps the stored one, or draws a new one for a new tenant;
    /// `Some` adopts the data a removal kept ([`Leftover`]) of that incarnation.
    pub incarnation: Option<i64>,
    /// Its own request rate limit; `None`: the router's default.
    pub rate_limit: Option<RateLimit>,
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
    /// A removed incarnation of this id kept its data: the id cannot be created again
    /// unless that data is adopted or discarded.
    #[error("tenant '{}' was removed with its data kept", .0.tenant_id)]
    Leftover(Box<Leftover>),
    /// A host is the wildcard host (`<id>.<base domain>`) of another tenant, or the new
    /// tenant's wildcard host is held by another tenant.
    #[error("host '{host}' is the wildcard host of tenant '{owner}'")]
    WildcardTaken {
        /// The host.
        host: String,
        /// The tenant it belongs to.
        owner: String,
    },
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The data a removal kept: a removed incarnation's database (or rows in the shared
/// schema), Redis keys and files.
#[derive(Debug, Clone, Serialize)]
pub struct Leftover {
    /// The removed tenant's id.
    pub tenant_id: String,
    /// Its incarnation.
    pub incarnation: i64,
    /// Where its rows are.
    pub isolation: Isolation,
    /// Its database (shown redacted).
    #[serde(serialize_with = "redacted")]
    pub database: DatabaseUrl,
    /// Whether the router created that database.
    pub provisioned: bool,
    /// The version of the removal.
    pub removed_version: i64,
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
           t.isolation, t.incarnation, t.statement_timeout_ms, t.idle_in_transaction_timeout_ms,
           t.rate_limit_rps, t.rate_limit_burst, coalesce(array_agg(h.host ORDER BY h.host) FILTER (WHERE h.host IS NOT NULL), '{}')
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
            base_domain: None,
        }
    }

    /// Hosts `<id>.<base_domain>` are the wildcard hosts of tenant `<id>`: no other tenant
    /// may claim one (see [`WriteError::WildcardTaken`]).
    pub fn with_base_domain(mut self, base_domain: Option<&str>) -> Self {
        self.base_domain = base_domain
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .map(std::sync::Arc::from);
        self
    }

    /// The base domain of wildcard hosts, if any.
    pub fn base_domain(&self) -> Option<&str> {
        self.base_domain.as_deref()
    }

    /// Records this writer's base domain in the control database, so writers configured
    /// without one enforce the same wildcard rule. Says so when it replaces another.
    pub async fn remember_base_domain(&self) -> anyhow::Result<()> {
        let Some(base) = self.base_domain.as_deref() else {
            return Ok(());
        };
        let before: Option<String> = sqlx::query_scalar(
            "WITH old AS (SELECT value FROM control_settings WHERE key = 'base_domain')
             INSERT INTO control_settings (key, value) VALUES ('base_domain', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
             RETURNING (SELECT value FROM old)",
        )
        .bind(base)
        .fetch_one(&self.pool)
        .await
        .context("recording the base domain")?;
        if let Some(before) = before.filter(|b| b != base) {
            tracing::warn!(before = %before, now = %base,
                "the control database's base domain changed: instances disagree on it");
        }
        Ok(())
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

    /// Its URL.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
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
                    isolation, incarnation, statement_timeout_ms, idle_in_transaction_timeout_ms,
                    rate_limit_rps, rate_limit_burst,
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

        let stored = |version: i64, incarnation: i64| Tenant {
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
            incarnation,
            rate_limit: spec.rate_limit,
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
                    && row.try_get::<Option<i32>, _>("statement_timeout_ms").ok()
                        == Some(spec.pool.statement_timeout_ms.map(|v| v as i32))
                    && row
                        .try_get::<Option<i32>, _>("idle_in_transaction_timeout_ms")
                        .ok()
                        == Some(spec.pool.idle_in_transaction_timeout_ms.map(|v| v as i32))
                    && row.try_get::<String, _>("state").ok().as_deref()
                        == Some(spec.state.as_str())
                    && row.try_get::<bool, _>("provisioned").ok() == Some(spec.provisioned)
                    && row.try_get::<String, _>("isolation").ok().as_deref()
                        == Some(spec.isolation.as_str())
                    && spec
                        .incarnation
                        .is_none_or(|i| row.try_get::<i64, _>("incarnation").ok() == Some(i))
                    && row.try_get::<Option<i32>, _>("rate_limit_rps").ok()
                        == Some(spec.rate_limit.map(|r| r.requests_per_second as i32))
                    && row.try_get::<Option<i32>, _>("rate_limit_burst").ok()
                        == Some(spec.rate_limit.map(|r| r.burst as i32))
                    && row.try_get::<Vec<String>, _>("hosts").ok().as_ref() == Some(&hosts);
                if same {
                    let incarnation = row.try_get("incarnation").context("the incarnation")?;
                    return Ok(Written {
                        outcome: UpsertOutcome::Unchanged,
                        tenant: stored(version, incarnation),
                    });
                }
                UpsertOutcome::Updated
            }
        };

        if existing.is_none() {
            // A new tenant: a removed incarnation's kept data blocks the id, unless this
            // write adopts exactly that incarnation (and takes the leftover with it).
            if let Some(leftover) = leftover_of(&mut tx, &spec.id).await? {
                if spec.incarnation != Some(leftover.incarnation) {
                    return Err(WriteError::Leftover(Box::new(leftover)));
                }
                sqlx::query("DELETE FROM tenant_leftovers WHERE tenant_id = $1")
                    .bind(spec.id.as_str())
                    .execute(&mut *tx)
                    .await
                    .context("adopting the kept data")?;
            }
        }
        // Only what this write adds is checked: a claim made before the rule stays valid.
        let held: Vec<String> = existing
            .as_ref()
            .and_then(|row| row.try_get("hosts").ok())
            .unwrap_or_default();
        let added: Vec<String> = hosts
            .iter()
            .filter(|h| !held.contains(h))
            .cloned()
            .collect();
        self.check_wildcards(&mut tx, &spec.id, &added, existing.is_none())
            .await?;

        let (version, incarnation): (i64, i64) = sqlx::query_as(
            "INSERT INTO tenants (id, database_url, max_connections, idle_timeout_secs, state, provisioned,
                                  isolation, incarnation, statement_timeout_ms,
                                  idle_in_transaction_timeout_ms, rate_limit_rps, rate_limit_burst)
             VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8, nextval('tenant_incarnation_seq')),
                     $9, $10, $11, $12)
             ON CONFLICT (id) DO UPDATE SET
                 isolation = EXCLUDED.isolation,
                 database_url = EXCLUDED.database_url,
                 max_connections = EXCLUDED.max_connections,
                 idle_timeout_secs = EXCLUDED.idle_timeout_secs,
                 state = EXCLUDED.state,
                 provisioned = EXCLUDED.provisioned,
                 incarnation = coalesce($8, tenants.incarnation),
                 statement_timeout_ms = EXCLUDED.statement_timeout_ms,
                 idle_in_transaction_timeout_ms = EXCLUDED.idle_in_transaction_timeout_ms,
                 rate_limit_rps = EXCLUDED.rate_limit_rps,
                 rate_limit_burst = EXCLUDED.rate_limit_burst,
                 version = nextval('tenant_version_seq'),
                 change_id = gen_random_uuid(),
                 updated_at = now()
             RETURNING version, incarnation",
        )
        .bind(spec.id.as_str())
        .bind(spec.database.expose())
        .bind(spec.pool.max_connections as i32)
        .bind(spec.pool.idle_timeout_secs as i32)
        .bind(spec.state.as_str())
        .bind(spec.provisioned)
        .bind(spec.isolation.as_str())
        .bind(spec.incarnation)
        .bind(spec.pool.statement_timeout_ms.map(|v| v as i32))
        .bind(spec.pool.idle_in_transaction_timeout_ms.map(|v| v as i32))
        .bind(spec.rate_limit.map(|r| r.requests_per_second as i32))
        .bind(spec.rate_limit.map(|r| r.burst as i32))
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
            tenant: stored(version, incarnation),
        })
    }

    /// Refuses hosts that are another tenant's wildcard host, and a new wildcard host
    /// (`<id>.<base domain>`) that another tenant holds exactly. Runs under the writers' lock.
    async fn check_wildcards(
        &self,
        tx: &mut sqlx::PgConnection,
        id: &TenantId,
        hosts: &[String],
        creating: bool,
    ) -> Result<(), WriteError> {
        // A writer configured without a base domain (a CLI, say) follows the one the
        // servers recorded.
        let base = match self.base_domain.as_deref() {
            Some(base) => base.to_string(),
            None => {
                let stored: Option<String> = sqlx::query_scalar(
                    "SELECT value FROM control_settings WHERE key = 'base_domain'",
                )
                .fetch_optional(&mut *tx)
                .await
                .context("reading the base domain")?;
                match stored {
                    Some(base) => base,
                    None => return Ok(()),
                }
            }
        };
        let suffix = format!(".{base}");
        for host in hosts {
            let Some(label) = host.strip_suffix(&suffix) else {
                continue;
            };
            if label == id.as_str() || label.contains('.') {
                continue;
            }
            let owner: Option<String> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
                .bind(label)
                .fetch_optional(&mut *tx)
                .await
                .context("looking up a wildcard host's tenant")?;
            if let Some(owner) = owner {
                return Err(WriteError::WildcardTaken {
                    host: host.clone(),
                    owner,
                });
            }
        }
        if !creating {
            return Ok(());
        }
        let own = format!("{id}{suffix}");
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT tenant_id FROM tenant_hosts WHERE host = $1 AND tenant_id <> $2",
        )
        .bind(&own)
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .context("looking up the tenant's wildcard host")?;
        if let Some(owner) = holder {
            return Err(WriteError::WildcardTaken { host: own, owner });
        }
        Ok(())
    }

    /// Every tenant and the highest committed version, read from one snapshot, so the
    /// version claims exactly what the list holds.
    pub async fn load_all(&self) -> anyhow::Result<(Vec<Tenant>, i64)> {
        let (tenants, version, _) = self.load_all_marked().await?;
        Ok((tenants, version))
    }

    /// [`Self::load_all`], with the token of the write at the returned version (see
    /// [`Changes`]).
    pub async fn load_all_marked(&self) -> anyhow::Result<(Vec<Tenant>, i64, Option<String>)> {
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
        let mark: Option<String> =
            sqlx::query_scalar("SELECT change_id::text FROM tenant_history WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok((
            rows.iter().filter_map(parse_logged).collect(),
            version,
            mark,
        ))
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

/// The result of [`ControlDb::changes_after`]. Every write has a random token (its
/// `change_id`), kept by version in `tenant_history`. An instance remembers the token of the
/// last change it applied; when the control database holds another token at that version
/// (or none), it was restored to an earlier state and the instance must reload in full.
#[derive(Debug, Default)]
pub struct Changes {
    /// The changes, in version order.
    pub changes: Vec<Change>,
    /// The token of the write at version `after` itself, if the history holds it.
    pub mark_at_after: Option<String>,
    /// The version and token of the last change.
    pub last_mark: Option<(i64, String)>,
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
    /// The removed incarnation.
    pub incarnation: i64,
    /// Where its rows were.
    pub isolation: Isolation,
}

impl ControlDb {
    /// Removes a tenant, leaving a tombstone, and records what it leaves behind as a
    /// [`Leftover`] (discarded again by [`Self::forget_leftover`] once a purge has deleted
    /// it). `None` when no such tenant exists.
    pub async fn delete(&self, id: &TenantId) -> anyhow::Result<Option<Removed>> {
        let mut tx = self.pool.begin().await.context("beginning a transaction")?;
        lock_writers(&mut tx).await?;
        let row: Option<(bool, String, i64, String)> = sqlx::query_as(
            "DELETE FROM tenants WHERE id = $1
             RETURNING provisioned, database_url, incarnation, isolation",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .context("deleting the tenant")?;
        let Some((provisioned, database, incarnation, isolation)) = row else {
            return Ok(None);
        };
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO tenant_tombstones (tenant_id, incarnation) VALUES ($1, $2)
             RETURNING version",
        )
        .bind(id.as_str())
        .bind(incarnation)
        .fetch_one(&mut *tx)
        .await
        .context("writing the tombstone")?;
        sqlx::query(
            "INSERT INTO tenant_leftovers
                 (tenant_id, incarnation, isolation, database_url, provisioned, removed_version)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.as_str())
        .bind(incarnation)
        .bind(&isolation)
        .bind(&database)
        .bind(provisioned)
        .bind(version)
        .execute(&mut *tx)
        .await
        .context("recording what the removal keeps")?;
        tx.commit().await.context("committing the removal")?;
        Ok(Some(Removed {
            version,
            provisioned,
            database: DatabaseUrl::parse(&database)?,
            incarnation,
            isolation: isolation.parse()?,
        }))
    }

    /// The data a removal of `id` kept, if any.
    pub async fn leftover(&self, id: &TenantId) -> anyhow::Result<Option<Leftover>> {
        let mut conn = self.pool.acquire().await?;
        leftover_of(&mut conn, id).await
    }

    /// Every removal's kept data, by id.
    pub async fn leftovers(&self) -> anyhow::Result<Vec<Leftover>> {
        let rows = sqlx::query(
            "SELECT tenant_id, incarnation, isolation, database_url, provisioned, removed_version
             FROM tenant_leftovers ORDER BY tenant_id",
        )
        .fetch_all(&self.pool)
        .await
        .context("listing leftovers")?;
        rows.iter().map(parse_leftover).collect()
    }

    /// Forgets a leftover of incarnation `incarnation`, once its data is deleted.
    pub async fn forget_leftover(&self, id: &TenantId, incarnation: i64) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM tenant_leftovers WHERE tenant_id = $1 AND incarnation = $2")
            .bind(id.as_str())
            .bind(incarnation)
            .execute(&self.pool)
            .await
            .context("forgetting a leftover")?;
        Ok(())
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

    /// A tenant (or kept data) whose database is `name` (on any server, every spelling),
    /// if any.
    pub async fn tenant_using_database(&self, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .database_users(name)
            .await?
            .into_iter()
            .next()
            .map(|(id, _)| id))
    }

    /// Who has database `name` (on any server; names as the driver reads them, so every
    /// spelling of a URL counts): a dedicated tenant, or a removed tenant whose kept data is
    /// there. Shared tenants are not listed: see [`Self::database_users`].
    pub async fn database_owner(&self, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .database_users(name)
            .await?
            .into_iter()
            .find(|(_, shared)| !shared)
            .map(|(id, _)| id))
    }

    /// Every tenant and leftover whose database is `name`, with whether it is a shared one.
    /// Database names are compared as the driver reads them (percent-escapes decoded,
    /// `?dbname=` obeyed), on any server: two tenants never share a database name.
    pub async fn database_users(&self, name: &str) -> anyhow::Result<Vec<(String, bool)>> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, database_url, isolation FROM tenants
             UNION ALL
             SELECT tenant_id, database_url, isolation FROM tenant_leftovers",
        )
        .fetch_all(&self.pool)
        .await
        .context("reading tenant databases")?;
        Ok(rows
            .into_iter()
            .filter(|(_, url, _)| {
                DatabaseUrl::parse(url).is_ok_and(|u| u.database_name().as_deref() == Some(name))
            })
            .map(|(id, _, isolation)| (id, isolation == "shared"))
            .collect())
    }

    /// Highest committed version, of a tenant or a tombstone; 0 when there is none.
    pub async fn max_version(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(MAX_VERSION)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Every change with a version above `after`, in version order: what an instance that
    /// has applied everything up to `after` must apply to catch up. One statement, so one
    /// snapshot: together with the writers' lock, the result holds every committed change
    /// up to its last one.
    pub async fn changes_since(&self, after: i64) -> anyhow::Result<Vec<Change>> {
        Ok(self.changes_after(after).await?.changes)
    }

    /// [`Self::changes_since`], with the change tokens that let a caller notice a restore
    /// ([`Changes::mark_at_after`], [`Changes::last_mark`]).
    pub async fn changes_after(&self, after: i64) -> anyhow::Result<Changes> {
        let rows = sqlx::query(
            "SELECT t.id, t.database_url, t.max_connections, t.idle_timeout_secs, t.state,
                    t.version, t.isolation, t.incarnation, t.statement_timeout_ms,
                    t.idle_in_transaction_timeout_ms, t.rate_limit_rps, t.rate_limit_burst,
                    coalesce(array_agg(h.host ORDER BY h.host)
                        FILTER (WHERE h.host IS NOT NULL), '{}') AS hosts,
                    'upsert' AS kind, t.change_id::text AS change_id
             FROM tenants t LEFT JOIN tenant_hosts h ON h.tenant_id = t.id
             WHERE t.version > $1 GROUP BY t.id
             UNION ALL
             SELECT tenant_id, NULL, NULL, NULL, NULL, version, NULL, NULL, NULL, NULL, NULL,
                    NULL, NULL, 'remove', change_id::text
             FROM tenant_tombstones WHERE version > $1
             UNION ALL
             SELECT NULL, NULL, NULL, NULL, NULL, version, NULL, NULL, NULL, NULL, NULL,
                    NULL, NULL, 'mark', change_id::text
             FROM tenant_history WHERE version = $1
             ORDER BY version",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .context("loading changes")?;
        let mut out = Changes::default();
        for row in &rows {
            let kind: String = row.try_get("kind")?;
            let mark: Option<String> = row.try_get("change_id")?;
            if kind == "mark" {
                out.mark_at_after = mark;
                continue;
            }
            out.last_mark = mark.map(|m| (row.try_get("version").unwrap_or_default(), m));
            let changes = &mut out.changes;
            if kind == "remove" {
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
        Ok(out)
    }

    /// The token of the write that holds version `version` (see [`Changes`]).
    pub async fn mark_at(&self, version: i64) -> anyhow::Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT change_id::text FROM tenant_history WHERE version = $1")
                .bind(version)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

fn redacted<S: serde::Serializer>(url: &DatabaseUrl, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(url)
}

async fn leftover_of(
    conn: &mut sqlx::PgConnection,
    id: &TenantId,
) -> anyhow::Result<Option<Leftover>> {
    let row = sqlx::query(
        "SELECT tenant_id, incarnation, isolation, database_url, provisioned, removed_version
         FROM tenant_leftovers WHERE tenant_id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(conn)
    .await
    .context("reading leftovers")?;
    row.as_ref().map(parse_leftover).transpose()
}

fn parse_leftover(row: &PgRow) -> anyhow::Result<Leftover> {
    Ok(Leftover {
        tenant_id: row.try_get("tenant_id")?,
        incarnation: row.try_get("incarnation")?,
        isolation: row.try_get::<String, _>("isolation")?.parse()?,
        database: DatabaseUrl::parse(row.try_get("database_url")?)?,
        provisioned: row.try_get("provisioned")?,
        removed_version: row.try_get("removed_version")?,
    })
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
        statement_timeout_ms: row
            .try_get::<Option<i32>, _>("statement_timeout_ms")?
            .map(u32::try_from)
            .transpose()?,
        idle_in_transaction_timeout_ms: row
            .try_get::<Option<i32>, _>("idle_in_transaction_timeout_ms")?
            .map(u32::try_from)
            .transpose()?,
    };
    Ok(Tenant {
        id,
        hosts,
        database: DatabaseUrl::parse(row.try_get("database_url")?)?,
        pool,
        state: row.try_get::<String, _>("state")?.parse()?,
        isolation: row.try_get::<String, _>("isolation")?.parse()?,
        version: row.try_get("version")?,
        incarnation: row.try_get("incarnation")?,
        rate_limit: match (
            row.try_get::<Option<i32>, _>("rate_limit_rps")?,
            row.try_get::<Option<i32>, _>("rate_limit_burst")?,
        ) {
            (Some(rps), Some(burst)) => Some(RateLimit {
                requests_per_second: u32::try_from(rps)?,
                burst: u32::try_from(burst)?,
            }),
            _ => None,
        },
    })
}
