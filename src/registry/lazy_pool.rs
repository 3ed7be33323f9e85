//! A tenant's pool, made on first use: an idle tenant costs nothing.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::ConnectionLimits;
use crate::pool::{Budget, TenantPool};
use crate::tenant::{DatabaseUrl, PoolSettings, Tenant};

/// A pool that does not exist until first asked for, so an idle tenant costs no connection and
/// no background task.
pub(super) struct LazyPool {
    /// The tenant's id, or `shared`.
    pub(super) label: Box<str>,
    /// The shared database's pool: connections search the shared schema.
    pub(super) shared: bool,
    pub(super) database: DatabaseUrl,
    pub(super) settings: PoolSettings,
    pub(super) acquire_timeout: Duration,
    pub(super) limits: ConnectionLimits,
    pub(super) budget: Arc<Budget>,
    pub(super) cell: OnceLock<Arc<TenantPool>>,
}

impl LazyPool {
    pub(super) fn get(&self) -> &Arc<TenantPool> {
        self.cell.get_or_init(|| {
            // No ping before use: a round trip per request; a connection that died with its
            // server fails one query instead.
            let options = if self.shared {
                crate::shared::connect_options(&self.database)
            } else {
                self.database.connect_options()
            };
            // Named after the router and the tenant (`pg_stat_activity` shows whose it is),
            // with the timeouts that stop a runaway query or a forgotten transaction from
            // holding a connection for good.
            let statement = self
                .settings
                .statement_timeout_ms
                .unwrap_or(self.limits.statement_timeout_ms);
            let idle = self
                .settings
                .idle_in_transaction_timeout_ms
                .unwrap_or(self.limits.idle_in_transaction_timeout_ms);
            let options = options
                .application_name(&format!("tenant-router/{}", self.label))
                .options([
                    ("statement_timeout", statement.to_string()),
                    ("idle_in_transaction_session_timeout", idle.to_string()),
                ]);
            let pool = TenantPool::with_max_lifetime(
                &self.label,
                &self.budget,
                options,
                self.settings.max_connections as usize,
                self.settings.idle_timeout(),
                self.acquire_timeout,
                self.limits.max_lifetime,
            );
            if self.shared {
                pool.reset_sessions_on_return();
            }
            pool
        })
    }

    pub(super) fn same_database(&self, tenant: &Tenant) -> bool {
        self.database == tenant.database && self.settings == tenant.pool
    }

    /// Closes the pool, if it was ever opened: idle connections now, in-use ones when their
    /// queries are done.
    pub(super) fn retire(self: Arc<Self>) {
        if let Some(pool) = self.cell.get() {
            pool.close();
        }
    }
}
