//! Shared isolation: tenants whose rows live in one shared database, tagged by `tenant_id`,
//! distributed by it when the database is a Citus cluster.
//!
//! The data-access path is the same for both kinds of tenant: [`TenantDb`] hands out a
//! [`TenantConn`] and the tenant's scope; every query filters on `tenant_id = <scope>`. For a
//! shared tenant the connection is a transaction that first switches to the
//! `tenant_router_app` role and sets `app.tenant_id` locally, so the row-level security
//! policies of `migrations/shared/` stop a query that forgot its filter.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use sqlx::PgConnection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::pool::{PooledConn, TenantPool};

use crate::tenant::{DatabaseUrl, Isolation, Tenant, TenantId};

/// Migrations of the shared database (`migrations/shared/`).
pub static SHARED_MIGRATOR: Migrator = sqlx::migrate!("./migrations/shared");

/// The schema that holds the shared tables, in whatever database is the shared one (by
/// default the control database, whose own tables live in `public`).
pub const SCHEMA: &str = "shared";

/// Connection options for the shared database: the URL's, with `search_path` on [`SCHEMA`].
pub fn connect_options(url: &DatabaseUrl) -> sqlx::postgres::PgConnectOptions {
    url.connect_options()
        .options([("search_path", SCHEMA)])
        .application_name("tenant-router")
}

/// The role shared-tenant transactions run as; it owns nothing, so row-level security binds.
pub const APP_ROLE: &str = "tenant_router_app";

/// The tenant tables of the shared schema, in the order they are distributed (a table after
/// the tables it references).
pub const TENANT_TABLES: &[&str] = &["users", "sessions", "notes", "job_runs"];

/// Reference tables (replicated to every Citus node): the tenant directory.
pub const REFERENCE_TABLES: &[&str] = &["tenants"];

/// The Citus calls that distribute the shared schema, in the order Citus needs: reference
/// tables first (distributed tables reference them), then every tenant table distributed by
/// `tenant_id`, co-located with the first, so a tenant's rows of every table sit on one node
/// and joins and foreign keys stay local.
pub fn citus_statements() -> Vec<String> {
    let mut out: Vec<String> = REFERENCE_TABLES
        .iter()
        .map(|t| format!("SELECT create_reference_table('{t}')"))
        .collect();
    let first = TENANT_TABLES[0];
    for t in TENANT_TABLES {
        if *t == first {
            out.push(format!(
                "SELECT create_distributed_table('{t}', 'tenant_id')"
            ));
        } else {
            out.push(format!(
                "SELECT create_distributed_table('{t}', 'tenant_id', colocate_with => '{first}')"
            ));
        }
    }
    out
}

/// The shared database, as the router administers it (migrations, the directory). Tenant
/// requests go through the registry's shared pool and [`TenantDb`], never through this.
#[derive(Clone)]
pub struct SharedDb {
    pool: PgPool,
}

/// What [`SharedDb::prepare`] found and did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Prepared {
    /// Whether the citus extension is installed.
    pub citus: bool,
    /// The Citus statements run now (empty when Citus is absent or all was done before).
    pub distributed: Vec<String>,
}

impl SharedDb {
    /// Connects lazily.
    pub fn connect_lazy(url: &DatabaseUrl) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(connect_options(url));
        Self { pool }
    }

    /// Its pool (the router's own credentials).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the citus extension is installed.
    pub async fn has_citus(&self) -> anyhow::Result<bool> {
        Ok(
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
            )
            .fetch_one(&self.pool)
            .await?,
        )
    }

    /// Applies the shared migrations, then (on Citus) distributes what is not distributed
    /// yet. Safe to run again and from several processes.
    pub async fn prepare(&self) -> anyhow::Result<Prepared> {
        sqlx::query("CREATE SCHEMA IF NOT EXISTS shared")
            .execute(&self.pool)
            .await
            .or_else(|e| match &e {
                // Two processes creating it at once.
                sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => {
                    Ok(Default::default())
                }
                _ => Err(e),
            })
            .context("creating the shared schema")?;
        SHARED_MIGRATOR
            .run(&self.pool)
            .await
            .context("migrating the shared database")?;
        let citus = self.has_citus().await?;
        let mut distributed = Vec::new();
        if citus {
            for (table, statement) in REFERENCE_TABLES
                .iter()
                .chain(TENANT_TABLES)
                .zip(citus_statements())
            {
                let done: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
                )
                .bind(table)
                .fetch_one(&self.pool)
                .await?;
                if !done {
                    sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                        .execute(&self.pool)
                        .await
                        .with_context(|| format!("distributing {table}"))?;
                    distributed.push(statement);
                }
            }
        }
        Ok(Prepared { citus, distributed })
    }

    /// The shared database's topology, as `GET /admin/shards` shows it: nodes, distributed
    /// tables, shard placements and `citus_stat_tenants` (when tracking is on). On plain
    /// PostgreSQL it says so and lists nothing.
    pub async fn topology(&self) -> anyhow::Result<serde_json::Value> {
        if !self.has_citus().await? {
            return Ok(serde_json::json!({
                "citus": false,
                "detail": "the citus extension is not installed in the shared database: shared tenants live on one PostgreSQL server, with no shards",
            }));
        }
        // Each view is read on its own, so one missing in this Citus version costs only
        // its own section.
        let mut out = serde_json::Map::new();
        out.insert("citus".into(), true.into());
        for (name, sql) in [
            (
                "nodes",
                "SELECT nodeid, nodename, nodeport, noderole, isactive FROM pg_dist_node ORDER BY nodeid",
            ),
            (
                "tables",
                "SELECT table_name::text, citus_table_type, distribution_column, colocation_id, shard_count FROM citus_tables ORDER BY 1",
            ),
            (
                "placements",
                "SELECT table_name::text, shardid, nodename, nodeport, shard_size FROM citus_shards ORDER BY shardid LIMIT 1000",
            ),
            ("tenants", "SELECT * FROM citus_stat_tenants LIMIT 100"),
        ] {
            let wrapped = format!("SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]') FROM ({sql}) t");
            let value =
                match sqlx::query_scalar::<_, serde_json::Value>(sqlx::AssertSqlSafe(wrapped))
                    .fetch_one(&self.pool)
                    .await
                {
                    Ok(v) => v,
                    Err(e) => serde_json::json!({ "unavailable": e.to_string() }),
                };
            out.insert(name.into(), value);
        }
        Ok(serde_json::Value::Object(out))
    }

    /// Moves one tenant's rows to a shard of their own (Citus `isolate_tenant_to_new_shard`,
    /// cascading to the co-located tables). Returns the new shard id.
    pub async fn isolate(&self, id: &TenantId) -> anyhow::Result<i64> {
        anyhow::ensure!(
            self.has_citus().await?,
            "isolating a tenant needs a Citus cluster; the shared database is plain PostgreSQL"
        );
        let shard: i64 = sqlx::query_scalar(
            "SELECT isolate_tenant_to_new_shard('users', $1, cascade_option => 'CASCADE')",
        )
        .bind(id.as_str())
        .fetch_one(&self.pool)
        .await
        .context("isolate_tenant_to_new_shard")?;
        Ok(shard)
    }

    /// Adds a tenant to the directory (idempotent). Returns whether it was added now.
    pub async fn register(&self, id: &TenantId) -> anyhow::Result<bool> {
        let added = sqlx::query("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .context("registering the tenant in the shared directory")?
            .rows_affected();
        Ok(added == 1)
    }

    /// Takes a tenant out of the directory, if it has no rows left.
    pub async fn unregister(&self, id: &TenantId) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .context("removing the tenant from the shared directory")?;
        Ok(())
    }

    /// Deletes every row of a tenant, and its directory entry, in one transaction.
    pub async fn purge(&self, id: &TenantId) -> anyhow::Result<u64> {
        let mut tx = self.pool.begin().await?;
        scope_tx(&mut tx, id.as_str()).await?;
        let mut rows = 0;
        for table in TENANT_TABLES.iter().rev() {
            rows += sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE tenant_id = $1"
            )))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        sqlx::query("RESET ROLE").execute(&mut *tx).await?;
        sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows)
    }
}

/// Makes the rest of the transaction run as [`APP_ROLE`] for tenant `scope`.
pub async fn scope_tx(conn: &mut PgConnection, scope: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('role', 'tenant_router_app', true), set_config('app.tenant_id', $1, true)",
    )
    .bind(scope)
    .execute(conn)
    .await?;
    Ok(())
}

/// A tenant's database, as handlers and jobs use it: [`Self::conn`] and [`Self::scope`].
pub struct TenantDb<'a> {
    pool: &'a Arc<TenantPool>,
    tenant: &'a Tenant,
}

impl<'a> TenantDb<'a> {
    /// The handle for `tenant` over `pool` (its dedicated pool, or the shared one).
    pub fn new(pool: &'a Arc<TenantPool>, tenant: &'a Tenant) -> Self {
        Self { pool, tenant }
    }

    /// The value of `tenant_id` in this tenant's rows; bind it in every query.
    pub fn scope(&self) -> &'a str {
        self.tenant.scope()
    }

    /// A connection for this tenant. Shared: a transaction scoped to the tenant (role and
    /// `app.tenant_id` set locally); call [`TenantConn::commit`] after writes. Dedicated: a
    /// plain connection, each statement its own transaction.
    pub async fn conn(&self) -> Result<TenantConn, sqlx::Error> {
        match self.tenant.isolation {
            Isolation::Dedicated => Ok(TenantConn {
                conn: self.pool.acquire().await?,
                in_tx: false,
            }),
            Isolation::Shared => self.begin().await,
        }
    }

    /// A transaction for this tenant (scoped as [`Self::conn`] is, for shared tenants).
    /// Dropped without [`TenantConn::commit`], it rolls back.
    pub async fn begin(&self) -> Result<TenantConn, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        conn.set_dirty(true);
        sqlx::query("BEGIN").execute(&mut *conn).await?;
        if self.tenant.isolation == Isolation::Shared {
            scope_tx(&mut conn, self.scope()).await?;
        }
        Ok(TenantConn { conn, in_tx: true })
    }
}

/// A connection handed out by [`TenantDb`]: deref to `PgConnection` for queries.
pub struct TenantConn {
    conn: PooledConn,
    in_tx: bool,
}

impl TenantConn {
    /// Commits the transaction, if one is open.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if self.in_tx {
            sqlx::query("COMMIT").execute(&mut *self.conn).await?;
            self.conn.set_dirty(false);
            self.in_tx = false;
        }
        Ok(())
    }
}

impl Deref for TenantConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for TenantConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_tables_first_then_colocated_distribution() {
        let ddl = citus_statements();
        assert_eq!(
            ddl,
            [
                "SELECT create_reference_table('tenants')",
                "SELECT create_distributed_table('users', 'tenant_id')",
                "SELECT create_distributed_table('sessions', 'tenant_id', colocate_with => 'users')",
                "SELECT create_distributed_table('notes', 'tenant_id', colocate_with => 'users')",
                "SELECT create_distributed_table('job_runs', 'tenant_id', colocate_with => 'users')",
            ]
        );
    }
}
