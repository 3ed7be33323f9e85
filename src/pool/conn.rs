//! A connection handed out by a pool, and its check on the way back.

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
            born,
        }
    }

    pub(super) fn set_dirty(&mut self, dirty: bool) {
        self.dirty = dirty;
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
        // Checked before reuse, off the request's path: a connection whose server went away,
        // or whose query was abandoned half-way, must not reach the next request. An open
        // transaction is rolled back, which checks it too.
        let check = if self
            .pool
            .reset_sessions
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            Check::Reset
        } else if self.dirty {
            Check::Rollback
        } else {
            Check::Ping
        };
        let born = self.born;
        let pool = Arc::clone(&self.pool);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let checked =
                        tokio::time::timeout(Duration::from_secs(5), K::check(&mut conn, check))
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
