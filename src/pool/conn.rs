//! A connection handed out by a pool, and what it owes on the way back.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::connector::{Check, Connector};
use super::tenant_pool::Pool;

/// A connection out of a [`TenantPool`](super::TenantPool); back to the pool when dropped.
/// Marked dirty while a transaction is open, in which case it is rolled back before anyone
/// else gets it.
pub struct PooledConn(pub(super) Pooled<PgConnectOptions>);

impl PooledConn {
    /// Marks a transaction open (`true`) or finished (`false`).
    pub fn set_dirty(&mut self, dirty: bool) {
        self.0.set_dirty(dirty);
    }

    /// Marks its use ended (a transaction committed or rolled back, a statement answered,
    /// nothing in flight): it goes back without owing a check.
    pub(crate) fn ended(&mut self) {
        self.0.settled();
    }

    /// Marks it broken (its use failed on the connection itself): closed when dropped.
    pub(crate) fn broken(&mut self) {
        self.0.broken();
    }

    /// Marks its session's state unknown (it ran statements the caller could not see, or
    /// that may have begun a transaction or changed the session's read-only setting): before
    /// reuse, any transaction is rolled back and the setting made again.
    pub(crate) fn unsure(&mut self) {
        self.0.owed = Some(Check::Abandoned);
    }
}

impl Deref for PooledConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

/// A [`PooledConn`] over any [`Connector`].
pub(super) struct Pooled<K: Connector> {
    inner: Option<(K::Conn, OwnedSemaphorePermit)>,
    pool: Arc<Pool<K>>,
    dirty: bool,
    /// Its user ended cleanly, with nothing in flight.
    settled: bool,
    /// Not to be reused: it failed its check.
    discard: bool,
    /// Came from the idle list, not from connecting.
    pub(super) reused: bool,
    /// What its last user left, for the acquire to undo first.
    pub(super) owed: Option<Check>,
    /// Its session makes transactions read-only (see `First::Read`).
    pub(super) read_only: bool,
    born: Instant,
}

impl<K: Connector> Pooled<K> {
    pub(super) fn new(
        pool: &Arc<Pool<K>>,
        conn: K::Conn,
        permit: OwnedSemaphorePermit,
        born: Instant,
    ) -> Self {
        Self {
            inner: Some((conn, permit)),
            pool: Arc::clone(pool),
            dirty: false,
            settled: false,
            discard: false,
            reused: false,
            owed: None,
            read_only: false,
            born,
        }
    }

    /// An idle connection handed out again, owing `owed`.
    pub(super) fn reused(
        pool: &Arc<Pool<K>>,
        conn: K::Conn,
        permit: OwnedSemaphorePermit,
        born: Instant,
        owed: Option<Check>,
        read_only: bool,
    ) -> Self {
        let mut pooled = Self::new(pool, conn, permit, born);
        pooled.reused = true;
        pooled.owed = owed;
        pooled.read_only = read_only;
        pooled
    }

    pub(super) fn set_dirty(&mut self, dirty: bool) {
        self.dirty = dirty;
    }

    /// Marks it settled: checked, nothing open, nothing in flight.
    pub(super) fn settled(&mut self) {
        self.dirty = false;
        self.settled = true;
    }

    /// Marks it not to be reused: closed when dropped.
    pub(super) fn broken(&mut self) {
        self.discard = true;
    }
}

impl<K: Connector> Deref for Pooled<K> {
    type Target = K::Conn;
    fn deref(&self) -> &K::Conn {
        &self.inner.as_ref().expect("present until drop").0
    }
}

impl<K: Connector> DerefMut for Pooled<K> {
    fn deref_mut(&mut self) -> &mut K::Conn {
        &mut self.inner.as_mut().expect("present until drop").0
    }
}

impl<K: Connector> Drop for Pooled<K> {
    fn drop(&mut self) {
        let Some((mut conn, permit)) = self.inner.take() else {
            return;
        };
        if self.discard {
            self.pool.discard(conn, permit);
            return;
        }
        let born = self.born;
        if self
            .pool
            .reset_sessions
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // The next request may be another tenant's: the session is reset before the
            // connection goes idle, off the request's path.
            let pool = Arc::clone(&self.pool);
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        let checked = tokio::time::timeout(
                            Duration::from_secs(5),
                            K::check(&mut conn, Check::Reset),
                        )
                        .await;
                        if matches!(checked, Ok(Ok(()))) {
                            pool.put_back(conn, permit, born, None, false);
                        } else {
                            pool.discard(conn, permit);
                        }
                    });
                }
                Err(_) => self.pool.discard(conn, permit),
            }
            return;
        }
        // Back with no round trip: what its request left is undone by the next acquire, in
        // the same round trip as its `BEGIN` (which also checks the connection), or by the
        // pool's sweep if nobody takes it within `SETTLE_WITHIN`. A debt already recorded
        // (an acquire dropped while it readied the connection, a use the caller could not
        // see) covers any other.
        let owed = self.owed.or_else(|| {
            if self.dirty || K::in_transaction(&conn) {
                Some(Check::Rollback)
            } else if self.settled {
                None
            } else {
                // Its user did not say how it ended (a statement not seen to end, a raw use
                // of the pool's connection): whatever it may have left is undone, in the one
                // round trip a ping would take when the session is idle.
                Some(Check::Abandoned)
            }
        });
        self.pool.put_back(conn, permit, born, owed, self.read_only);
    }
}
