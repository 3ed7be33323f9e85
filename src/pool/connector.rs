//! What a pool connects to. PostgreSQL in the library; the pool's unit tests put a stand-in
//! here, so that they run the real pool and its acquire on a paused clock.

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection as _, Executor as _};

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
    /// Nothing: a ping, which finds a connection whose server went away.
    Ping,
    /// A transaction: rolled back, which checks the connection too.
    Rollback,
    /// A tenant's transaction: rolled back, with a warning naming the tenant if it wrote.
    RollbackReporting(Box<str>),
}

impl Connector for PgConnectOptions {
    type Conn = PgConnection;

    async fn connect(&self) -> sqlx::Result<PgConnection> {
        PgConnection::connect_with(self).await
    }

    async fn check(conn: &mut PgConnection, check: Check) -> sqlx::Result<()> {
        match check {
            Check::Ping => conn.ping().await,
            Check::Rollback => conn.execute("ROLLBACK").await.map(drop),
            Check::RollbackReporting(tenant) => rollback_reporting_writes(conn, &tenant).await,
        }
    }

    async fn close(conn: PgConnection) {
        let _ = conn.close().await;
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
