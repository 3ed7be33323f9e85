//! Moving a tenant between its own database and the shared one, without losing a row.
//!
//! The order is the contract:
//! 1. Take the tenant's write locks at the source (its tables, when they are its own
//!    database; its directory row and its rows, when it is shared). Readers go on; its
//!    writers wait; no other tenant is touched.
//! 2. Copy every row to the target in one transaction, and compare row counts per table.
//! 3. Close the source to the tenant's writers for good, in the transaction that holds the
//!    locks, and commit it: a dedicated source gets a trigger that refuses writes with a
//!    retryable error (57P03, a 503 for the client), a shared one its directory row marked
//!    `moved_out` (which `tenant_router_enter` refuses). A writer that waited on the lock
//!    fails rather than writing to the old place, before and after the switch alike. The
//!    source rows are all still there.
//! 4. Switch the tenant's configuration in one version bump, announced on the bus.
//! 5. Delete the source rows ([`clean_source`]).
//!
//! Killed anywhere, the tenant's data is whole in one place: before the commit of step 3,
//! at the source (the copy is replaced by the retry); between 3 and 4, at the source, closed
//! to writes until the retry (whose lock lifts the guard); after 4, at the target, with
//! the source's copy left for the retry to delete.

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use sqlx::{Connection as _, PgConnection};

use crate::schema::{TenantSchema, Unlisted};
use crate::shared::{SharedDb, lock_tenant_exclusively, scope_tx};
use crate::tenant::{DatabaseUrl, Isolation, TenantId};

/// Rows copied per table.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Copied {
    /// Table.
    pub table: &'static str,
    /// Rows.
    pub rows: i64,
}

/// Every row of the tenant, per table, as JSON arrays (`to_jsonb` of each row).
async fn read_rows(
    conn: &mut PgConnection,
    scope: &str,
    schema: &TenantSchema,
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for t in schema.tables() {
        let rows: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]') FROM {} r WHERE tenant_id = $1",
            t.name
        )))
        .bind(scope)
        .fetch_one(&mut *conn)
        .await
        .with_context(|| format!("reading {}", t.name))?;
        out.push(rows);
    }
    Ok(out)
}

/// How rows reach the target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// One `INSERT … SELECT` per table: a dedicated database.
    Bulk,
    /// One `INSERT … VALUES` per row: the shared schema. On Citus an `INSERT … SELECT` from
    /// the coordinator goes to the shards as a `COPY`, which row-level security refuses;
    /// an `INSERT … VALUES` of one tenant is routed to its shard like any other insert.
    PerRow,
}

/// Writes rows read by [`read_rows`] under `scope`, and checks the counts.
async fn write_rows(
    conn: &mut PgConnection,
    scope: &str,
    rows: &[Value],
    write: Write,
    schema: &TenantSchema,
) -> anyhow::Result<Vec<Copied>> {
    let mut copied = Vec::new();
    for (t, data) in schema.tables().iter().zip(rows) {
        let cols = t.columns.join(", ");
        let overriding = if t.identity.is_some() && write == Write::Bulk {
            "OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        match write {
            Write::Bulk => {
                let picked: Vec<String> = t.columns.iter().map(|c| format!("r.{c}")).collect();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {name} (tenant_id, {cols}) {overriding}
                     SELECT $2, {picked} FROM jsonb_populate_recordset(NULL::{name}, $1) r",
                    name = t.name,
                    picked = picked.join(", "),
                )))
                .bind(data)
                .bind(scope)
                .execute(&mut *conn)
                .await
                .with_context(|| format!("copying {}", t.name))?;
            }
            Write::PerRow => {
                let values: Vec<String> = t
                    .columns
                    .iter()
                    .map(|c| format!("(jsonb_populate_record(NULL::{}, $1)).{c}", t.name))
                    .collect();
                let sql = format!(
                    "INSERT INTO {name} (tenant_id, {cols}) VALUES ($2, {values})",
                    name = t.name,
                    values = values.join(", "),
                );
                for row in data.as_array().into_iter().flatten() {
                    sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(row)
                        .bind(scope)
                        .execute(&mut *conn)
                        .await
                        .with_context(|| format!("copying {}", t.name))?;
                }
            }
        }
        let expected = data.as_array().map_or(0, |a| a.len()) as i64;
        let got: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE tenant_id = $1",
            t.name
        )))
        .bind(scope)
        .fetch_one(&mut *conn)
        .await?;
        anyhow::ensure!(
            got == expected,
            "{}: {expected} rows at the source, {got} at the target",
            t.name
        );
        copied.push(Copied {
            table: t.name,
            rows: got,
        });
    }
    Ok(copied)
}

/// Moves identity sequences past the copied ids, so new rows never collide with them.
async fn bump_sequences(
    conn: &mut PgConnection,
    rows: &[Value],
    schema: &TenantSchema,
) -> anyhow::Result<()> {
    for (t, data) in schema.tables().iter().zip(rows) {
        let Some(column) = t.identity else { continue };
        let max = data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.get(column).and_then(Value::as_i64))
            .max();
        if let Some(max) = max {
            let seq = sequence_of(t.name, column);
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT setval('{seq}', greatest($1, (SELECT last_value FROM {seq})))"
            )))
            .bind(max)
            .execute(&mut *conn)
            .await
            .with_context(|| format!("moving the {} id sequence", t.name))?;
        }
    }
    Ok(())
}

/// The implicit name of an identity column's sequence.
fn sequence_of(table: &str, column: &str) -> String {
    format!("{table}_{column}_seq")
}

/// The source side of a move: the locks, held until [`Source::finish`].
pub(crate) enum Source {
    /// The tenant's own database, its tables locked against writers.
    Dedicated(PgConnection),
    /// The shared database, the tenant's directory row and rows locked.
    Shared(PgConnection),
}

impl Source {
    /// Opens the source and takes the tenant's write locks (in an open transaction).
    pub(crate) async fn lock(
        isolation: Isolation,
        database: &DatabaseUrl,
        id: &TenantId,
        schema: &TenantSchema,
        owned: bool,
    ) -> anyhow::Result<(Self, Vec<Value>)> {
        match isolation {
            Isolation::Dedicated => {
                let mut conn = PgConnection::connect_with(&database.connect_options())
                    .await
                    .with_context(|| format!("connecting to {database}"))?;
                sqlx::query("BEGIN").execute(&mut conn).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                    schema.table_list()
                )))
                .execute(&mut conn)
                .await
                .context("locking the tenant's tables")?;
                let unlisted = if owned {
                    Unlisted::NoTable
                } else {
                    Unlisted::Allowed
                };
                crate::schema::check_catalog(&mut conn, schema, unlisted).await?;
                // A guard left by a move that was killed before its switch: lifted here,
                // under the lock, and set again by `guard` (or never, on `abandon`).
                for t in schema.tables() {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP TRIGGER IF EXISTS tenant_router_moved ON {}",
                        t.name
                    )))
                    .execute(&mut conn)
                    .await?;
                }
                let rows = read_rows(&mut conn, "", schema).await?;
                Ok((Self::Dedicated(conn), rows))
            }
            Isolation::Shared => {
                let mut conn =
                    PgConnection::connect_with(&crate::shared::connect_options(database))
                        .await
                        .with_context(|| format!("connecting to {database}"))?;
                sqlx::query("BEGIN").execute(&mut conn).await?;
                // The tenant's own transactions wait from here on, and those under way
                // finish first (see `shared::lock_tenant_exclusively`).
                lock_tenant_exclusively(&mut conn, id.as_str())
                    .await
                    .context("locking the tenant's writers out")?;
                // One role for the whole transaction (see migration 0003 of the shared
                // schema): on Citus, two would deadlock with each other.
                scope_tx(&mut conn, id.as_str()).await?;
                // New rows of this tenant reference its directory row (users, job_runs) or
                // its users (sessions, notes): locking those blocks its writers only. A
                // `moved_out` left by a move killed before its switch is lifted here, under
                // the lock.
                sqlx::query("UPDATE tenants SET moved_out = false WHERE id = $1")
                    .bind(id.as_str())
                    .execute(&mut conn)
                    .await
                    .context("locking the tenant's directory row")?;
                for table in schema.tables().iter().map(|t| t.name) {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT 1 FROM {table} WHERE tenant_id = $1 FOR UPDATE"
                    )))
                    .bind(id.as_str())
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("locking the tenant's {table}"))?;
                }
                crate::schema::check_catalog(&mut conn, schema, Unlisted::NoTenantTable).await?;
                let rows = read_rows(&mut conn, id.as_str(), schema).await?;
                Ok((Self::Shared(conn), rows))
            }
        }
    }

    /// Closes the source to the tenant's writers for good and commits, releasing the
    /// locks. Every row stays until [`clean_source`].
    pub(crate) async fn guard(self, id: &TenantId, schema: &TenantSchema) -> anyhow::Result<()> {
        match self {
            Self::Dedicated(mut conn) => {
                sqlx::query(
                    "CREATE OR REPLACE FUNCTION tenant_router_moved() RETURNS trigger
                     LANGUAGE plpgsql AS $$ BEGIN
                       IF current_setting('tenant_router.cleaning', true) = 'on' THEN
                         RETURN NULL;
                       END IF;
                       RAISE EXCEPTION 'this tenant has moved to another database; retry'
                         USING ERRCODE = '57P03';
                     END $$",
                )
                .execute(&mut conn)
                .await?;
                for t in schema.tables() {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "CREATE TRIGGER tenant_router_moved BEFORE INSERT OR UPDATE OR DELETE
                         ON {} FOR EACH STATEMENT EXECUTE FUNCTION tenant_router_moved()",
                        t.name
                    )))
                    .execute(&mut conn)
                    .await?;
                }
                sqlx::query("COMMIT").execute(&mut conn).await?;
                let _ = conn.close().await;
            }
            Self::Shared(mut conn) => {
                sqlx::query("UPDATE tenants SET moved_out = true WHERE id = $1")
                    .bind(id.as_str())
                    .execute(&mut conn)
                    .await?;
                sqlx::query("COMMIT").execute(&mut conn).await?;
                let _ = conn.close().await;
            }
        }
        Ok(())
    }

    /// Gives up: rolls back, releasing the locks, leaving the source as it was.
    pub(crate) async fn abandon(self) {
        let (Self::Dedicated(mut conn) | Self::Shared(mut conn)) = self;
        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
        let _ = conn.close().await;
    }
}

/// Copies `rows` into a dedicated target database (created and migrated by the caller).
/// Leftovers of an earlier attempt, and a "moved" guard from an earlier move out, go first.
pub(crate) async fn copy_to_dedicated(
    target: &DatabaseUrl,
    rows: &[Value],
    schema: &TenantSchema,
) -> anyhow::Result<Vec<Copied>> {
    let mut conn = PgConnection::connect_with(&target.connect_options())
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let mut tx = conn.begin().await?;
    for t in schema.tables() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TRIGGER IF EXISTS tenant_router_moved ON {}",
            t.name
        )))
        .execute(&mut *tx)
        .await?;
    }
    for t in schema.tables().iter().rev() {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {}", t.name)))
            .execute(&mut *tx)
            .await?;
    }
    let copied = write_rows(&mut tx, "", rows, Write::Bulk, schema).await?;
    bump_sequences(&mut tx, rows, schema).await?;
    tx.commit().await?;
    let _ = conn.close().await;
    Ok(copied)
}

/// Copies `rows` into the shared database under the tenant's id.
pub(crate) async fn copy_to_shared(
    shared: &SharedDb,
    id: &TenantId,
    rows: &[Value],
    schema: &TenantSchema,
) -> anyhow::Result<Vec<Copied>> {
    let mut tx = shared.pool().begin().await?;
    lock_tenant_exclusively(&mut tx, id.as_str()).await?;
    scope_tx(&mut tx, id.as_str()).await?;
    sqlx::query("UPDATE tenants SET moved_out = false WHERE id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    for t in schema.tables().iter().rev() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {} WHERE tenant_id = $1",
            t.name
        )))
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    }
    let copied = write_rows(&mut tx, id.as_str(), rows, Write::PerRow, schema).await?;
    sqlx::query("RESET ROLE").execute(&mut *tx).await?;
    bump_sequences(&mut tx, rows, schema).await?;
    tx.commit().await?;
    Ok(copied)
}

/// Deletes a tenant's rows at the source of a move that has switched (the last step; see
/// the module). A dedicated source keeps its guard; a shared one loses its directory row.
/// Idempotent: a retry after a crash finds less or nothing to delete.
pub(crate) async fn clean_source(
    isolation: Isolation,
    database: &DatabaseUrl,
    id: &TenantId,
    schema: &TenantSchema,
) -> anyhow::Result<()> {
    match isolation {
        Isolation::Dedicated => {
            let mut conn = PgConnection::connect_with(&database.connect_options())
                .await
                .with_context(|| format!("connecting to {database}"))?;
            let mut tx = conn.begin().await?;
            // The guard lets this transaction's deletes through, and nothing else.
            sqlx::query("SET LOCAL tenant_router.cleaning = 'on'")
                .execute(&mut *tx)
                .await?;
            for t in schema.tables().iter().rev() {
                sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {}", t.name)))
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("deleting the moved {}", t.name))?;
            }
            tx.commit().await?;
            let _ = conn.close().await;
        }
        Isolation::Shared => {
            let mut conn = PgConnection::connect_with(&crate::shared::connect_options(database))
                .await
                .with_context(|| format!("connecting to {database}"))?;
            let mut tx = conn.begin().await?;
            lock_tenant_exclusively(&mut tx, id.as_str())
                .await
                .context("locking the tenant's writers out")?;
            scope_tx(&mut tx, id.as_str()).await?;
            for t in schema.tables().iter().rev() {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {} WHERE tenant_id = $1",
                    t.name
                )))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .with_context(|| format!("deleting the moved {}", t.name))?;
            }
            sqlx::query("DELETE FROM tenants WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            let _ = conn.close().await;
        }
    }
    Ok(())
}

/// Takes the guard of an earlier move off a dedicated database that is adopted again (see
/// [`Source::guard`]), so the tenant can write to it.
pub(crate) async fn lift_guard(
    database: &DatabaseUrl,
    schema: &TenantSchema,
) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(&database.connect_options())
        .await
        .with_context(|| format!("connecting to {database}"))?;
    for t in schema.tables() {
        // Tables not made yet (a database given by hand, before `migrate`) have no guard.
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(t.name)
            .fetch_one(&mut conn)
            .await?;
        if exists {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP TRIGGER IF EXISTS tenant_router_moved ON {}",
                t.name
            )))
            .execute(&mut conn)
            .await
            .context("lifting a move's guard")?;
        }
    }
    let _ = conn.close().await;
    Ok(())
}
