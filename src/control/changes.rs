//! What changed since a version: the changes an instance applies to catch up, the
//! snapshot it loads in full, and the tokens that reveal a restored control database.

use anyhow::Context as _;
use sqlx::Row;

use super::ControlDb;
use super::tenants::{SELECT_TENANTS, parse_logged};
use crate::tenant::{Tenant, TenantId};

const MAX_VERSION: &str = "SELECT greatest(
    (SELECT coalesce(max(version), 0) FROM tenants),
    (SELECT coalesce(max(version), 0) FROM tenant_tombstones))";

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

impl ControlDb {
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
