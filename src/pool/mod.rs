//! Tenant connection pools under one global budget.
//!
//! Every open tenant connection holds one permit of the [`Budget`]'s semaphore. When a tenant
//! needs a connection and the budget is spent, the pool closes the connection that has been
//! idle the longest (never one in use), waits for a permit or a connection of its own up to
//! the acquire timeout, and then gives up with `sqlx::Error::PoolTimedOut`, which the API
//! answers with a 503.
//!
//! Who may evict whom, so that a working set that fits the budget stops churning:
//! - a pool with no connection at all may close any idle connection of another pool (it
//!   cannot make progress otherwise), once per acquire, and then queues, first come, first
//!   served, for a permit; it closes another only if, 50 ms on, fewer permits are on their way
//!   than such acquires are queued;
//! - a pool that already has connections may grow only into free permits or by closing a
//!   *cold* connection (idle for [`COLD_AFTER`]), once per acquire; otherwise it waits for
//!   its own;
//! - a pool at its cap waits for its own.
//!
//! The victim is always the connection idle the longest, whichever pool holds it. Pools reuse
//! their newest idle connection, so a busy pool's idle surplus (left by a burst) ages and goes
//! before a quiet pool's only connection: a burst cannot hoard the budget while other tenants
//! get 503s.
//!
//! # Invariants
//! - **Open connections ≤ the budget, always**, as the server counts them too: the permit is
//!   taken before connecting and given back 2 ms after closing, time for the server to end
//!   the backend.
//! - **A request that goes away leaves nothing counted**: connecting runs in a task of its
//!   own (a connection nobody waits for goes idle), and an acquire's place in the permit
//!   queue goes with it.
//! - **A connection broken mid-request never reaches the next request**: one whose statement
//!   failed on the connection itself (I/O, TLS, protocol) is closed when dropped; any other
//!   that comes back with something unseen (a statement not seen to end, an open
//!   transaction, use through the bare `PgConnection`, a statement that may have begun a
//!   transaction of its own) owes a check, done by its next acquire in the same round trip
//!   as that user's `BEGIN`, or by the pool's sweep within `SETTLE_WITHIN` (2 ms) if nobody
//!   takes it; one that fails it is closed and the acquire takes another. Only a
//!   connection whose every statement was seen to end goes back owing nothing, and one idle
//!   for `CHECK_AFTER_IDLE` (10 s) is checked anyway.
//! - **Nothing a request left open reaches the next one**: its transaction (counted by sqlx
//!   or begun in raw SQL, failed or not) is rolled back first; what it abandoned mid-query
//!   is finished off the next request's path (`REUSE_WAIT`, then another connection).
//! - **A connection in use is closed by no one but its user**: eviction and reaping take idle
//!   ones only.
//! - **A working set that fits the budget does not churn**: only a pool with no connection
//!   closes a warm one.
//! - **Waits are bounded** by the acquire timeout, connecting included.
//! - Every eviction, wait (once per acquire) and refusal is counted.
//!
//! The code: [`Budget`] (`budget`: permits, eviction, reaping), [`TenantPool`]
//! (`tenant_pool`: idle connections and the way back), an acquire as a state machine
//! (`acquire`) whose decisions are plain functions (`rules`), [`PooledConn`] (`conn`), and
//! PostgreSQL behind the `Connector` trait (`connector`), for which the unit tests put a
//! stand-in, so that they run the real pool on a paused clock.

mod acquire;
mod budget;
mod conn;
mod connector;
mod rules;
mod stats;
mod tenant_pool;
#[cfg(test)]
mod tests;

pub use budget::{Budget, COLD_AFTER};
pub use conn::PooledConn;
pub use stats::{BudgetStats, PoolStats};
pub use tenant_pool::TenantPool;
