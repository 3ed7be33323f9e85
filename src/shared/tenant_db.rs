//! The tenant data path: [`TenantDb`] and the [`TenantConn`] transactions it hands out.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::postgres::PgTransactionManager;
use sqlx::{AssertSqlSafe, PgConnection, SqlSafeStr as _};
use sqlx_core::transaction::TransactionManager as _;

use super::{quote_literal, scope_sql};
use crate::pool::{PooledConn, TenantPool};
use crate::tenant::{Isolation, Tenant};

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
    /// [`TenantConn::commit`]; dropped without it, everything rolls back. Dedicated and shared
    /// tenants behave the same, so a handler tested on one kind cannot lose writes on the
    /// other. For a shared tenant the transaction is also scoped to it (role and
    /// `app.tenant_id` set locally). sqlx knows the transaction is open, so a handler's own
    /// `conn.begin()` is a savepoint inside it, never a transaction of its own.
    pub async fn conn(&self) -> Result<TenantConn, sqlx::Error> {
        self.begin().await
    }

    /// The same as [`Self::conn`]: a transaction, rolled back unless committed.
    pub async fn begin(&self) -> Result<TenantConn, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        conn.set_dirty(true);
        match self.tenant.isolation {
            Isolation::Dedicated => {
                PgTransactionManager::begin(&mut conn, None).await?;
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
                let begin = format!("BEGIN; {enter}; {role}{own}");
                PgTransactionManager::begin(&mut conn, Some(AssertSqlSafe(begin).into_sql_str()))
                    .await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(tenant))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(TenantConn { conn, in_tx: true })
    }
}

/// A connection handed out by [`TenantDb`], in a transaction: deref to `PgConnection` for
/// queries, then [`Self::commit`] to keep what it wrote.
pub struct TenantConn {
    conn: PooledConn,
    in_tx: bool,
}

impl TenantConn {
    /// Commits the transaction. An error when it failed earlier (a statement of it was
    /// refused, even one the handler went past): PostgreSQL would answer that `COMMIT` with
    /// a rollback and no error, and the writes would be lost without a word.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if self.in_tx {
            // In a failed transaction every statement is refused (25P02).
            sqlx::raw_sql("SELECT 1").execute(&mut *self.conn).await?;
            PgTransactionManager::commit(&mut self.conn).await?;
            self.conn.set_dirty(false);
            self.in_tx = false;
        }
        Ok(())
    }

    /// Rolls the transaction back now (dropping does the same, off the request's path).
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        if self.in_tx {
            PgTransactionManager::rollback(&mut self.conn).await?;
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
