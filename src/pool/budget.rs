//! The global connection budget: a permit per open connection, eviction and reaping of idle
//! connections across pools, and the counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::stats::{BudgetStats, PoolStats};

/// A pool that already has connections may close another pool's idle connection to grow
/// only when that connection has been idle this long (the default of [`Budget::new`]).
pub const COLD_AFTER: Duration = Duration::from_secs(1);

/// The global connection budget, shared by every tenant pool of a registry.
pub struct Budget {
    max_total: usize,
    pub(super) cold_after: Duration,
    pub(super) permits: Arc<Semaphore>,
    /// Rung when a permit comes back.
    pub(super) released: Notify,
    pools: Mutex<Vec<Weak<dyn Member>>>,
    /// The pools that may hold idle connections (each listed once, see `Conns::listed`): at
    /// most the budget's worth plus pools that emptied since the last eviction, so an
    /// eviction looks at a few dozen pools, not at every tenant that ever had traffic.
    with_idle: Mutex<Vec<Weak<dyn Member>>>,
    /// Connections being closed whose permits have not come back yet.
    pub(super) closing: AtomicUsize,
    /// Acquires of pools with no connection, queued for a permit.
    pub(super) queued: AtomicUsize,
    pub(super) opened: AtomicU64,
    pub(super) closed: AtomicU64,
    pub(super) evictions: AtomicU64,
    pub(super) waits: AtomicU64,
    pub(super) refusals: AtomicU64,
}

/// A pool as the budget sees it, whatever its connections are.
pub(super) trait Member: Send + Sync {
    /// Its figures.
    fn stats(&self) -> PoolStats;

    /// Its idle and in-use connections.
    fn usage(&self) -> (usize, usize);

    /// Since when its connection idle the longest has been idle; with none idle, `None`,
    /// and the pool counts itself off the `with_idle` list (its caller drops it from there).
    fn oldest_idle_or_unlist(&self) -> Option<Instant>;

    /// Closes its connection idle the longest, if idle for `min_idle` (checked again: it may
    /// have been taken since it was chosen). Returns whether it did.
    fn evict_oldest(&self, min_idle: Duration) -> bool;

    /// Closes its idle connections past their idle timeout or lifetime, or all of them once
    /// the pool is retired.
    fn reap(&self);
}

impl Budget {
    /// A budget of `max_total` open connections.
    pub fn new(max_total: usize) -> Arc<Self> {
        Self::with_cold_after(max_total, COLD_AFTER)
    }

    /// A budget whose pools may grow by closing another pool's connection only when it has
    /// been idle for `cold_after` ([`COLD_AFTER`] in [`Self::new`]).
    pub fn with_cold_after(max_total: usize, cold_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            cold_after,
            permits: Arc::new(Semaphore::new(max_total)),
            released: Notify::new(),
            pools: Mutex::new(Vec::new()),
            with_idle: Mutex::new(Vec::new()),
            closing: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        })
    }

    /// The budget.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Counts a new pool in the stats and the reaping.
    pub(super) fn register(&self, pool: Weak<dyn Member>) {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pool);
    }

    /// Lists a pool that now holds an idle connection, for eviction to look at. The caller
    /// holds no pool's lock (the lock order is this list, then a pool).
    pub(super) fn list_with_idle(&self, pool: Weak<dyn Member>) {
        self.with_idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pool);
    }

    fn live_pools(&self) -> Vec<Arc<dyn Member>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.iter().filter_map(Weak::upgrade).collect()
    }

    /// Totals and counters.
    pub fn stats(&self) -> BudgetStats {
        let pools = self.live_pools();
        let (mut idle, mut in_use) = (0, 0);
        for p in &pools {
            let (i, u) = p.usage();
            idle += i;
            in_use += u;
        }
        BudgetStats {
            max_total_connections: self.max_total,
            open: self.max_total - self.permits.available_permits(),
            idle,
            in_use,
            pools: pools.len(),
            opened_total: self.opened.load(Ordering::Relaxed),
            closed_total: self.closed.load(Ordering::Relaxed),
            evictions_total: self.evictions.load(Ordering::Relaxed),
            waits_total: self.waits.load(Ordering::Relaxed),
            refusals_total: self.refusals.load(Ordering::Relaxed),
        }
    }

    /// The `n` pools with the most open connections.
    pub fn top_pools(&self, n: usize) -> Vec<PoolStats> {
        let mut all: Vec<PoolStats> = self.live_pools().iter().map(|p| p.stats()).collect();
        all.sort_by(|a, b| b.open.cmp(&a.open).then_with(|| a.pool.cmp(&b.pool)));
        all.truncate(n);
        all
    }

    /// Closes the connection that has been idle the longest, in any pool but `except`, if
    /// it has been idle for `min_idle`. Returns whether one was closed (its permit comes
    /// back after the close grace). Pools reuse their newest idle connection, so an active
    /// pool's surplus ages and goes first, and its last connection stays warm.
    pub(super) fn evict_one(&self, except: &dyn Member, min_idle: Duration) -> bool {
        // Lock order: `with_idle`, then a pool's state (`put_back` never holds both).
        let victim = {
            let mut listed = self.with_idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut victim: Option<(Instant, Arc<dyn Member>)> = None;
            listed.retain(|weak| {
                let Some(pool) = weak.upgrade() else {
                    return false;
                };
                let Some(since) = pool.oldest_idle_or_unlist() else {
                    return false;
                };
                let older =
                    since.elapsed() >= min_idle && victim.as_ref().is_none_or(|(v, _)| since < *v);
                if older && !std::ptr::addr_eq(Arc::as_ptr(&pool), except) {
                    victim = Some((since, pool));
                }
                true
            });
            victim
        };
        victim.is_some_and(|(_, pool)| pool.evict_oldest(min_idle))
    }

    /// Closes connections idle for longer than their pool's idle timeout, and every idle
    /// connection of a retired pool.
    pub fn reap(&self) {
        for pool in self.live_pools() {
            pool.reap();
        }
    }

    /// Runs [`Self::reap`] every `every` while the budget is alive.
    pub fn spawn_reaper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match weak.upgrade() {
                        Some(budget) => budget.reap(),
                        None => return,
                    }
                }
            });
        }
    }
}
