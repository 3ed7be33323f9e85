//! Writing a tenant: the one path every create, update and import takes, under the
//! writers' lock, so versions become visible in order.

use anyhow::Context as _;
use sqlx::Row;

use super::leftovers::leftover_of;
use super::{ControlDb, Leftover};
use crate::tenant::{
    DatabaseUrl, Isolation, PoolSettings, RateLimit, Tenant, TenantHost, TenantId, TenantState,
};

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

/// Serialises writers for the rest of the transaction, so versions (taken from one sequence
/// inside the transaction) become visible in increasing order. Without it, a reader asking
/// for "everything after N" could see version N+2 commit before N+1 and skip N+1 for good.
pub(super) async fn lock_writers(tx: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(7461110001)")
        .execute(tx)
        .await
        .context("taking the tenant writers' lock")?;
    Ok(())
}

impl ControlDb {
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
                    && expected != version
                {
                    return Err(WriteError::Stale { current: version });
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
}
