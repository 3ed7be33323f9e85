//! A pool: its idle connections and its cap, the way back of a connection, and retirement.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use sqlx::SqlStr;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::budget::{Budget, Member};
use super::conn::PooledConn;
use super::connector::{Check, Connector, First};
use super::stats::PoolStats;

/// After closing a connection, how long its permit is kept: the server needs a moment to
/// end the backend, and `pg_stat_activity` must never show more than the budget.
pub(super) const CLOSE_GRACE: Duration = Duration::from_millis(2);

/// How long a returned connection may sit idle owing a rollback (or a check) before the
/// pool's sweep settles it: what an abandoned transaction holds (row locks, the share locks
/// a migration waits for) is held at most this much longer than its request.
pub(super) const SETTLE_WITHIN: Duration = Duration::from_millis(2);

/// A connection idle this long is pinged (with its next user's first step) before reuse:
/// one idle for less goes straight to its next request. A connection that breaks while in
/// use never goes back to the pool at all.
pub(super) const CHECK_AFTER_IDLE: Duration = Duration::from_secs(10);

/// How long a reused connection gets to do what its last user owed, with its next user's
/// first step: longer means a query its last request abandoned is still running (the
/// connection finishes it off the request's path, and the request takes another).
pub(super) const REUSE_WAIT: Duration = Duration::from_millis(500);

/// One tenant's pool (or the shared database's), at most `max_connections` open, all
/// counted against the [`Budget`].
pub struct TenantPool {
    pool: Arc<Pool<PgConnectOptions>>,
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
        Arc::new(Self {
            pool: Pool::new(
                label,
                budget,
                options,
                max_connections,
                idle_timeout,
                acquire_timeout,
                max_lifetime,
            ),
        })
    }

    /// Its figures.
    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// A connection: an idle one, a new one within the pool's cap and the budget (closing
    /// another pool's idle connection if the budget is spent, see the module's rules), or,
    /// after waiting up to the acquire timeout, `PoolTimedOut`. A reused connection is
    /// checked first when its last user left something (one round trip).
    pub async fn acquire(&self) -> Result<PooledConn, sqlx::Error> {
        self.timed(&First::Check).await
    }

    /// [`Self::acquire`], in a transaction begun with `statement` (`BEGIN` when `None`) in
    /// the same round trip that undoes what the connection's last user left and checks it.
    /// A reused connection that fails this is closed and another taken: nothing of the
    /// caller's has run on it.
    pub async fn begin(&self, statement: Option<SqlStr>) -> Result<PooledConn, sqlx::Error> {
        let mut conn = self.timed(&First::Begin(statement)).await?;
        conn.set_dirty(true);
        Ok(conn)
    }

    /// [`Self::acquire`], for reads outside a transaction: each statement is a read-only
    /// transaction of its own (PostgreSQL refuses a write). A connection that served reads
    /// last is handed out again with no round trip at all when its last use ended cleanly.
    pub async fn read(&self) -> Result<PooledConn, sqlx::Error> {
        self.timed(&First::Read).await
    }

    async fn timed(&self, first: &First) -> Result<PooledConn, sqlx::Error> {
        let started = std::time::Instant::now();
        let result = self.pool.acquire_ready(first).await.map(PooledConn);
        record_acquire_wait(result.is_ok(), started.elapsed());
        result
    }

    /// Retires the pool: idle connections close now, in-use ones when they come back.
    pub fn close(&self) {
        self.pool.close();
    }

    /// Resets the session of every connection that comes back (temporary tables, `SET`s,
    /// cursors, locks, `LISTEN`s), for a pool whose next request may be another tenant's.
    /// A pool of one tenant only rolls back: what one request of a tenant leaves, only a
    /// request of the same tenant can see.
    pub fn reset_sessions_on_return(&self) {
        self.pool.reset_sessions.store(true, Ordering::Relaxed);
    }
}

/// Records how long an acquire waited, by outcome. The two histograms' handles are kept per
/// thread with the recorder that made them (a recorder installed later, or a thread's local
/// one, gets handles of its own): building the metric's key and finding it in the recorder
/// cost more than the sample itself, on every acquire.
fn record_acquire_wait(ok: bool, waited: Duration) {
    struct Handles {
        recorder: *const (),
        ok: metrics::Histogram,
        error: metrics::Histogram,
    }
    thread_local! {
        static HANDLES: std::cell::RefCell<Option<Handles>> = const { std::cell::RefCell::new(None) };
    }
    let recorder = metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>());
    HANDLES.with_borrow_mut(|kept| {
        let handles = match kept {
            Some(handles) if handles.recorder == recorder => handles,
            _ => kept.insert(Handles {
                recorder,
                ok: metrics::histogram!(crate::telemetry::POOL_ACQUIRE_WAIT, "outcome" => "ok"),
                error: metrics::histogram!(crate::telemetry::POOL_ACQUIRE_WAIT, "outcome" => "error"),
            }),
        };
        if ok {
            handles.ok.record(waited);
        } else {
            handles.error.record(waited);
        }
    });
}

/// A connection waiting in its pool for the next request.
pub(super) struct IdleConn<C> {
    pub(super) conn: C,
    pub(super) permit: OwnedSemaphorePermit,
    /// Idle since.
    pub(super) since: Instant,
    /// Opened at.
    pub(super) born: Instant,
    /// What its last user left: undone by the next acquire, or by the sweep.
    pub(super) owed: Option<Check>,
    /// Its session makes transactions read-only.
    pub(super) read_only: bool,
}

/// A pool's connections, under its lock.
pub(super) struct Conns<C> {
    /// Oldest first: reuse takes the newest, eviction the oldest.
    pub(super) idle: Vec<IdleConn<C>>,
    /// In the budget's `with_idle` list.
    listed: bool,
    /// Counting those being opened.
    pub(super) open: usize,
    pub(super) in_use: usize,
    /// A sweep is scheduled for idle connections that owe something.
    sweeping: bool,
}

/// A pool over any [`Connector`]: for PostgreSQL, what a [`TenantPool`] is; in the unit
/// tests, the same pool over stand-in connections.
pub(super) struct Pool<K: Connector> {
    label: String,
    pub(super) budget: Arc<Budget>,
    pub(super) connector: K,
    pub(super) cap: usize,
    idle_timeout: Duration,
    pub(super) acquire_timeout: Duration,
    /// A connection older than this is closed when it comes back, not reused.
    max_lifetime: Duration,
    conns: Mutex<Conns<K::Conn>>,
    /// Rung when a connection comes back.
    pub(super) returned: Notify,
    pub(super) closed: AtomicBool,
    /// Whether a returned connection's session is reset, not only rolled back: the pool
    /// serves several tenants (the shared database's).
    pub(super) reset_sessions: AtomicBool,
}

impl<K: Connector> Pool<K> {
    /// A pool (opening nothing yet), registered with `budget`.
    pub(super) fn new(
        label: &str,
        budget: &Arc<Budget>,
        connector: K,
        max_connections: usize,
        idle_timeout: Duration,
        acquire_timeout: Duration,
        max_lifetime: Duration,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            label: label.to_string(),
            budget: Arc::clone(budget),
            connector,
            cap: max_connections.max(1),
            idle_timeout,
            acquire_timeout,
            max_lifetime,
            conns: Mutex::new(Conns {
                idle: Vec::new(),
                listed: false,
                open: 0,
                in_use: 0,
                sweeping: false,
            }),
            returned: Notify::new(),
            closed: AtomicBool::new(false),
            reset_sessions: AtomicBool::new(false),
        });
        let member: Weak<dyn Member> = Arc::downgrade(&pool) as Weak<Self>;
        budget.register(member);
        pool
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Conns<K::Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection, then gives the permit back after [`CLOSE_GRACE`].
    fn budget_close(&self, conn: K::Conn, permit: OwnedSemaphorePermit) {
        let budget = Arc::clone(&self.budget);
        budget.closing.fetch_add(1, Ordering::Relaxed);
        // Without a runtime (shutting down), the socket closes and the permit comes back
        // right here.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            budget.closing.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        handle.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), K::close(conn)).await;
            tokio::time::sleep(CLOSE_GRACE).await;
            drop(permit);
            budget.closing.fetch_sub(1, Ordering::Relaxed);
            budget.closed.fetch_add(1, Ordering::Relaxed);
            budget.released.notify_waiters();
        });
    }

    /// Takes a connection back: idle for reuse, or closed when the pool is retired. One that
    /// owes something is settled by the next acquire, or by a sweep within [`SETTLE_WITHIN`].
    pub(super) fn put_back(
        self: &Arc<Self>,
        conn: K::Conn,
        permit: OwnedSemaphorePermit,
        born: Instant,
        owed: Option<Check>,
        read_only: bool,
    ) {
        if born.elapsed() >= self.max_lifetime {
            // Old enough: a new one replaces it on demand.
            self.discard(conn, permit);
            self.returned.notify_one();
            return;
        }
        if self.closed.load(Ordering::Relaxed) {
            self.discard(conn, permit);
            return;
        }
        let runtime = tokio::runtime::Handle::try_current();
        if owed.is_some() && runtime.is_err() {
            // Shutting down: nothing could settle it.
            self.discard(conn, permit);
            return;
        }
        let (list, sweep) = {
            let mut c = self.lock();
            c.in_use -= 1;
            c.idle.push(IdleConn {
                conn,
                permit,
                since: Instant::now(),
                born,
                owed,
                read_only,
            });
            let sweep = owed.is_some() && !std::mem::replace(&mut c.sweeping, true);
            (!std::mem::replace(&mut c.listed, true), sweep)
        };
        if list {
            let member: Weak<dyn Member> = Arc::downgrade(self) as Weak<Self>;
            self.budget.list_with_idle(member);
        }
        self.returned.notify_one();
        if sweep && let Ok(runtime) = runtime {
            runtime.spawn(Arc::clone(self).sweep());
        }
    }

    /// Settles, off any request's path, the idle connections that have owed something for
    /// [`SETTLE_WITHIN`], until none owes anything.
    async fn sweep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SETTLE_WITHIN).await;
            let (due, again) = {
                let mut c = self.lock();
                let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut c.idle)
                    .into_iter()
                    .partition(|i| i.owed.is_some() && i.since.elapsed() >= SETTLE_WITHIN);
                c.idle = keep;
                c.in_use += due.len();
                let again = c.idle.iter().any(|i| i.owed.is_some());
                c.sweeping = again;
                (due, again)
            };
            for idle in due {
                let pool = Arc::clone(&self);
                tokio::spawn(async move {
                    let IdleConn {
                        mut conn,
                        permit,
                        born,
                        owed,
                        read_only,
                        ..
                    } = idle;
                    let check = owed.unwrap_or(Check::Ping);
                    let checked =
                        tokio::time::timeout(Duration::from_secs(5), K::check(&mut conn, check))
                            .await;
                    if matches!(checked, Ok(Ok(()))) {
                        let read_only = read_only && !check.resets_read_only();
                        pool.put_back(conn, permit, born, None, read_only);
                    } else {
                        pool.discard(conn, permit);
                    }
                });
            }
            if !again {
                return;
            }
        }
    }

    /// Forgets a connection that cannot be reused.
    pub(super) fn discard(&self, conn: K::Conn, permit: OwnedSemaphorePermit) {
        {
            let mut c = self.lock();
            c.in_use -= 1;
            c.open -= 1;
        }
        self.budget_close(conn, permit);
    }

    /// Retires the pool: idle connections close now, in-use ones when they come back.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let idle: Vec<IdleConn<K::Conn>> = {
            let mut c = self.lock();
            let idle = std::mem::take(&mut c.idle);
            c.open -= idle.len();
            idle
        };
        for i in idle {
            self.budget_close(i.conn, i.permit);
        }
    }
}

impl<K: Connector> Member for Pool<K> {
    fn stats(&self) -> PoolStats {
        let c = self.lock();
        PoolStats {
            pool: self.label.clone(),
            open: c.open,
            idle: c.idle.len(),
            in_use: c.in_use,
            max_connections: self.cap,
        }
    }

    fn usage(&self) -> (usize, usize) {
        let c = self.lock();
        (c.idle.len(), c.in_use)
    }

    fn oldest_idle_or_unlist(&self) -> Option<Instant> {
        let mut c = self.lock();
        let oldest = c.idle.first().map(|i| i.since);
        if oldest.is_none() {
            c.listed = false;
        }
        oldest
    }

    fn evict_oldest(&self, min_idle: Duration) -> bool {
        let victim = {
            let mut c = self.lock();
            if c.idle.first().is_none_or(|i| i.since.elapsed() < min_idle) {
                return false;
            }
            c.open -= 1;
            c.idle.remove(0)
        };
        self.budget.evictions.fetch_add(1, Ordering::Relaxed);
        self.budget_close(victim.conn, victim.permit);
        true
    }

    fn reap(&self) {
        let expired: Vec<IdleConn<K::Conn>> = {
            let mut c = self.lock();
            let retired = self.closed.load(Ordering::Relaxed);
            let (old, keep): (Vec<_>, Vec<_>) =
                std::mem::take(&mut c.idle).into_iter().partition(|i| {
                    retired
                        || i.since.elapsed() >= self.idle_timeout
                        || i.born.elapsed() >= self.max_lifetime
                });
            c.idle = keep;
            c.open -= old.len();
            old
        };
        for i in expired {
            self.budget_close(i.conn, i.permit);
        }
    }
}

#[cfg(test)]
mod acquire_wait_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use metrics::{
        Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString,
        Unit,
    };

    use super::record_acquire_wait;

    /// A recorder that counts the samples of each outcome.
    #[derive(Default)]
    struct Counting {
        ok: Arc<Samples>,
        error: Arc<Samples>,
    }

    #[derive(Default)]
    struct Samples(AtomicUsize);

    impl HistogramFn for Samples {
        fn record(&self, _: f64) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Counting {
        fn counts(&self) -> (usize, usize) {
            (
                self.ok.0.load(Ordering::Relaxed),
                self.error.0.load(Ordering::Relaxed),
            )
        }
    }

    impl Recorder for Counting {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            assert_eq!(key.name(), crate::telemetry::POOL_ACQUIRE_WAIT);
            let outcome = key.labels().find(|l| l.key() == "outcome").unwrap();
            match outcome.value() {
                "ok" => Histogram::from_arc(Arc::clone(&self.ok)),
                "error" => Histogram::from_arc(Arc::clone(&self.error)),
                other => panic!("outcome {other}"),
            }
        }
    }

    /// Kept handles go to the recorder in force: one installed after the first samples,
    /// and another after that, each get theirs, by outcome, and none of the others'.
    #[test]
    fn samples_reach_the_recorder_in_force() {
        let waited = Duration::from_micros(5);
        record_acquire_wait(true, waited);
        let (first, second) = (Counting::default(), Counting::default());
        metrics::with_local_recorder(&first, || {
            record_acquire_wait(true, waited);
            record_acquire_wait(true, waited);
            record_acquire_wait(false, waited);
        });
        assert_eq!(first.counts(), (2, 1));
        metrics::with_local_recorder(&second, || record_acquire_wait(false, waited));
        assert_eq!(second.counts(), (0, 1));
        metrics::with_local_recorder(&first, || record_acquire_wait(true, waited));
        assert_eq!(first.counts(), (3, 1));
        assert_eq!(second.counts(), (0, 1));
    }
}
