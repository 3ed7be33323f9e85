//! An acquire, as a state machine. [`State`] is where it is, [`Acquire::step`] moves it on,
//! the decisions are [`rules`](super::rules)'s:
//!
//! ```text
//! Looking    → done (an idle connection) | Connecting (a free permit)
//!            | Evicting (room in the pool, no free permit) | Waiting (the pool at its cap)
//! Evicting   → Waiting, having closed another pool's idle connection if the rules allow
//! Waiting    → Looking (a connection back, a permit back, time to look again)
//!            | Connecting (the queued permit) | PoolTimedOut (the deadline)
//! Connecting → done | the connect's error, or PoolTimedOut at the deadline
//!            | Looking (the pool reached its cap meanwhile)
//! ```

use std::ops::ControlFlow;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::{AcquireError, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::budget::Budget;
use super::conn::Pooled;
use super::connector::{Check, Connector, First};
use super::rules::{History, Plan, QueueCounts};
use super::tenant_pool::{CHECK_AFTER_IDLE, Conns, Pool, REUSE_WAIT};

/// Finishes, off the request's path, whatever a connection was busy with when its next user
/// gave up waiting (a query its last request abandoned), rolls back, and gives it back; or
/// closes it after 5 s. It stays counted in use meanwhile, as it is.
fn settle_later<K: Connector>(mut conn: Pooled<K>) {
    tokio::spawn(async move {
        let settled = tokio::time::timeout(
            Duration::from_secs(5),
            K::check(&mut conn, Check::Abandoned),
        )
        .await;
        if matches!(settled, Ok(Ok(()))) {
            conn.owed = None;
            conn.read_only &= !Check::Abandoned.resets_read_only();
            conn.settled();
        } else {
            conn.broken();
        }
    });
}

/// Where an acquire is. What a state holds lasts only while the acquire needs it: `place`,
/// an empty pool's place in the permit queue, while the pool stays empty (it is dropped on
/// the way to `Connecting`, the permit in hand); a permit, until its connection opens or
/// fails to.
enum State<'a> {
    /// Looking at the pool: on arrival and after every wake-up.
    Looking { place: Option<Place<'a>> },
    /// Room in the pool (`plan` is `Queue` or `Grow`) but no free permit: making room, as
    /// far as the rules allow, before waiting.
    Evicting {
        plan: Plan,
        place: Option<Place<'a>>,
    },
    /// Waiting for whatever may give it a connection, at most until the deadline.
    Waiting {
        place: Option<Place<'a>>,
        /// When to look again if nothing wakes it first.
        look_again: Option<Duration>,
    },
    /// Opening a connection with a permit.
    Connecting(OwnedSemaphorePermit),
}

type Outcome<K> = Result<Pooled<K>, sqlx::Error>;

type WaitForPermit =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// An empty pool's place in the budget's permit queue, counted in the budget's `queued`
/// while it lasts.
struct Place<'a> {
    budget: &'a Budget,
    /// Kept across wake-ups: a new one would go to the back of the queue.
    permit: WaitForPermit,
}

impl<'a> Place<'a> {
    fn join(budget: &'a Budget) -> Self {
        budget.queued.fetch_add(1, Ordering::Relaxed);
        Self {
            budget,
            permit: Box::pin(Arc::clone(&budget.permits).acquire_owned()),
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.budget.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One acquire: its pool, its deadline, what it did so far, and its wake-ups.
struct Acquire<'a, 'w, K: Connector> {
    pool: &'a Arc<Pool<K>>,
    deadline: Instant,
    history: History,
    /// Rung when a connection comes back to the pool. Armed before a look that may wait, like
    /// `released`, so that what happens between the look and the wait still wakes it.
    returned: Pin<&'w mut Notified<'a>>,
    /// Rung when a permit comes back to the budget.
    released: Pin<&'w mut Notified<'a>>,
}

impl<K: Connector> Pool<K> {
    /// See [`TenantPool::acquire`](super::TenantPool::acquire) and
    /// [`TenantPool::begin`](super::TenantPool::begin): a connection that has done `first`.
    /// A reused one does it together with what its last user owed, and is the one step that
    /// may fail and be retried on another connection: nothing of the caller's ran on it.
    pub(super) async fn acquire_ready(self: &Arc<Self>, first: &First) -> Outcome<K> {
        let deadline = Instant::now() + self.acquire_timeout;
        loop {
            let mut conn = self.acquire_by(deadline).await?;
            let owed = conn.owed.take();
            let mut read_only = conn.read_only;
            let ready = match first {
                First::Check => !read_only,
                First::Read => read_only,
                First::Begin(_) => false,
            };
            if owed.is_none() && ready {
                return Ok(conn);
            }
            // Until it is ready, a connection dropped with this acquire (its caller went away
            // mid-round-trip) owes whatever that round trip may have left: a `BEGIN` that
            // went out, a read-only setting half made.
            conn.owed = Some(Check::Abandoned);
            if !conn.reused {
                let prepared = K::prepare(&mut conn, None, first, &mut read_only).await;
                conn.read_only = read_only;
                if let Err(e) = prepared {
                    conn.broken();
                    return Err(e);
                }
                conn.owed = None;
                return Ok(conn);
            }
            let wait = deadline.min(Instant::now() + REUSE_WAIT);
            let prepared =
                tokio::time::timeout_at(wait, K::prepare(&mut conn, owed, first, &mut read_only))
                    .await;
            conn.read_only = read_only;
            match prepared {
                Ok(Ok(())) => {
                    conn.owed = None;
                    return Ok(conn);
                }
                // Broken: closed, and another one tried.
                Ok(Err(_)) => conn.broken(),
                // Still busy with what its last request abandoned.
                Err(_) => {
                    settle_later(conn);
                    if Instant::now() >= deadline {
                        self.budget.refusals.fetch_add(1, Ordering::Relaxed);
                        return Err(sqlx::Error::PoolTimedOut);
                    }
                }
            }
        }
    }

    /// What [`TenantPool::acquire`](super::TenantPool::acquire) does.
    #[cfg(test)]
    pub(super) async fn acquire(self: &Arc<Self>) -> Outcome<K> {
        self.acquire_ready(&First::Check).await
    }

    /// A connection, as it comes: idle or new.
    pub(super) async fn acquire_by(self: &Arc<Self>, deadline: Instant) -> Outcome<K> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(sqlx::Error::PoolClosed);
        }
        let mut acquire = Acquire {
            pool: self,
            deadline,
            history: History::default(),
            returned: pin!(self.returned.notified()),
            released: pin!(self.budget.released.notified()),
        };
        let mut state = State::Looking { place: None };
        loop {
            match acquire.step(state).await {
                ControlFlow::Continue(next) => state = next,
                ControlFlow::Break(outcome) => return outcome,
            }
        }
    }

    /// Opens a connection with `permit`, unless the pool reached its cap meanwhile (then
    /// the permit goes back and the answer is `None`).
    async fn open(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        deadline: Instant,
    ) -> Result<Option<Pooled<K>>, sqlx::Error> {
        {
            let mut c = self.lock();
            if c.open >= self.cap {
                drop(c);
                drop(permit);
                self.budget.released.notify_waiters();
                return Ok(None);
            }
            c.open += 1;
            c.in_use += 1;
        }
        // Connecting runs in a task of its own: a request that goes away meanwhile (its
        // client hung up, and the server dropped the handler) must not leave the pool
        // counting a connection that never arrives. The connection then goes idle for the
        // next request instead.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let connected = tokio::time::timeout_at(deadline, pool.connector.connect()).await;
            let outcome = match connected {
                Ok(Ok(conn)) => {
                    pool.budget.opened.fetch_add(1, Ordering::Relaxed);
                    Ok((conn, permit, Instant::now()))
                }
                failed => {
                    {
                        let mut c = pool.lock();
                        c.open -= 1;
                        c.in_use -= 1;
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
                pool.put_back(conn, permit, born, None, false);
            }
        });
        match rx.await {
            Ok(Ok((conn, permit, born))) => Ok(Some(Pooled::new(self, conn, permit, born))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(sqlx::Error::WorkerCrashed),
        }
    }
}

impl<'a, K: Connector> Acquire<'a, '_, K> {
    /// Moves the acquire on from `state`: to the next state, or to its outcome.
    async fn step(&mut self, state: State<'a>) -> ControlFlow<Outcome<K>, State<'a>> {
        match state {
            State::Looking { place } => self.look(place),
            State::Evicting { plan, place } => ControlFlow::Continue(self.evict(plan, place)),
            State::Waiting { place, look_again } => self.wait(place, look_again).await,
            State::Connecting(permit) => self.connect(permit).await,
        }
    }

    /// An idle connection, if the pool has one.
    fn take_idle(&self, c: &mut Conns<K::Conn>) -> Option<Pooled<K>> {
        let idle = c.idle.pop()?;
        c.in_use += 1;
        Some(Pooled::reused(
            self.pool,
            idle.conn,
            idle.permit,
            idle.born,
            // Idle long enough for the server to have gone away meanwhile (a restart, a
            // failover, an idle-session timeout): checked first.
            idle.owed
                .or((idle.since.elapsed() >= CHECK_AFTER_IDLE).then_some(Check::Ping)),
            idle.read_only,
        ))
    }

    fn look(&mut self, place: Option<Place<'a>>) -> ControlFlow<Outcome<K>, State<'a>> {
        let pool: &'a Arc<Pool<K>> = self.pool;
        // An idle connection needs no wake-ups: taken before arming any.
        if let Some(conn) = self.take_idle(&mut pool.lock()) {
            return ControlFlow::Break(Ok(conn));
        }
        // Armed before the look that decides to wait, so that a connection or a permit
        // coming back between that look and the wait still wakes it.
        self.returned.set(pool.returned.notified());
        self.returned.as_mut().enable();
        self.released.set(pool.budget.released.notified());
        self.released.as_mut().enable();

        let plan = {
            let mut c = pool.lock();
            if let Some(conn) = self.take_idle(&mut c) {
                return ControlFlow::Break(Ok(conn));
            }
            Plan::of(c.open, pool.cap)
        };
        let place = match plan {
            Plan::Queue => Some(place.unwrap_or_else(|| Place::join(&pool.budget))),
            Plan::Grow | Plan::Full => None,
        };
        ControlFlow::Continue(match plan {
            Plan::Full => self.waiting(plan, place),
            Plan::Queue | Plan::Grow => {
                match Arc::clone(&pool.budget.permits).try_acquire_owned() {
                    Ok(permit) => State::Connecting(permit),
                    Err(_) => State::Evicting { plan, place },
                }
            }
        })
    }

    fn evict(&mut self, plan: Plan, place: Option<Place<'a>>) -> State<'a> {
        let budget = &self.pool.budget;
        let queue = QueueCounts {
            closing: budget.closing.load(Ordering::Relaxed),
            queued: budget.queued.load(Ordering::Relaxed),
        };
        let allowed = self
            .history
            .may_evict(plan, queue, budget.cold_after, Instant::now());
        if let Some(min_idle) = allowed
            && budget.evict_one(&**self.pool, min_idle)
        {
            self.history.evicted(plan, Instant::now());
        }
        self.waiting(plan, place)
    }

    fn waiting(&self, plan: Plan, place: Option<Place<'a>>) -> State<'a> {
        State::Waiting {
            place,
            look_again: self.history.look_again(plan, self.pool.budget.cold_after),
        }
    }

    async fn wait(
        &mut self,
        mut place: Option<Place<'a>>,
        look_again: Option<Duration>,
    ) -> ControlFlow<Outcome<K>, State<'a>> {
        if self.history.first_wait() {
            self.pool.budget.waits.fetch_add(1, Ordering::Relaxed);
        }
        let permit = async {
            match place.as_mut() {
                Some(place) => place.permit.as_mut().await.ok(),
                None => std::future::pending().await,
            }
        };
        let retry = async {
            match look_again {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.returned.as_mut() => {}
            () = self.released.as_mut() => {}
            Some(permit) = permit => return ControlFlow::Continue(State::Connecting(permit)),
            () = retry => {}
            () = tokio::time::sleep_until(self.deadline) => {
                self.pool.budget.refusals.fetch_add(1, Ordering::Relaxed);
                return ControlFlow::Break(Err(sqlx::Error::PoolTimedOut));
            }
        }
        ControlFlow::Continue(State::Looking { place })
    }

    async fn connect(
        &mut self,
        permit: OwnedSemaphorePermit,
    ) -> ControlFlow<Outcome<K>, State<'a>> {
        match self.pool.open(permit, self.deadline).await {
            Ok(Some(conn)) => ControlFlow::Break(Ok(conn)),
            Ok(None) => ControlFlow::Continue(State::Looking { place: None }),
            Err(e) => ControlFlow::Break(Err(e)),
        }
    }
}
