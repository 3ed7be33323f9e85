//! Tenant connection pools under one global budget.
//!
//! Every open tenant connection holds one permit of the [`Budget`]'s semaphore, taken
//! *before* the connection is opened and given back only after it is closed, so the number
//! of open connections can never exceed the budget, whatever the load. When a tenant needs a
//! connection and the budget is spent, the pool closes the connection that has been idle
//! the longest (never one in use), waits for a permit or a connection of its own up to the
//! acquire timeout, and then gives up with `sqlx::Error::PoolTimedOut`, which the API
//! answers with a 503.
//!
//! Who may evict whom, so that a working set that fits the budget stops churning:
//! - a pool with no connection at all may close any idle connection of another pool (it
//!   cannot make progress otherwise), once per acquire, and then queues for a permit;
//! - a pool that already has connections may grow only into free permits or by closing a
//!   *cold* connection (idle for [`COLD_AFTER`]); otherwise it waits for its own.
//!
//! The victim is always the connection idle the longest, whichever pool holds it: a busy
//! pool's idle surplus (left by a burst) goes before a quiet pool's only connection, so a
//! burst cannot hoard the budget while other tenants get 503s. A connection in use is never
//! closed.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection as _, Executor as _};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// After closing a connection, how long its permit is kept: the server needs a moment to
/// end the backend, and `pg_stat_activity` must never show more than the budget.
const CLOSE_GRACE: Duration = Duration::from_millis(2);

/// A pool that already has connections may close another pool's idle connection to grow
/// only when that connection has been idle this long (the default of [`Budget::new`]).
pub const COLD_AFTER: Duration = Duration::from_secs(1);

/// How often a pool with no connection, waiting while every connection is in use, looks
/// again for one to close.
const EVICT_RETRY: Duration = Duration::from_millis(5);

/// How long a queued pool with no connection waits for the permit its eviction freed
/// before it checks whether that permit went to an earlier acquire.
const REEVICT_AFTER: Duration = Duration::from_millis(50);

/// At most how long a pool that wants to grow waits before it looks for a cold connection
/// again.
const COLD_RETRY: Duration = Duration::from_millis(250);

/// The global connection budget, shared by every tenant pool of a registry.
pub struct Budget {
    max_total: usize,
    cold_after: Duration,
    permits: Arc<Semaphore>,
    /// Rung when a permit comes back.
    released: Notify,
    pools: Mutex<Vec<Weak<TenantPool>>>,
    /// The pools that may hold idle connections (each listed once, see `State::listed`):
    /// at most the budget's worth plus pools that emptied since the last eviction, so an
    /// eviction looks at a few dozen pools, not at every tenant that ever had traffic.
    with_idle: Mutex<Vec<Weak<TenantPool>>>,
    /// Connections being closed whose permits have not come back yet.
    closing: AtomicUsize,
    /// Acquires of pools with no connection, queued for a permit.
    queued: AtomicUsize,
    opened: AtomicU64,
    closed: AtomicU64,
    evictions: AtomicU64,
    waits: AtomicU64,
    refusals: AtomicU64,
}

/// Counters and gauges of a budget.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BudgetStats {
    /// The budget.
    pub max_total_connections: usize,
    /// Open connections (holding a permit), in all pools.
    pub open: usize,
    /// Of which idle.
    pub idle: usize,
    /// Of which in use.
    pub in_use: usize,
    /// Pools that exist (tenants that had traffic and were not reaped).
    pub pools: usize,
    /// Connections opened since start.
    pub opened_total: u64,
    /// Connections closed since start.
    pub closed_total: u64,
    /// Idle connections of other pools closed to make room.
    pub evictions_total: u64,
    /// Acquires that had to wait.
    pub waits_total: u64,
    /// Acquires that gave up (answered 503).
    pub refusals_total: u64,
}

/// One pool's figures.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolStats {
    /// The tenant (or `shared`).
    pub pool: String,
    /// Open connections.
    pub open: usize,
    /// Idle ones.
    pub idle: usize,
    /// In use.
    pub in_use: usize,
    /// Its own cap.
    pub max_connections: usize,
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

    fn live_pools(&self) -> Vec<Arc<TenantPool>> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        pools.iter().filter_map(Weak::upgrade).collect()
    }

    /// Totals and counters.
    pub fn stats(&self) -> BudgetStats {
        let pools = self.live_pools();
        let (mut idle, mut in_use) = (0, 0);
        for p in &pools {
            let s = p.lock();
            idle += s.idle.len();
            in_use += s.in_use;
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
    /// back after [`CLOSE_GRACE`]). Pools reuse their newest idle connection, so an active
    /// pool's surplus ages and goes first, and its last connection stays warm.
    fn evict_one(&self, except: &TenantPool, min_idle: Duration) -> bool {
        let oldest_idle = |s: &State| {
            s.idle
                .first()
                .map(|c| c.since)
                .filter(|since| since.elapsed() >= min_idle)
        };
        // Lock order: `with_idle`, then a pool's state (`put_back` never holds both).
        let victim = {
            let mut listed = self.with_idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut victim: Option<(Instant, Arc<TenantPool>)> = None;
            listed.retain(|weak| {
                let Some(pool) = weak.upgrade() else {
                    return false;
                };
                let mut s = pool.lock();
                if s.idle.is_empty() {
                    s.listed = false;
                    return false;
                }
                let older =
                    oldest_idle(&s).filter(|since| victim.as_ref().is_none_or(|(v, _)| since < v));
                drop(s);
                match older {
                    Some(since) if !std::ptr::eq(Arc::as_ptr(&pool), except) => {
                        victim = Some((since, pool));
                    }
                    _ => {}
                }
                true
            });
            victim
        };
        let Some((_, pool)) = victim else {
            return false;
        };
        let conn = {
            let mut s = pool.lock();
            if oldest_idle(&s).is_none() {
                return false;
            }
            s.open -= 1;
            s.idle.remove(0)
        };
        self.evictions.fetch_add(1, Ordering::Relaxed);
        pool.budget_close(conn.conn, conn.permit);
        true
    }

    /// Closes connections idle for longer than their pool's idle timeout, and every idle
    /// connection of a retired pool.
    pub fn reap(&self) {
        for pool in self.live_pools() {
            let expired: Vec<IdleConn> = {
                let mut s = pool.lock();
                let retired = pool.closed.load(Ordering::Relaxed);
                let (old, keep): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut s.idle).into_iter().partition(|c| {
                        retired
                            || c.since.elapsed() >= pool.idle_timeout
                            || c.born.elapsed() >= pool.max_lifetime
                    });
                s.idle = keep;
                s.open -= old.len();
                old
            };
            for c in expired {
                pool.budget_close(c.conn, c.permit);
            }
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

type WaitForPermit = std::pin::Pin<
    Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>,
>;

/// Counts an acquire in the budget's queue of pools with no connection while it lives.
struct Queued<'a>(&'a Budget);

impl<'a> Queued<'a> {
    fn new(budget: &'a Budget) -> Self {
        budget.queued.fetch_add(1, Ordering::Relaxed);
        Self(budget)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

struct IdleConn {
    conn: PgConnection,
    permit: OwnedSemaphorePermit,
    since: Instant,
    born: Instant,
}

struct State {
    idle: Vec<IdleConn>,
    /// In the budget's `with_idle` list.
    listed: bool,
    open: usize,
    in_use: usize,
}

/// One tenant's pool (or the shared database's), at most `max_connections` open, all
/// counted against the [`Budget`].
pub struct TenantPool {
    label: String,
    budget: Arc<Budget>,
    options: PgConnectOptions,
    cap: usize,
    idle_timeout: Duration,
    acquire_timeout: Duration,
    /// A connection older than this is closed when it comes back, not reused.
    max_lifetime: Duration,
    state: Mutex<State>,
    returned: Notify,
    closed: AtomicBool,
}

impl TenantPool {
    /// A pool (opening nothing yet), registered with `budget`.
    pub fn new(
        label: &str,
        budget: &Arc<Budget>,
        options: PgConnectOptions,
        max_connections: usize,
        idle_timeout: Duration,
        acquire_timeout: Duration,
    ) -> Arc<Self> {
        Self::with_max_lifetime(
            label,
            budget,
            options,
            max_connections,
            idle_timeout,
            acquire_timeout,
            Duration::from_secs(1800),
        )
    }

    /// [`Self::new`], with connections reused for at most `max_lifetime`.
    pub fn with_max_lifetime(
        label: &str,
        budget: &Arc<Budget>,
        options: PgConnectOptions,
        max_connections: usize,
        idle_timeout: Duration,
        acquire_timeout: Duration,
        max_lifetime: Duration,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            label: label.to_string(),
            budget: Arc::clone(budget),
            options,
            cap: max_connections.max(1),
            idle_timeout,
            acquire_timeout,
            max_lifetime,
            state: Mutex::new(State {
                idle: Vec::new(),
                listed: false,
                open: 0,
                in_use: 0,
            }),
            returned: Notify::new(),
            closed: AtomicBool::new(false),
        });
        budget
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&pool));
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its figures.
    pub fn stats(&self) -> PoolStats {
        let s = self.lock();
        PoolStats {
            pool: self.label.clone(),
            open: s.open,
            idle: s.idle.len(),
            in_use: s.in_use,
            max_connections: self.cap,
        }
    }

    /// A connection: an idle one, a new one within the pool's cap and the budget (closing
    /// another pool's idle connection if the budget is spent, see the module's rules), or,
    /// after waiting up to the acquire timeout, `PoolTimedOut`.
    pub async fn acquire(self: &Arc<Self>) -> Result<PooledConn, sqlx::Error> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(sqlx::Error::PoolClosed);
        }
        let deadline = tokio::time::Instant::now() + self.acquire_timeout;
        let mut counted_wait = false;
        let mut evicted = false;
        let mut evicted_at: Option<Instant> = None;
        let mut queued: Option<Queued<'_>> = None;
        // Kept across turns of the loop: dropping it would lose the place in the queue.
        let mut in_queue: Option<WaitForPermit> = None;
        loop {
            let returned = self.returned.notified();
            let released = self.budget.released.notified();
            tokio::pin!(returned, released);
            returned.as_mut().enable();
            released.as_mut().enable();

            let (may_open, has_open) = {
                let mut s = self.lock();
                if let Some(idle) = s.idle.pop() {
                    s.in_use += 1;
                    return Ok(PooledConn::new(self, idle.conn, idle.permit, idle.born));
                }
                (s.open < self.cap, s.open > 0)
            };
            // A pool with no connection queues for a permit (first come, first served, so
            // the permit its eviction frees is not taken by pools that only want to grow).
            let queue = may_open && !has_open;
            if !queue {
                queued = None;
                in_queue = None;
            } else if queued.is_none() {
                queued = Some(Queued::new(&self.budget));
                in_queue = Some(Box::pin(Arc::clone(&self.budget.permits).acquire_owned()));
            }
            if may_open {
                if let Ok(permit) = Arc::clone(&self.budget.permits).try_acquire_owned() {
                    if let Some(conn) = self.open(permit, deadline).await? {
                        return Ok(conn);
                    }
                    continue;
                }
                // Spent: make room by closing another pool's idle connection, then wait.
                // A pool that has connections takes only a cold one, once; the queue of
                // pools with none makes sure a permit is on its way for each of them.
                if has_open {
                    if !evicted {
                        evicted = self.budget.evict_one(self, self.budget.cold_after);
                    }
                } else {
                    // Once on arrival; again only if the permit it freed went to an earlier
                    // acquire and no other is on its way for this one.
                    let stalled = evicted_at
                        .is_some_and(|at: Instant| at.elapsed() >= REEVICT_AFTER)
                        && self.budget.closing.load(Ordering::Relaxed)
                            < self.budget.queued.load(Ordering::Relaxed);
                    if (evicted_at.is_none() || stalled)
                        && self.budget.evict_one(self, Duration::ZERO)
                    {
                        evicted_at = Some(Instant::now());
                    }
                }
            }
            if !counted_wait {
                counted_wait = true;
                self.budget.waits.fetch_add(1, Ordering::Relaxed);
            }
            let permit = async {
                match in_queue.as_mut() {
                    Some(waiting) => waiting.await.ok(),
                    None => std::future::pending().await,
                }
            };
            // A queued pool looks again shortly until it has closed a connection (one may
            // have gone idle), then now and then (the permit it freed may have gone to an
            // earlier one); a pool that wants to grow looks again as idle connections turn
            // cold (nothing else may happen meanwhile to wake it).
            let look_again = if queue {
                Some(if evicted_at.is_some() {
                    REEVICT_AFTER
                } else {
                    EVICT_RETRY
                })
            } else if may_open && !evicted {
                Some((self.budget.cold_after / 4).clamp(EVICT_RETRY, COLD_RETRY))
            } else {
                None
            };
            let retry = async {
                match look_again {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending::<()>().await,
                }
            };
            let mut granted = None;
            tokio::select! {
                () = &mut returned => {}
                () = &mut released => {}
                Some(permit) = permit => {
                    granted = Some(permit);
                }
                () = retry => {}
                () = tokio::time::sleep_until(deadline) => {
                    self.budget.refusals.fetch_add(1, Ordering::Relaxed);
                    return Err(sqlx::Error::PoolTimedOut);
                }
            }
            if let Some(permit) = granted {
                (queued, in_queue) = (None, None);
                if let Some(conn) = self.open(permit, deadline).await? {
                    return Ok(conn);
                }
            }
        }
    }

    /// Opens a connection with `permit`, unless the pool reached its cap meanwhile (then
    /// the permit goes back and the answer is `None`).
    async fn open(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        deadline: tokio::time::Instant,
    ) -> Result<Option<PooledConn>, sqlx::Error> {
        {
            let mut s = self.lock();
            if s.open >= self.cap {
                drop(s);
                drop(permit);
                self.budget.released.notify_waiters();
                return Ok(None);
            }
            s.open += 1;
            s.in_use += 1;
        }
        // Connecting runs in a task of its own: a request that goes away meanwhile (its
        // client hung up, and the server dropped the handler) must not leave the pool
        // counting a connection that never arrives. The connection then goes idle for the
        // next request instead.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let connected =
                tokio::time::timeout_at(deadline, PgConnection::connect_with(&pool.options)).await;
            let outcome = match connected {
                Ok(Ok(conn)) => {
                    pool.budget.opened.fetch_add(1, Ordering::Relaxed);
                    Ok((conn, permit, Instant::now()))
                }
                failed => {
                    {
                        let mut s = pool.lock();
                        s.open -= 1;
                        s.in_use -= 1;
                    }
                    drop(permit);
                    pool.budget.released.notify_waiters();
                    match failed {
                        Ok(Err(e)) => Err(e),
                        _ => {
                            pool.budget.refusals.fetch_add(1, Ordering::Relaxed);
                            Err(sqlx::Error::PoolTimedOut)
                        }
                    }
                }
            };
            if let Err(Ok((conn, permit, born))) = tx.send(outcome) {
                pool.put_back(conn, permit, born);
            }
        });
        match rx.await {
            Ok(Ok((conn, permit, born))) => Ok(Some(PooledConn::new(self, conn, permit, born))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(sqlx::Error::WorkerCrashed),
        }
    }

    /// Closes the connection, then gives the permit back after [`CLOSE_GRACE`].
    fn budget_close(&self, conn: PgConnection, permit: OwnedSemaphorePermit) {
        let budget = Arc::clone(&self.budget);
        budget.closing.fetch_add(1, Ordering::Relaxed);
        // Without a runtime (shutting down), the socket closes and the permit comes back
        // right here.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            budget.closing.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        handle.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
            tokio::time::sleep(CLOSE_GRACE).await;
            drop(permit);
            budget.closing.fetch_sub(1, Ordering::Relaxed);
            budget.closed.fetch_add(1, Ordering::Relaxed);
            budget.released.notify_waiters();
        });
    }

    /// Takes a connection back: idle for reuse, or closed when the pool is retired.
    fn put_back(self: &Arc<Self>, conn: PgConnection, permit: OwnedSemaphorePermit, born: Instant) {
        if born.elapsed() >= self.max_lifetime {
            // Old enough: a new one replaces it on demand.
            self.discard(conn, permit);
            self.returned.notify_one();
            return;
        }
        if self.closed.load(Ordering::Relaxed) {
            self.lock().in_use -= 1;
            self.lock().open -= 1;
            self.budget_close(conn, permit);
            return;
        }
        let list = {
            let mut s = self.lock();
            s.in_use -= 1;
            s.idle.push(IdleConn {
                conn,
                permit,
                since: Instant::now(),
                born,
            });
            !std::mem::replace(&mut s.listed, true)
        };
        if list {
            self.budget
                .with_idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::downgrade(self));
        }
        self.returned.notify_one();
    }

    /// Forgets a connection that cannot be reused.
    fn discard(&self, conn: PgConnection, permit: OwnedSemaphorePermit) {
        {
            let mut s = self.lock();
            s.in_use -= 1;
            s.open -= 1;
        }
        self.budget_close(conn, permit);
    }

    /// Retires the pool: idle connections close now, in-use ones when they come back.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let idle: Vec<IdleConn> = {
            let mut s = self.lock();
            let idle = std::mem::take(&mut s.idle);
            s.open -= idle.len();
            idle
        };
        for c in idle {
            self.budget_close(c.conn, c.permit);
        }
    }
}

/// A connection out of a [`TenantPool`]; back to the pool when dropped. Marked dirty while
/// a transaction is open, in which case it is rolled back before anyone else gets it.
pub struct PooledConn {
    inner: Option<(PgConnection, OwnedSemaphorePermit)>,
    pool: Arc<TenantPool>,
    dirty: bool,
    /// Set when a tenant's transaction is dropped open: whose, to name it in a warning if
    /// it had written anything (those writes are rolled back).
    uncommitted: Option<Box<str>>,
    born: Instant,
}

impl PooledConn {
    fn new(
        pool: &Arc<TenantPool>,
        conn: PgConnection,
        permit: OwnedSemaphorePermit,
        born: Instant,
    ) -> Self {
        Self {
            inner: Some((conn, permit)),
            pool: Arc::clone(pool),
            dirty: false,
            uncommitted: None,
            born,
        }
    }

    /// Marks a transaction open (`true`) or finished (`false`).
    pub fn set_dirty(&mut self, dirty: bool) {
        self.dirty = dirty;
    }

    /// The open transaction, if it wrote anything, is reported as `tenant`'s lost writes
    /// when it is rolled back.
    pub(crate) fn report_uncommitted(&mut self, tenant: &str) {
        if self.dirty {
            self.uncommitted = Some(tenant.into());
        }
    }
}

impl Deref for PooledConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.inner.as_ref().expect("present until drop").0
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.inner.as_mut().expect("present until drop").0
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let Some((mut conn, permit)) = self.inner.take() else {
            return;
        };
        // Checked before reuse, off the request's path: a connection whose server went away,
        // or whose query was abandoned half-way, must not reach the next request. An open
        // transaction is rolled back, which checks it too.
        let dirty = self.dirty;
        let uncommitted = self.uncommitted.take();
        let born = self.born;
        let pool = Arc::clone(&self.pool);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let checked = tokio::time::timeout(Duration::from_secs(5), async {
                        if let Some(tenant) = uncommitted.filter(|_| dirty) {
                            rollback_reporting_writes(&mut conn, &tenant).await
                        } else if dirty {
                            conn.execute("ROLLBACK").await.map(drop)
                        } else {
                            conn.ping().await
                        }
                    })
                    .await;
                    if matches!(checked, Ok(Ok(()))) {
                        pool.put_back(conn, permit, born);
                    } else {
                        pool.discard(conn, permit);
                    }
                });
            }
            Err(_) => pool.discard(conn, permit),
        }
    }
}

/// Rolls back, and warns when the transaction had written: a handler that forgot to commit.
/// One round trip, like a plain `ROLLBACK`.
async fn rollback_reporting_writes(conn: &mut PgConnection, tenant: &str) -> sqlx::Result<()> {
    use futures_util::TryStreamExt as _;
    use sqlx::Row as _;
    let mut wrote = false;
    let mut results =
        sqlx::raw_sql("SELECT txid_current_if_assigned() IS NOT NULL; ROLLBACK").fetch_many(conn);
    while let Some(step) = results.try_next().await? {
        if let sqlx::Either::Right(row) = step {
            wrote = row.try_get::<bool, _>(0)?;
        }
    }
    if wrote {
        tracing::warn!(
            tenant.id = tenant,
            "a tenant connection with writes was dropped without commit(); its writes were rolled back"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts connections and never answers: connecting to it hangs.
    async fn silent_server() -> (tokio::net::TcpListener, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    #[tokio::test]
    async fn a_request_that_goes_away_while_connecting_leaves_nothing_counted() {
        let (listener, port) = silent_server().await;
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        });
        let budget = Budget::new(2);
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("nobody");
        let pool = TenantPool::new(
            "gone",
            &budget,
            options,
            1,
            Duration::from_secs(300),
            Duration::from_millis(300),
        );
        // The request is dropped mid-connect (as axum drops a handler whose client left).
        let dropped = tokio::time::timeout(Duration::from_millis(50), pool.acquire()).await;
        assert!(dropped.is_err(), "the connect should still be pending");
        // Once the connect gives up, the pool and the budget count nothing.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let s = pool.stats();
        assert_eq!((s.open, s.in_use), (0, 0), "{s:?}");
        assert_eq!(budget.stats().open, 0, "{:?}", budget.stats());
        held.abort();
    }
}
