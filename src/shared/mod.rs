//! Shared isolation: tenants whose rows live in one shared database, tagged by `tenant_id`,
//! distributed by it when the database is a Citus cluster.
//!
//! The data-access path is the same for both kinds of tenant: [`TenantDb`] hands out a
//! [`TenantConn`] and the tenant's scope; every query filters on `tenant_id = <scope>`. For a
//! shared tenant the connection is a transaction that first switches to the
//! `tenant_router_app` role and sets `app.tenant_id` locally, so the row-level security
//! policies of `migrations/shared/` stop a query that forgot its filter.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use sqlx::PgConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::schema::TenantSchema;
use crate::tenant::{DatabaseUrl, TenantId};

mod prepare;
mod tenant_db;

pub use tenant_db::{TenantConn, TenantDb};

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

/// Reference tables (replicated to every Citus node): the tenant directory.
pub(crate) const REFERENCE_TABLES: &[&str] = &["tenants"];

/// The roles shared-tenant transactions switch to. Citus opens its connections to the
/// workers as the current role, so on Citus they must be allowed to log in.
pub const ROLES: &[&str] = &[APP_ROLE, APEX_ROLE];

/// The role of the apex login's cross-tenant lookup (reads `users`' emails and hashes only).
pub const APEX_ROLE: &str = "tenant_router_apex";

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
                "SELECT table_name::text, citus_table_type, distribution_column, colocation_id, shard_count FROM public.citus_tables ORDER BY 1",
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
    pub async fn isolate(&self, id: &TenantId, schema: &TenantSchema) -> anyhow::Result<i64> {
        anyhow::ensure!(
            self.has_citus().await?,
            "isolating a tenant needs a Citus cluster; the shared database is plain PostgreSQL"
        );
        let shard: i64 = sqlx::query_scalar(
            "SELECT isolate_tenant_to_new_shard($1::regclass, $2, cascade_option => 'CASCADE')",
        )
        .bind(schema.anchor())
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

    /// Whether any of `schema`'s tables holds a row of tenant `id`.
    pub async fn has_rows(&self, id: &TenantId, schema: &TenantSchema) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        crate::schema::check_catalog(&mut tx, schema, crate::schema::Unlisted::NoTenantTable)
            .await?;
        scope_tx(&mut tx, id.as_str()).await?;
        let mut found = false;
        for table in schema.tables().iter().map(|t| t.name) {
            found = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT EXISTS (SELECT 1 FROM {table} WHERE tenant_id = $1)"
            )))
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await
            .with_context(|| format!("looking for rows of tenant '{id}' in {table}"))?;
            if found {
                break;
            }
        }
        tx.rollback().await?;
        Ok(found)
    }

    /// Deletes every row of a tenant in `schema`'s tables, and its directory entry, in one
    /// transaction.
    pub async fn purge(&self, id: &TenantId, schema: &TenantSchema) -> anyhow::Result<u64> {
        let mut tx = self.pool.begin().await?;
        lock_tenant_exclusively(&mut tx, id.as_str()).await?;
        crate::schema::check_catalog(&mut tx, schema, crate::schema::Unlisted::NoTenantTable)
            .await?;
        scope_tx(&mut tx, id.as_str()).await?;
        let mut rows = 0;
        for table in schema.tables().iter().rev().map(|t| t.name) {
            rows += sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE tenant_id = $1"
            )))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        // Still as the app role: one role per transaction (shared migration 0003).
        sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows)
    }
}

/// The two statements that make the rest of an open transaction run as [`APP_ROLE`] for
/// tenant `scope`, each to be sent on its own. Literal `SET LOCAL`s, not `set_config`: on
/// Citus only a `SET LOCAL` reaches the workers, and only with
/// `citus.propagate_set_commands = 'local'` (plain PostgreSQL takes that setting as an unused
/// placeholder). Citus replays a propagated `SET LOCAL` on the workers as the *whole query
/// string* it arrived in, so the tenant's `SET LOCAL` travels alone; the role needs no
/// propagating (Citus connects to the workers as the current role) and goes first, with the
/// setting. The id is validated; it is quoted all the same.
fn scope_sql(scope: &str) -> [String; 2] {
    [
        format!("SET LOCAL ROLE {APP_ROLE}; SET LOCAL citus.propagate_set_commands TO 'local'"),
        format!("SET LOCAL app.tenant_id TO {}", quote_literal(scope)),
    ]
}

/// The advisory lock that orders a shared tenant's transactions against a move or purge of
/// its rows: every transaction of the tenant holds it shared, a move or purge exclusively.
/// On Citus the directory row's `FOR UPDATE` cannot do this: it locks the coordinator's copy
/// of the reference table only, while the foreign key checks of new `users` and `job_runs`
/// rows run on the workers' copies, so rows written during a move would be deleted with the
/// source. Every shared transaction passes through the coordinator, and so does this lock.
/// Shared, it is taken by `tenant_router_enter` (shared migration 0004), which also checks
/// that the tenant still lives in the shared schema.
fn tenant_lock_sql(scope: &str) -> String {
    format!(
        "SELECT pg_advisory_xact_lock({TENANT_LOCK_CLASS}, hashtext({}))",
        quote_literal(scope)
    )
}

/// The first key of [`tenant_lock_sql`]'s locks (the second is the tenant's hash); shared
/// migration 0004 names it too.
const TENANT_LOCK_CLASS: i32 = 7_401_105;

/// Takes tenant `scope`'s lock exclusively for the rest of the open transaction: its own
/// transactions wait until this one ends (see [`tenant_lock_sql`]).
pub async fn lock_tenant_exclusively(
    conn: &mut PgConnection,
    scope: &str,
) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(tenant_lock_sql(scope)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether `error` is a violation of constraint `name`. On Citus the error comes from a
/// shard: it names the shard's copy of the constraint (`name_<shard id>`), and only in its
/// message, not in the constraint field.
pub fn violates(error: &dyn sqlx::error::DatabaseError, name: &str) -> bool {
    let from_message = || {
        let message = error.message();
        let start = message.find("constraint \"")? + "constraint \"".len();
        let len = message[start..].find('"')?;
        Some(&message[start..start + len])
    };
    error.constraint().or_else(from_message).is_some_and(|c| {
        c == name
            || c.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// `value` as an SQL string literal (`standard_conforming_strings` is on since
/// PostgreSQL 9.1, so only quotes need doubling).
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Makes the rest of the open transaction run as [`APP_ROLE`] for tenant `scope`.
pub async fn scope_tx(conn: &mut PgConnection, scope: &str) -> Result<(), sqlx::Error> {
    let [role, tenant] = scope_sql(scope);
    sqlx::raw_sql(sqlx::AssertSqlSafe(role))
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(tenant))
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_travels_alone_after_the_citus_setting() {
        let [role, tenant] = scope_sql("acme");
        assert!(
            role.contains("SET LOCAL citus.propagate_set_commands TO 'local'"),
            "{role}"
        );
        assert!(role.contains("SET LOCAL ROLE tenant_router_app"), "{role}");
        assert_eq!(tenant, "SET LOCAL app.tenant_id TO 'acme'");
        assert_eq!(
            quote_literal("a'; DROP TABLE users; --"),
            "'a''; DROP TABLE users; --'"
        );
    }
}
