//! The real pool and its acquire on a paused clock, over stand-in connections: the
//! transitions of the acquire, and the invariants of the module's doc. The one test here
//! connects for real (to a server that never answers), on the real clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use super::budget::{Budget, Member};
use super::conn::Pooled;
use super::connector::{Check, Connector, First};
use super::tenant_pool::{CLOSE_GRACE, Pool, TenantPool};

mod invariants;
mod transitions;

const MS: Duration = Duration::from_millis(1);

/// Stands in for PostgreSQL: counts the connections it holds, as `pg_stat_activity` would.
struct Server {
    connect_delay: Duration,
    refuse: bool,
    connects: AtomicUsize,
    live: AtomicUsize,
    max_live: AtomicUsize,
    checks: Mutex<Vec<Check>>,
}

#[derive(Clone)]
struct StandIn(Arc<Server>);

struct Conn {
    server: Arc<Server>,
    id: usize,
    /// Set by a test: the request broke it, its check fails.
    broken: bool,
    /// Set by a test: its request abandoned a query that runs this much longer, so its next
    /// check waits for it.
    busy_for: Duration,
    /// `BEGIN`s done on it.
    begun: usize,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.server.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StandIn {
    fn new() -> Self {
        Self::with(MS, false)
    }

    fn slow(connect_delay: Duration) -> Self {
        Self::with(connect_delay, false)
    }

    fn refusing() -> Self {
        Self::with(MS, true)
    }

    fn with(connect_delay: Duration, refuse: bool) -> Self {
        Self(Arc::new(Server {
            connect_delay,
            refuse,
            connects: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            max_live: AtomicUsize::new(0),
            checks: Mutex::new(Vec::new()),
        }))
    }

    fn connects(&self) -> usize {
        self.0.connects.load(Ordering::Relaxed)
    }

    fn live(&self) -> usize {
        self.0.live.load(Ordering::Relaxed)
    }

    fn max_live(&self) -> usize {
        self.0.max_live.load(Ordering::Relaxed)
    }
}

impl Connector for StandIn {
    type Conn = Conn;

    async fn connect(&self) -> sqlx::Result<Conn> {
        tokio::time::sleep(self.0.connect_delay).await;
        if self.0.refuse {
            return Err(sqlx::Error::Io(
                std::io::ErrorKind::ConnectionRefused.into(),
            ));
        }
        let id = self.0.connects.fetch_add(1, Ordering::Relaxed) + 1;
        let live = self.0.live.fetch_add(1, Ordering::Relaxed) + 1;
        self.0.max_live.fetch_max(live, Ordering::Relaxed);
        Ok(Conn {
            server: Arc::clone(&self.0),
            id,
            broken: false,
            busy_for: Duration::ZERO,
            begun: 0,
        })
    }

    async fn check(conn: &mut Conn, check: Check) -> sqlx::Result<()> {
        tokio::time::sleep(std::mem::take(&mut conn.busy_for)).await;
        conn.server.checks.lock().unwrap().push(check);
        if conn.broken {
            return Err(sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into()));
        }
        Ok(())
    }

    async fn prepare(
        conn: &mut Conn,
        owed: Option<Check>,
        first: &First,
        read_only: &mut bool,
    ) -> sqlx::Result<()> {
        if let Some(check) = owed {
            Self::check(conn, check).await?;
        }
        *read_only = matches!(first, First::Read);
        if let First::Begin(_) = first {
            tokio::time::sleep(std::mem::take(&mut conn.busy_for)).await;
            if conn.broken {
                return Err(sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into()));
            }
            conn.begun += 1;
        }
        Ok(())
    }

    fn in_transaction(_: &Conn) -> bool {
        false
    }

    async fn close(conn: Conn) {
        drop(conn);
    }
}

/// A pool over `db` with room for `cap` connections, giving up after `timeout`.
fn pool(
    label: &str,
    budget: &Arc<Budget>,
    db: &StandIn,
    cap: usize,
    timeout: Duration,
) -> Arc<Pool<StandIn>> {
    Pool::new(
        label,
        budget,
        db.clone(),
        cap,
        Duration::from_secs(300),
        timeout,
        Duration::from_secs(1800),
    )
}

/// (open, idle, in use)
fn counts(pool: &Pool<StandIn>) -> (usize, usize, usize) {
    let s = pool.stats();
    (s.open, s.idle, s.in_use)
}

/// The error of an acquire that had to fail.
fn refused(acquired: Result<Pooled<StandIn>, sqlx::Error>) -> sqlx::Error {
    match acquired {
        Ok(conn) => panic!("connection {} where a refusal was due", conn.id),
        Err(e) => e,
    }
}

/// Lets returned connections finish their check and closed ones give their permit back.
async fn settle() {
    tokio::time::sleep(10 * MS).await;
}

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
