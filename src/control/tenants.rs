//! Reading tenants: whole, by page, one at a time, and who holds a host or a database.

use anyhow::Context as _;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::ControlDb;
use crate::tenant::{DatabaseUrl, PoolSettings, RateLimit, Tenant, TenantHost, TenantId};

pub(super) const SELECT_TENANTS: &str = "
    SELECT t.id, t.database_url, t.max_connections, t.idle_timeout_secs, t.state, t.version,
           t.isolation, t.incarnation, t.statement_timeout_ms, t.idle_in_transaction_timeout_ms,
           t.rate_limit_rps, t.rate_limit_burst, coalesce(array_agg(h.host ORDER BY h.host) FILTER (WHERE h.host IS NOT NULL), '{}')
               AS hosts
    FROM tenants t LEFT JOIN tenant_hosts h ON h.tenant_id = t.id";

impl ControlDb {
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
        search: Option<&str>,
    ) -> anyhow::Result<Vec<Tenant>> {
        // `search`: a substring of the id or of one of the hosts (compared literally, no
        // wildcards).
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TENANTS} WHERE t.id > $1 AND ($3 = '' OR strpos(t.id, $3) > 0
                 OR EXISTS (SELECT 1 FROM tenant_hosts s
                            WHERE s.tenant_id = t.id AND strpos(s.host, $3) > 0))
             GROUP BY t.id ORDER BY t.id LIMIT $2"
        )))
        .bind(after.map_or("", TenantId::as_str))
        .bind(limit)
        .bind(search.unwrap_or(""))
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
}

pub(super) fn parse_logged(row: &PgRow) -> Option<Tenant> {
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
