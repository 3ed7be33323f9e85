//! Removals and what they keep: the tombstone, the leftover a later adopt or purge takes
//! up, and the listing of both.

use anyhow::Context as _;
use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::ControlDb;
use super::write::lock_writers;
use crate::tenant::{DatabaseUrl, Isolation, TenantId};

/// The data a removal kept: a removed incarnation's database (or rows in the shared
/// schema), Redis keys and files.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub database: DatabaseUrl,
    /// Whether the router created that database.
    pub provisioned: bool,
    /// The version of the removal.
    pub removed_version: i64,
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
}

fn redacted<S: serde::Serializer>(url: &DatabaseUrl, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(url)
}

pub(super) async fn leftover_of(
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
