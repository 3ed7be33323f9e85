//! `TenantDb::read` and the pool's cheaper release, on a real PostgreSQL: what a request
//! leaves on its connection (a session made read-only, rows it did not read, a lock its
//! uncommitted write took, a backend that died) never reaches the next request's data.

use futures_util::TryStreamExt;
use sqlx::Connection;
use tenant_router::middleware::CurrentTenant;
use tenant_router::shared::{TenantConn, TenantDb};

use crate::harness::TestApp;

const T1: &str = "tenant-1.test.com";

pub(crate) async fn pid(conn: &mut TenantConn) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

pub(crate) async fn user_id(db: &TenantDb<'_>) -> i64 {
    let mut conn = db.read().await.unwrap();
    sqlx::query_scalar("SELECT id FROM users ORDER BY id LIMIT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

pub(crate) async fn contents(db: &TenantDb<'_>) -> Vec<String> {
    let mut conn = db.read().await.unwrap();
    sqlx::query_scalar("SELECT content FROM notes ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

pub(crate) async fn insert(
    conn: &mut TenantConn,
    user: i64,
    content: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO notes (user_id, content) VALUES ($1, $2)")
        .bind(user)
        .bind(content)
        .execute(conn)
        .await
        .map(drop)
}

#[tokio::test]
async fn a_read_connection_refuses_writes_and_commits_nothing() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "reader").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    let mut conn = db.read().await.unwrap();
    let err = sqlx::query("INSERT INTO notes (user_id, content) VALUES ($1, 'sneaked')")
        .bind(user)
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("25006"),
        "{err}"
    );
    // Through the PgConnection too, and in a transaction of its own making.
    let err = sqlx::raw_sql(
        "BEGIN; INSERT INTO notes (user_id, content) SELECT id, 'raw' FROM users; COMMIT",
    )
    .execute(&mut *conn)
    .await
    .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("25006")
    );
    drop(conn);
    assert!(contents(&db).await.is_empty());
}

#[tokio::test]
async fn a_connection_that_served_reads_writes_for_the_next_request() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    let mut read = db.read().await.unwrap();
    let reader = pid(&mut read).await;
    drop(read);
    // The next request takes the same connection (the pool reuses the newest) and writes.
    let mut conn = db.conn().await.unwrap();
    assert_eq!(pid(&mut conn).await, reader, "not the connection that read");
    sqlx::query("INSERT INTO notes (user_id, content) VALUES ($1, 'kept')")
        .bind(user)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.commit().await.unwrap();
    // A custom transaction on it too: a savepoint inside the tenant's transaction.
    let mut conn = db.conn().await.unwrap();
    assert_eq!(pid(&mut conn).await, reader);
    let mut inner = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO notes (user_id, content) VALUES ($1, 'nested')")
        .bind(user)
        .execute(&mut *inner)
        .await
        .unwrap();
    inner.commit().await.unwrap();
    conn.commit().await.unwrap();
    // And reads again after writing: still refused writes.
    let mut read = db.read().await.unwrap();
    assert_eq!(pid(&mut read).await, reader);
    let refused = sqlx::query("DELETE FROM notes").execute(&mut read).await;
    assert!(refused.is_err());
    drop(read);
    assert_eq!(contents(&db).await, ["kept", "nested"]);
}

#[tokio::test]
async fn a_transaction_a_read_began_itself_never_carries_into_the_next_request() {
    // `BEGIN READ WRITE` overrides the read-only session: a handler that begins its own
    // transaction on a read connection and goes away without ending it must not hand that
    // transaction (its uncommitted row, its snapshot, its locks) to the next request, which
    // would commit the row with its own. Through the executor, where sqlx sees the statement
    // but not that it began anything, and through the `PgConnection`, where nothing is seen;
    // and a read that begins one and fails inside it.
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    let mut expected = Vec::new();
    for (round, sql) in [
        "BEGIN READ WRITE; INSERT INTO notes (user_id, content) SELECT id, 'left open' FROM users",
        "start transaction read write; INSERT INTO notes (user_id, content) SELECT id, 'left open' FROM users",
        "BEGIN READ WRITE; INSERT INTO notes (user_id, content) SELECT id, 'left failed' FROM users; SELECT 1/0",
    ]
    .into_iter()
    .enumerate()
    {
        for through_deref in [false, true] {
            let mut read = db.read().await.unwrap();
            let reader = pid(&mut read).await;
            let ran = if through_deref {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *read).await
            } else {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut read).await
            };
            assert_eq!(ran.is_ok(), round < 2, "{sql}: {ran:?}");
            drop(read);
            // The next request on the same connection writes and commits its own row only.
            let mut conn = db.conn().await.unwrap();
            assert_eq!(pid(&mut conn).await, reader, "not the connection that read");
            let mine = format!("committed {round} {through_deref}");
            sqlx::query("INSERT INTO notes (user_id, content) VALUES ($1, $2)")
                .bind(user)
                .bind(&mine)
                .execute(&mut conn)
                .await
                .unwrap();
            conn.commit().await.unwrap();
            expected.push(mine);
            // And the next read on it sees only what was committed.
            let mut read = db.read().await.unwrap();
            assert_eq!(pid(&mut read).await, reader);
            let seen: Vec<String> = sqlx::query_scalar("SELECT content FROM notes ORDER BY id")
                .fetch_all(&mut read)
                .await
                .unwrap();
            assert_eq!(seen, expected);
            // Left open again, then read again: the same.
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut read).await.ok();
            drop(read);
            assert_eq!(contents(&db).await, expected);
        }
    }
}

#[tokio::test]
async fn rows_a_request_left_unread_never_reach_the_next_request() {
    let app = TestApp::with_demo_tenants().await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let mut conn = db.read().await.unwrap();
    let first = pid(&mut conn).await;
    {
        // Reads 1 of 100,000 rows, then goes away (a client that disconnected).
        let mut rows =
            sqlx::query_scalar::<_, i32>("SELECT generate_series(1, 100000)").fetch(&mut conn);
        assert_eq!(rows.try_next().await.unwrap(), Some(1));
    }
    drop(conn);
    for _ in 0..3 {
        let mut conn = db.read().await.unwrap();
        let got: (i32, String) = sqlx::query_as("SELECT pg_backend_pid(), 'mine'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(got.1, "mine");
        if got.0 == first {
            // Reused, and what it returned was the new query's.
            return;
        }
    }
    // Not reused is safe too, but then this test proved nothing: say so.
    panic!("the connection that was left mid-stream was never reused");
}

#[tokio::test]
async fn a_lock_an_uncommitted_write_took_is_released_without_another_request() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "locker").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    let mut conn = db.conn().await.unwrap();
    sqlx::query("UPDATE users SET username = username WHERE id = $1")
        .bind(user)
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn); // Not committed: the row stays locked until the pool rolls it back.
    // Nobody uses the pool again; someone else waits for the row, at most 5 s.
    let mut other = app.tenant_connection("tenant-1").await;
    let updated = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET lock_timeout = '5s'; UPDATE users SET username = 'after' WHERE id = {user}"
    )))
    .execute(&mut other)
    .await;
    assert!(
        updated.is_ok(),
        "the abandoned write still holds its lock: {updated:?}"
    );
    other.close().await.unwrap();
}

#[tokio::test]
async fn a_backend_killed_while_idle_never_fails_the_next_request() {
    let app = TestApp::with_demo_tenants().await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let mut conn = db.read().await.unwrap();
    let victim = pid(&mut conn).await;
    drop(conn);
    let mut admin = app.tenant_connection("tenant-1").await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(victim)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(killed);
    // Begin checks the connection in its round trip: the dead one is dropped, another
    // taken.
    let mut conn = db.conn().await.unwrap();
    assert_ne!(pid(&mut conn).await, victim);
    drop(conn);
    admin.close().await.unwrap();
}

#[tokio::test]
async fn a_connection_broken_mid_request_never_reaches_the_next_request() {
    // The backend dies while a statement runs (a server restart, an admin's
    // `pg_terminate_backend`): the request fails, and the connection never serves another.
    // Reads and transactions, through the executor and through the `PgConnection`, and the
    // next request comes at once (well within the idle time after which a connection is
    // checked anyway).
    let app = TestApp::with_demo_tenants().await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let mut admin = app.tenant_connection("tenant-1").await;
    for (read, through_deref) in [(true, false), (true, true), (false, false), (false, true)] {
        let mut conn = if read {
            db.read().await.unwrap()
        } else {
            db.conn().await.unwrap()
        };
        let victim = pid(&mut conn).await;
        let sleep = sqlx::query("SELECT pg_sleep(30)");
        let running = async {
            if through_deref {
                sleep.execute(&mut *conn).await
            } else {
                sleep.execute(&mut conn).await
            }
        };
        let kill = async {
            // Until the backend is seen in its sleep, then terminated.
            loop {
                let killed: bool = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE pid = $1 AND query = 'SELECT pg_sleep(30)' AND state = 'active'",
                )
                .bind(victim)
                .fetch_optional(&mut admin)
                .await
                .unwrap()
                .unwrap_or(false);
                if killed {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        let (ran, ()) = tokio::join!(running, kill);
        assert!(ran.is_err(), "read {read}, deref {through_deref}");
        drop(conn);
        for _ in 0..3 {
            let mut next = if read {
                db.read().await.unwrap()
            } else {
                db.conn().await.unwrap()
            };
            let got: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut next)
                .await
                .unwrap_or_else(|e| panic!("read {read}, deref {through_deref}: {e}"));
            assert_ne!(got, victim);
        }
    }
    admin.close().await.unwrap();
}
