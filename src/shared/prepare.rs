//! Preparing the shared schema: the app's migrations, the router's own objects around
//! them, and on Citus the distribution by `tenant_id`.

use anyhow::Context as _;
use sqlx::PgConnection;

use super::{Prepared, REFERENCE_TABLES, ROLES, SharedDb};
use crate::schema::TenantSchema;

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

impl SharedDb {
    /// Prepares the shared schema for `schema`'s app, in order: the schema and the roles;
    /// the app's shared migrations; the router's own objects (the tenant directory and
    /// `tenant_router_enter`), made only where missing; a check that every tenant table has
    /// row-level security on; then, on Citus, the distribution of what is not distributed
    /// yet. Safe to run again and from several processes.
    pub async fn prepare(&self, schema: &TenantSchema) -> anyhow::Result<Prepared> {
        self.make_objects(Some(schema.shared_migrations())).await?;
        self.check_row_security(schema).await?;
        {
            let mut conn = self.pool.acquire().await?;
            crate::schema::check_catalog(&mut conn, schema, crate::schema::Unlisted::NoTenantTable)
                .await?;
        }
        let citus = self.has_citus().await?;
        let distributed = if citus {
            self.allow_role_login().await?;
            self.distribute(schema).await?
        } else {
            Vec::new()
        };
        Ok(Prepared { citus, distributed })
    }

    /// The router's part of [`Self::prepare`] alone, around the app's migrations when given:
    /// for an app that distributes its tables itself (its tenants are keyed by something
    /// else than `tenant_id`, like the `citus-ads` example's companies) and only needs the
    /// directory, the roles and the tenant data path.
    ///
    /// On Citus the directory becomes a reference table, so apps' tables must not reference
    /// it (a foreign key to a reference table turns a plain table into a Citus local one).
    pub async fn prepare_router_objects(
        &self,
        migrations: Option<&sqlx::migrate::Migrator>,
    ) -> anyhow::Result<()> {
        self.make_objects(migrations).await?;
        if self.has_citus().await? {
            self.allow_role_login().await?;
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7401105001)")
                .execute(&mut *tx)
                .await?;
            for table in REFERENCE_TABLES {
                match citus_kind(&mut tx, table).await? {
                    CitusKind::Reference => {}
                    CitusKind::Plain => {
                        run(
                            &mut tx,
                            &format!("SELECT create_reference_table('{table}')"),
                        )
                        .await?;
                        forget_local_rows(&mut tx, table).await?;
                    }
                    other => anyhow::bail!(
                        "shared.{table} should be a reference table, and Citus has it as {other:?}"
                    ),
                }
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// The schema, the roles, the app's migrations and the directory.
    async fn make_objects(
        &self,
        migrations: Option<&sqlx::migrate::Migrator>,
    ) -> anyhow::Result<()> {
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
        sqlx::raw_sql(include_str!("roles.sql"))
            .execute(&self.pool)
            .await
            .context("creating the roles shared tenants run as")?;
        if let Some(migrations) = migrations {
            migrations
                .run(&self.pool)
                .await
                .context("migrating the shared database")?;
        }
        // One process at a time: the checks and the creations are not atomic otherwise.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(7401105002)")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(include_str!("directory.sql"))
            .execute(&mut *tx)
            .await
            .context("creating the tenant directory")?;
        tx.commit().await?;
        Ok(())
    }

    /// Row-level security is the second line of defence behind every query's `tenant_id`
    /// filter; a tenant table without it is refused rather than served.
    async fn check_row_security(&self, schema: &TenantSchema) -> anyhow::Result<()> {
        for table in schema.tables() {
            let on: Option<bool> = sqlx::query_scalar(
                "SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass($1)",
            )
            .bind(table.name)
            .fetch_optional(&self.pool)
            .await?
            .flatten();
            match on {
                Some(true) => {}
                Some(false) => anyhow::bail!(
                    "shared.{} has no row-level security: the app's shared migrations must \
                     enable it, with a policy on app.tenant_id for the tenant_router_app role",
                    table.name
                ),
                None => anyhow::bail!(
                    "shared.{} is a tenant table of the app's schema, and its shared \
                     migrations did not create it",
                    table.name
                ),
            }
        }
        Ok(())
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
    async fn distribute(&self, schema: &TenantSchema) -> anyhow::Result<Vec<String>> {
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
        let tables: Vec<&str> = schema.tables().iter().map(|t| t.name).collect();
        for table in &tables {
            kinds.push(citus_kind(&mut tx, table).await?);
        }
        let first_group = match kinds[0] {
            CitusKind::Distributed { colocation, .. } => Some(colocation),
            _ => None,
        };
        for (table, kind) in tables.iter().zip(&kinds) {
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
                    schema.anchor(),
                    schema.anchor()
                );
            }
        }
        let mut done = Vec::new();
        let pending: Vec<&str> = tables
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
            let colocate = if *table == schema.anchor() {
                // A group of its own: isolating a tenant splits every table of the group,
                // and another app's tables have no business there.
                "none"
            } else {
                schema.anchor()
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
