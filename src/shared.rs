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

/// The roles shared-tenant transactions switch to. Citus opens its connections to the
/// workers as the current role, so on Citus they must be allowed to log in.
pub const ROLES: &[&str] = &[APP_ROLE, APEX_ROLE];

/// The role of the apex login's cross-tenant lookup (reads `users`' emails and hashes only).
pub const APEX_ROLE: &str = "tenant_router_apex";

/// What Citus has made of a table (`pg_dist_partition`), as far as shared mode cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CitusKind {
    /// Not in Citus' metadata: a plain PostgreSQL table on the coordinator.
    Plain,
    /// A reference table, copied to every node.
    Reference,
    /// Hash-distributed, in this co-location group, by this column.
    Distributed { colocation: i32, by_tenant: bool },
    /// Anything else: a Citus local table (what a foreign key to a reference table makes
    /// of a plain one), or distributed by range or append.
    Other,
}

async fn citus_kind(conn: &mut PgConnection, table: &str) -> anyhow::Result<CitusKind> {
    let row: Option<(String, String, i32, bool)> = sqlx::query_as(
        "SELECT partmethod::text, repmodel::text, colocationid,
                coalesce(column_to_column_name(logicalrelid, partkey) = 'tenant_id', false)
         FROM pg_dist_partition WHERE logicalrelid = $1::regclass",
    )
    .bind(table)
    .fetch_optional(&mut *conn)
    .await
    .with_context(|| format!("reading what Citus made of {table}"))?;
    Ok(match row {
        None => CitusKind::Plain,
        Some((m, r, _, _)) if m == "n" && r == "t" => CitusKind::Reference,
        Some((m, _, colocation, by_tenant)) if m == "h" => CitusKind::Distributed {
            colocation,
            by_tenant,
        },
        Some(_) => CitusKind::Other,
    })
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
        let distributed = if citus {
            self.allow_role_login().await?;
            self.distribute().await?
        } else {
            Vec::new()
        };
        Ok(Prepared { citus, distributed })
    }

    /// Citus connects to the workers as the current role, so the roles shared-tenant
    /// transactions switch to must be allowed to log in (Citus passes `ALTER ROLE` on to
    /// every node). They have no password: where the nodes ask for one, give it in
    /// `pg_dist_authinfo` (see the README's Citus mode).
    async fn allow_role_login(&self) -> anyhow::Result<()> {
        for role in ROLES {
            // On the coordinator and on every worker: a role made on a worker by hand, or
            // copied there by `citus_add_node` before it could log in, counts too.
            let can: bool = sqlx::query_scalar(
                "SELECT (SELECT rolcanlogin FROM pg_roles WHERE rolname = $1)
                    AND coalesce(bool_and(success AND result = 't'), true)
                 FROM run_command_on_workers(
                     format('SELECT rolcanlogin FROM pg_roles WHERE rolname = %L', $1::text))",
            )
            .bind(role)
            .fetch_one(&self.pool)
            .await
            .with_context(|| format!("looking up role {role} on the nodes"))?;
            if !can {
                let altered = sqlx::query(sqlx::AssertSqlSafe(format!("ALTER ROLE {role} LOGIN")))
                    .execute(&self.pool)
                    .await;
                // Roles are the server's: another process, or another database's
                // preparation, may be doing the same ("tuple concurrently updated").
                let done: bool =
                    sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
                        .bind(role)
                        .fetch_one(&self.pool)
                        .await?;
                if !done {
                    altered
                        .with_context(|| format!("letting role {role} log in (Citus needs it)"))?;
                }
            }
        }
        Ok(())
    }

    /// Makes the directory a reference table and every tenant table hash-distributed by
    /// `tenant_id` in one co-location group, deciding by what each table *is*. Tables an
    /// earlier version left as Citus local tables are converted: their foreign keys are
    /// dropped (which turns them back into plain tables), the tables distributed, the keys
    /// added again. One transaction, under an advisory lock: all of it or nothing, one
    /// process at a time. Returns the Citus calls it made.
    async fn distribute(&self) -> anyhow::Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        // DDL over several nodes in one transaction must use one connection per node.
        sqlx::raw_sql(
            "SELECT pg_advisory_xact_lock(7401105001);
             SET LOCAL citus.multi_shard_modify_mode TO 'sequential'",
        )
        .execute(&mut *tx)
        .await
        .context("locking the shared schema's distribution")?;
        let mut kinds = Vec::new();
        for table in TENANT_TABLES {
            kinds.push(citus_kind(&mut tx, table).await?);
        }
        let first_group = match kinds[0] {
            CitusKind::Distributed { colocation, .. } => Some(colocation),
            _ => None,
        };
        for (table, kind) in TENANT_TABLES.iter().zip(&kinds) {
            if let CitusKind::Distributed {
                colocation,
                by_tenant,
            } = *kind
            {
                anyhow::ensure!(
                    by_tenant,
                    "shared.{table} is distributed by another column than tenant_id; \
                     undistribute it (SELECT undistribute_table('shared.{table}')) and run migrate again"
                );
                anyhow::ensure!(
                    Some(colocation) == first_group,
                    "shared.{table} is not co-located with shared.{}; \
                     SELECT update_distributed_table_colocation('shared.{table}', colocate_with => 'shared.{}') \
                     and run migrate again",
                    TENANT_TABLES[0],
                    TENANT_TABLES[0]
                );
            }
        }
        let mut done = Vec::new();
        let pending: Vec<&str> = TENANT_TABLES
            .iter()
            .zip(&kinds)
            .filter(|(_, k)| !matches!(k, CitusKind::Distributed { .. }))
            .map(|(t, _)| *t)
            .collect();
        // The foreign keys of and to the tables still to distribute.
        let keys: Vec<(String, String)> = if pending.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(
                "SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', conrelid::regclass, conname),
                        format('ALTER TABLE %s ADD CONSTRAINT %I %s',
                               conrelid::regclass, conname, pg_get_constraintdef(oid))
                 FROM pg_constraint
                 WHERE contype = 'f'
                   AND (conrelid = ANY($1::regclass[]) OR confrelid = ANY($1::regclass[]))
                 ORDER BY oid",
            )
            .bind(&pending)
            .fetch_all(&mut *tx)
            .await
            .context("reading the foreign keys")?
        };
        for (drop, _) in &keys {
            sqlx::query(sqlx::AssertSqlSafe(drop.clone()))
                .execute(&mut *tx)
                .await
                .with_context(|| drop.clone())?;
        }
        for table in REFERENCE_TABLES {
            match citus_kind(&mut tx, table).await? {
                CitusKind::Reference => {}
                CitusKind::Plain => {
                    let call = format!("SELECT create_reference_table('{table}')");
                    run(&mut tx, &call).await?;
                    forget_local_rows(&mut tx, table).await?;
                    done.push(call);
                }
                other => anyhow::bail!(
                    "shared.{table} should be a reference table, and Citus has it as {other:?}"
                ),
            }
        }
        for table in &pending {
            let colocate = if *table == TENANT_TABLES[0] {
                // A group of its own: isolating a tenant splits every table of the group,
                // and another app's tables have no business there.
                "none"
            } else {
                TENANT_TABLES[0]
            };
            let call = format!(
                "SELECT create_distributed_table('{table}', 'tenant_id', colocate_with => '{colocate}')"
            );
            run(&mut tx, &call).await?;
            forget_local_rows(&mut tx, table).await?;
            done.push(call);
        }
        for (_, add) in &keys {
            run(&mut tx, add).await?;
        }
        tx.commit().await.context("committing the distribution")?;
        Ok(done)
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

    /// Whether any table holds a row of tenant `id`.
    pub async fn has_rows(&self, id: &TenantId) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        scope_tx(&mut tx, id.as_str()).await?;
        let mut found = false;
        for table in TENANT_TABLES {
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

    /// Deletes every row of a tenant, and its directory entry, in one transaction.
    pub async fn purge(&self, id: &TenantId) -> anyhow::Result<u64> {
        let mut tx = self.pool.begin().await?;
        lock_tenant_exclusively(&mut tx, id.as_str()).await?;
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
        // Still as the app role: one role per transaction (shared migration 0003).
        sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows)
    }
}

/// Distributing a table copies its rows into the shards and leaves the originals on the
/// coordinator's disk, out of sight: a purge or a move would never reach them. This
/// removes them.
async fn forget_local_rows(conn: &mut PgConnection, table: &str) -> anyhow::Result<()> {
    run(
        conn,
        &format!("SELECT truncate_local_data_after_distributing_table('{table}')"),
    )
    .await
}

async fn run(conn: &mut PgConnection, sql: &str) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(conn)
        .await
        .with_context(|| sql.to_string())?;
    Ok(())
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

    /// A connection for this tenant, in a transaction: writes last only after
    /// [`TenantConn::commit`]; dropped without it, everything rolls back (and a warning names
    /// the tenant if anything was written). Dedicated and shared tenants behave the same, so
    /// a handler tested on one kind cannot lose writes on the other. For a shared tenant the
    /// transaction is also scoped to it (role and `app.tenant_id` set locally).
    pub async fn conn(&self) -> Result<TenantConn, sqlx::Error> {
        self.begin().await
    }

    /// The same as [`Self::conn`]: a transaction, rolled back unless committed.
    pub async fn begin(&self) -> Result<TenantConn, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        conn.set_dirty(true);
        match self.tenant.isolation {
            Isolation::Dedicated => {
                sqlx::query("BEGIN").execute(&mut *conn).await?;
            }
            // Two round trips: the tenant's lock and check (shared migration 0004) with the
            // role, then the tenant's `SET LOCAL`, which must travel alone (see `scope_sql`).
            Isolation::Shared => {
                let [role, tenant] = scope_sql(self.scope());
                let enter = format!(
                    "SELECT tenant_router_enter({})",
                    quote_literal(self.scope())
                );
                // A tenant's own timeouts replace the shared pool's for its transactions.
                let mut own = String::new();
                if let Some(ms) = self.tenant.pool.statement_timeout_ms {
                    own.push_str(&format!("; SET LOCAL statement_timeout = {ms}"));
                }
                if let Some(ms) = self.tenant.pool.idle_in_transaction_timeout_ms {
                    own.push_str(&format!(
                        "; SET LOCAL idle_in_transaction_session_timeout = {ms}"
                    ));
                }
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("BEGIN; {enter}; {role}{own}")))
                    .execute(&mut *conn)
                    .await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(tenant))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(TenantConn {
            conn,
            in_tx: true,
            tenant: self.tenant.id.clone(),
        })
    }
}

/// A connection handed out by [`TenantDb`], in a transaction: deref to `PgConnection` for
/// queries, then [`Self::commit`] to keep what it wrote.
pub struct TenantConn {
    conn: PooledConn,
    in_tx: bool,
    tenant: TenantId,
}

impl TenantConn {
    /// Commits the transaction.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if self.in_tx {
            sqlx::query("COMMIT").execute(&mut *self.conn).await?;
            self.conn.set_dirty(false);
            self.in_tx = false;
        }
        Ok(())
    }

    /// Rolls the transaction back now (dropping does the same, off the request's path).
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        if self.in_tx {
            sqlx::query("ROLLBACK").execute(&mut *self.conn).await?;
            self.conn.set_dirty(false);
            self.in_tx = false;
        }
        Ok(())
    }
}

impl Drop for TenantConn {
    fn drop(&mut self) {
        if self.in_tx {
            self.conn.report_uncommitted(self.tenant.as_str());
        }
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
