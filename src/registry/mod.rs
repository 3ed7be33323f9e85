//! The tenant registry: an immutable snapshot behind an `ArcSwap`, so a lookup is a pointer
//! load and a hash probe, and a change is a new snapshot swapped in by one writer.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::pool::Budget;
use crate::tenant::{Isolation, PoolSettings, RateLimit, Tenant, TenantId};

mod entry;
mod lazy_pool;
mod options;
mod snapshot;
mod updates;

use lazy_pool::LazyPool;

pub use entry::TenantEntry;
pub use options::{ConnectionLimits, RegistryOptions};
pub use snapshot::Snapshot;

/// The tenants an instance serves. Lives in application state; clone the `Arc`.
pub struct Registry {
    current: ArcSwap<Snapshot>,
    /// Serialises writers, so two changes never race to build a snapshot from the same base.
    writer: Mutex<()>,
    /// `.test.com` for base domain `test.com`: the suffix a wildcard host ends with.
    wildcard_suffix: Option<String>,
    acquire_timeout: Duration,
    limits: ConnectionLimits,
    default_rate_limit: Option<RateLimit>,
    /// The one pool of every shared tenant.
    shared: Option<Arc<LazyPool>>,
    /// Open connections of all pools together.
    budget: Arc<Budget>,
    /// The applied version, for whoever waits on convergence (the bus, tests, benchmarks).
    applied: tokio::sync::watch::Sender<i64>,
    /// Rung when a request found its tenant gone from where this registry routes it (a
    /// move's guard answered): the sync catches up without waiting for a hint.
    stale: tokio::sync::Notify,
}

impl Registry {
    /// Says that a request found its tenant moved away from where this registry sent it:
    /// the routing may be stale (a move whose announcement was lost, for instance).
    pub fn suspect_stale(&self) {
        self.stale.notify_one();
    }

    /// Completes when [`Self::suspect_stale`] was called since the last time.
    pub async fn stale_suspected(&self) {
        self.stale.notified().await;
    }

    /// A registry with `options`; empty until a load or an apply.
    pub fn new(options: RegistryOptions) -> Self {
        let budget = Budget::new(options.max_total_connections.max(1));
        budget.spawn_reaper(Duration::from_secs(1));
        let wildcard_suffix = options
            .base_domain
            .map(|d| format!(".{}", d.trim_start_matches('.').to_ascii_lowercase()));
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
            stale: tokio::sync::Notify::new(),
            wildcard_suffix,
            acquire_timeout: options.acquire_timeout,
            limits: options.connection_limits,
            default_rate_limit: options.default_rate_limit,
            shared: options.shared_database.map(|database| {
                Arc::new(LazyPool {
                    label: "shared".into(),
                    budget: Arc::clone(&budget),
                    shared: true,
                    database,
                    settings: PoolSettings {
                        max_connections: 20,
                        idle_timeout_secs: 300,
                        ..PoolSettings::default()
                    },
                    acquire_timeout: options.acquire_timeout,
                    limits: options.connection_limits,
                    cell: OnceLock::new(),
                })
            }),
            applied: tokio::sync::watch::Sender::new(0),
            budget,
        }
    }

    /// The connection budget of every pool of this registry.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// The applied version (the current snapshot's).
    pub fn version(&self) -> i64 {
        self.current.load().version
    }

    /// A receiver that sees the applied version every time it changes.
    pub fn watch_version(&self) -> tokio::sync::watch::Receiver<i64> {
        self.applied.subscribe()
    }

    /// Publishes `next` as the current snapshot and closes the pools `old` held that `next`
    /// does not: among `changed` only (the ids an update touched), or among all when `None`.
    fn store(&self, old: &Snapshot, next: Snapshot, changed: Option<&[TenantId]>) {
        let version = next.version;
        self.current.store(Arc::new(next));
        retire_unused(old, &self.current.load(), self.shared.as_ref(), changed);
        self.applied.send_if_modified(|v| {
            let changed = *v != version;
            *v = version;
            changed
        });
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The tenant for a canonical host name (see [`crate::host::normalize`]): an exact host
    /// match first, then `<id>.<base domain>`. Wait-free for readers.
    pub fn resolve(&self, host: &str) -> Option<Arc<TenantEntry>> {
        let snapshot = self.current.load();
        if let Some(entry) = snapshot.by_host.get(host) {
            return Some(Arc::clone(entry));
        }
        let suffix = self.wildcard_suffix.as_deref()?;
        let label = host.strip_suffix(suffix)?;
        // Ids are single DNS labels; a label with a dot cannot be one.
        if label.contains('.') {
            return None;
        }
        snapshot.by_id.get(label).cloned()
    }

    fn entry(&self, tenant: Tenant, pool: Arc<LazyPool>) -> Arc<TenantEntry> {
        let limit = tenant.rate_limit.or(self.default_rate_limit);
        Arc::new(TenantEntry {
            tenant,
            pool,
            limit,
            limiter: OnceLock::new(),
        })
    }

    fn pool_for(&self, tenant: &Tenant, previous: Option<&Arc<TenantEntry>>) -> Arc<LazyPool> {
        if let (Isolation::Shared, Some(shared)) = (tenant.isolation, &self.shared) {
            return Arc::clone(shared);
        }
        match previous {
            Some(p) if p.pool.same_database(tenant) => Arc::clone(&p.pool),
            _ => Arc::new(LazyPool {
                label: tenant.id.as_str().into(),
                budget: Arc::clone(&self.budget),
                shared: tenant.isolation == Isolation::Shared,
                database: tenant.database.clone(),
                settings: tenant.pool,
                acquire_timeout: self.acquire_timeout,
                limits: self.limits,
                cell: OnceLock::new(),
            }),
        }
    }
}

/// Closes the pools `old` held that `new` no longer does (never the shared pool), looking
/// only at `changed` when given.
fn retire_unused(
    old: &Snapshot,
    new: &Snapshot,
    shared: Option<&Arc<LazyPool>>,
    changed: Option<&[TenantId]>,
) {
    let entries: Vec<(&TenantId, &Arc<TenantEntry>)> = match changed {
        Some(ids) => ids
            .iter()
            .filter_map(|id| old.by_id.get(id).map(|e| (id, e)))
            .collect(),
        None => old.by_id.iter().collect(),
    };
    for (id, entry) in entries {
        let kept = shared.is_some_and(|s| Arc::ptr_eq(s, &entry.pool))
            || new
                .by_id
                .get(id)
                .is_some_and(|n| Arc::ptr_eq(&n.pool, &entry.pool));
        if !kept {
            Arc::clone(&entry.pool).retire();
        }
    }
}
