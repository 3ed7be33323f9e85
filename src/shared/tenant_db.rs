//! The tenant data path: [`TenantDb`] and the [`TenantConn`] transactions it hands out.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::PgConnection;

use super::{quote_literal, scope_sql};
use crate::pool::{PooledConn, TenantPool};
use crate::tenant::{Isolation, Tenant, TenantId};

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
