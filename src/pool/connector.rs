//! What a pool connects to. PostgreSQL in the library; the pool's unit tests put a stand-in
//! here, so that they run the real pool and its acquire on a paused clock.

use sqlx::postgres::{PgConnectOptions, PgConnection, PgTransactionManager};
use sqlx::{Connection as _, Executor as _};
use sqlx_core::transaction::TransactionManager as _;

/// Opens, checks and closes a pool's connections.
pub(super) trait Connector: Send + Sync + 'static {
    /// An open connection.
    type Conn: Send + 'static;

    /// Opens a connection (the pool bounds how long this may take).
    fn connect(&self) -> impl Future<Output = sqlx::Result<Self::Conn>> + Send;

    /// Readies a connection that came back for the next request; an error means it is not
    /// to be reused.
    fn check(conn: &mut Self::Conn, check: Check) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Closes a connection (the pool bounds how long this may take).
    fn close(conn: Self::Conn) -> impl Future<Output = ()> + Send;
}

/// How a connection that came back is checked, by what its request left open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Check {
    /// Nothing known to be open.
    Ping,
    /// A transaction.
    Rollback,
    /// Whatever it is: the pool serves several tenants, so the session is reset.
    Reset,
}

/// What makes a returned connection the session it was when opened, in the one round trip
/// that also checks it: the next request may be another tenant's (the shared pool serves
/// them all), so nothing a handler left may survive: an open transaction, cursors, settings
/// made with `SET` (the role, `search_path`), `LISTEN`s, session advisory locks, temporary
/// tables, sequence state. Settings given when connecting (timeouts, the application name,
/// the shared `search_path`) are what `RESET ALL` returns to. Not `DISCARD ALL`: it would
/// also drop sqlx's prepared statements. The `ROLLBACK` ends a transaction sqlx does not
/// know of (a raw `BEGIN`); warnings are off while it runs, since usually there is none.
const RESET_SESSION: &str = "SET client_min_messages = error; ROLLBACK; CLOSE ALL; \
     RESET ALL; RESET ROLE; RESET SESSION AUTHORIZATION; UNLISTEN *; \
     SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

impl Connector for PgConnectOptions {
    type Conn = PgConnection;

    async fn connect(&self) -> sqlx::Result<PgConnection> {
        PgConnection::connect_with(self).await
    }

    async fn check(conn: &mut PgConnection, check: Check) -> sqlx::Result<()> {
        // The transactions sqlx tracks (the tenant's, and savepoints a handler nested in it)
        // are rolled back by sqlx itself, so that it counts none open for the next request.
        // A failed transaction rolls back like any other, and the connection stays.
        match check {
            Check::Reset => {
                // Those rollbacks go out with the reset, in the same round trip.
                while PgTransactionManager::get_transaction_depth(conn) > 0 {
                    PgTransactionManager::start_rollback(conn);
                }
                conn.execute(RESET_SESSION).await.map(drop)
            }
            Check::Rollback if PgTransactionManager::get_transaction_depth(conn) == 0 => {
                conn.execute("ROLLBACK").await.map(drop)
            }
            Check::Rollback | Check::Ping => {
                if PgTransactionManager::get_transaction_depth(conn) == 0 {
                    return conn.ping().await;
                }
                while PgTransactionManager::get_transaction_depth(conn) > 0 {
                    PgTransactionManager::rollback(conn).await?;
                }
                Ok(())
            }
        }
    }

    async fn close(conn: PgConnection) {
        let _ = conn.close().await;
    }
}
