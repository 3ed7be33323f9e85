//! What a pool connects to. PostgreSQL in the library; the pool's unit tests put a stand-in
//! here, so that they run the real pool and its acquire on a paused clock.

use sqlx::postgres::{PgConnectOptions, PgConnection, PgTransactionManager};
use sqlx::{Connection as _, Executor as _, SqlSafeStr as _, SqlStr};
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

    /// Readies a reused connection for its next user, in one round trip that also checks
    /// it: what `owed` says its last user left is undone, then `first` is done. An error
    /// means it is not to be reused.
    /// `read_only` is whether its session makes every transaction read-only (it served
    /// reads last); updated to what it is after.
    fn prepare(
        conn: &mut Self::Conn,
        owed: Option<Check>,
        first: &First,
        read_only: &mut bool,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Whether the connection counts a transaction open (its user dropped it unfinished).
    fn in_transaction(conn: &Self::Conn) -> bool;

    /// Closes a connection (the pool bounds how long this may take).
    fn close(conn: Self::Conn) -> impl Future<Output = ()> + Send;
}

/// What a connection's next user does first, which the pool does for it with the check:
/// nothing more, or beginning a transaction.
#[derive(Debug, Clone)]
pub(super) enum First {
    /// Only the check.
    Check,
    /// `BEGIN`, or the given statement that begins the transaction.
    Begin(Option<SqlStr>),
    /// No transaction: each statement is one of its own, which the session makes read-only
    /// (`default_transaction_read_only`), so a write is refused, never committed.
    Read,
}

/// How a connection that came back is checked, by what its request left open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// Nothing known to be open.
    Ping,
    /// A transaction.
    Rollback,
    /// Whatever it is: the pool serves several tenants, so the session is reset.
    Reset,
    /// Whatever it was doing when its next user gave up waiting for it: finished, and any
    /// transaction, even one sqlx does not count, rolled back.
    Abandoned,
}

impl Check {
    /// Whether it leaves the session not read-only (`default_transaction_read_only` at its
    /// default), whatever it was before.
    pub(super) fn resets_read_only(self) -> bool {
        matches!(self, Check::Reset | Check::Abandoned)
    }
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

/// Ends a transaction sqlx does not count (a raw `BEGIN`), if one is open, failed or not. A
/// bare `ROLLBACK` would draw a warning when none is (which sqlx logs), and in a failed
/// transaction nothing but `ROLLBACK` runs, so the state is asked first, by running
/// `statement` (which must begin no transaction): one round trip when the session is idle,
/// two when a transaction was open. Whether `statement` took effect (it did when the session
/// was idle) is returned.
async fn end_untracked(conn: &mut PgConnection, statement: &'static str) -> sqlx::Result<bool> {
    // sqlx's begin with a statement that begins nothing: it then tells whether the session is
    // in a transaction (and counts it), or fails with what PostgreSQL said.
    match PgTransactionManager::begin(conn, Some(statement.into_sql_str())).await {
        Ok(()) => PgTransactionManager::rollback(conn).await.map(|()| false),
        Err(sqlx::Error::BeginFailed) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("25P02") => {
            conn.execute("ROLLBACK").await.map(|_| false)
        }
        Err(e) => Err(e),
    }
}

/// What an abandoned or unseen use may have left in the session's transaction state undone:
/// a transaction sqlx does not count, and `default_transaction_read_only` as a statement
/// may have changed it (`SET`, `RESET ALL`, `SET SESSION CHARACTERISTICS`). The session
/// ends with the setting at its default (not read-only); one round trip when idle.
async fn end_abandoned(conn: &mut PgConnection) -> sqlx::Result<()> {
    const RESET: &str = "RESET default_transaction_read_only";
    if !end_untracked(conn, RESET).await? {
        // Rolled back with the transaction it ran in: again, on its own.
        conn.execute(RESET).await?;
    }
    Ok(())
}

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
            Check::Abandoned => {
                while PgTransactionManager::get_transaction_depth(conn) > 0 {
                    PgTransactionManager::start_rollback(conn);
                }
                end_abandoned(conn).await
            }
            // A transaction sqlx does not count, if there is one.
            Check::Rollback if PgTransactionManager::get_transaction_depth(conn) == 0 => {
                end_untracked(conn, "SELECT 1").await.map(drop)
            }
            // sqlx queues its rollbacks; the ping's sync goes out with them, one round trip.
            Check::Rollback | Check::Ping => {
                while PgTransactionManager::get_transaction_depth(conn) > 0 {
                    PgTransactionManager::start_rollback(conn);
                }
                conn.ping().await
            }
        }
    }

    async fn prepare(
        conn: &mut PgConnection,
        owed: Option<Check>,
        first: &First,
        read_only: &mut bool,
    ) -> sqlx::Result<()> {
        let statement = match first {
            First::Check | First::Read => {
                if let Some(check) = owed {
                    Self::check(conn, check).await?;
                    *read_only &= !check.resets_read_only();
                }
                let reads = matches!(first, First::Read);
                if *read_only != reads {
                    conn.execute(if reads {
                        "SET default_transaction_read_only = on"
                    } else {
                        "RESET default_transaction_read_only"
                    })
                    .await?;
                    *read_only = reads;
                }
                return Ok(());
            }
            First::Begin(statement) => statement,
        };
        // A ping, and the rollback of a transaction sqlx counts (queued `ROLLBACK`s), go out
        // in one write with the `BEGIN`: one round trip for both, and it checks the
        // connection. Any other debt takes round trips of its own first.
        let with_begin = match owed {
            None | Some(Check::Ping) => true,
            Some(Check::Rollback) => PgTransactionManager::get_transaction_depth(conn) > 0,
            Some(Check::Reset | Check::Abandoned) => false,
        };
        if let Some(check) = owed
            && !with_begin
        {
            Self::check(conn, check).await?;
            *read_only &= !check.resets_read_only();
        }
        while PgTransactionManager::get_transaction_depth(conn) > 0 {
            PgTransactionManager::start_rollback(conn);
        }
        // A session that served reads makes transactions read-only by default: this one is
        // begun `READ WRITE` (the setting cannot change in the same message: it would apply
        // from the next transaction on, and the implicit one the message runs in is that).
        // A statement of the caller's own is run as given, in a session reset first.
        let statement = match statement {
            None if *read_only => Some("BEGIN READ WRITE".into_sql_str()),
            None => None,
            Some(statement) => {
                if *read_only {
                    conn.execute("RESET default_transaction_read_only").await?;
                    *read_only = false;
                }
                Some(statement.clone())
            }
        };
        PgTransactionManager::begin(conn, statement).await
    }

    fn in_transaction(conn: &PgConnection) -> bool {
        PgTransactionManager::get_transaction_depth(conn) > 0
    }

    async fn close(conn: PgConnection) {
        let _ = conn.close().await;
    }
}
