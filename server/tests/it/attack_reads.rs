//! Attacks on the pool's deferred release and `TenantDb::read`, from the review of that
//! change: each test states a property the change claims. The `attack_` ones each failed
//! before their fix (findings F1 to F3, and the later reviews' below); the `defended_` ones
//! passed from the start.

use std::time::Duration;

use sqlx::Connection;
use tenant_router::middleware::CurrentTenant;
use tenant_router::shared::TenantConn;

use crate::harness::TestApp;
use crate::reads::{contents, insert, pid, user_id};

const T1: &str = "tenant-1.test.com";
const T2: &str = "tenant-2.test.com";

/// Leaves the connection `conn` busy on the server for `secs` (a request whose client went
/// away mid-query), then returns it to the pool.
async fn abandon_mid_query(mut conn: TenantConn, secs: f64) {
    let sleep = format!("SELECT pg_sleep({secs})");
    let ran = tokio::time::timeout(
        Duration::from_millis(30),
        sqlx::query(sqlx::AssertSqlSafe(sleep)).execute(&mut conn),
    )
    .await;
    assert!(ran.is_err(), "the sleep was meant to be cut short");
    drop(conn);
}

// ---------------------------------------------------------------------------------------
// F1: an acquire cancelled during its prepare round trip (client gone, a timeout layer, a
// `select!`) loses what the connection owed, and leaves its own `BEGIN` open untracked.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn attack_cancelled_conn_acquire_leaves_a_read_write_transaction_under_later_reads() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    let mut admin = app.tenant_connection("tenant-1").await;

    // A: a read whose client went away mid-query (its query still runs on the server).
    let mut a = db.read().await.unwrap();
    let victim = pid(&mut a).await;
    abandon_mid_query(a, 0.4).await;
    // B: a write request that goes away while its acquire waits for that connection (well
    // under REUSE_WAIT): its `BEGIN READ WRITE` went out, nobody counts it.
    let b = tokio::time::timeout(Duration::from_millis(100), db.conn()).await;
    assert!(b.is_err(), "B was meant to be cancelled while preparing");
    // The sweep pings it (which finds nothing wrong) and it goes idle owing nothing.
    tokio::time::sleep(Duration::from_millis(800)).await;

    // C: an ordinary read request. `read()` promises each statement is a read-only
    // transaction of its own.
    let mut c = db.read().await.unwrap();
    assert_eq!(
        pid(&mut c).await,
        victim,
        "not the same connection: inconclusive"
    );
    // Between its statements, the session must be idle, not idle in a transaction (which
    // would freeze `now()` for every `expires_at > now()` check and hold its locks).
    let between: Option<String> =
        sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
            .bind(victim)
            .fetch_optional(&mut admin)
            .await
            .unwrap()
            .flatten();
    let in_tx = between.as_deref() != Some("idle");
    let wrote = insert(&mut c, user, "written by a read").await;
    drop(c);
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
            .bind(victim)
            .fetch_optional(&mut admin)
            .await
            .unwrap()
            .flatten();
    // D: the next write request commits its own row (and whatever the session holds).
    let mut d = db.conn().await.unwrap();
    insert(&mut d, user, "mine").await.unwrap();
    d.commit().await.unwrap();
    let seen = contents(&db).await;
    admin.close().await.unwrap();
    assert!(
        !in_tx && wrote.is_err() && seen == ["mine"],
        "read ran inside a stray transaction: {in_tx}; its write: {wrote:?}; backend idle \
         state: {state:?}; committed: {seen:?}"
    );
}

#[tokio::test]
async fn attack_cancelled_acquire_forgets_the_rollback_a_raw_transaction_owed() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    let mut committed_abandoned = Vec::new();
    for (round, next_is_read) in [true, false].into_iter().enumerate() {
        // A: a read that begins its own transaction, writes, and is abandoned mid-query:
        // the change promises it is rolled back before reuse.
        let mut a = db.read().await.unwrap();
        let victim = pid(&mut a).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "BEGIN READ WRITE; INSERT INTO notes (user_id, content) \
             SELECT id, 'abandoned {round}' FROM users ORDER BY id LIMIT 1"
        )))
        .execute(&mut a)
        .await
        .unwrap();
        abandon_mid_query(a, 0.4).await;
        // B: the next request goes away while its acquire waits to roll that back.
        let b = if next_is_read {
            tokio::time::timeout(Duration::from_millis(100), db.read())
                .await
                .map(drop)
        } else {
            tokio::time::timeout(Duration::from_millis(100), db.conn())
                .await
                .map(drop)
        };
        assert!(b.is_err(), "B was meant to be cancelled while preparing");
        tokio::time::sleep(Duration::from_millis(800)).await;
        // C: an ordinary write request on that connection commits its own row only.
        let mut c = db.conn().await.unwrap();
        assert_eq!(
            pid(&mut c).await,
            victim,
            "not the same connection: inconclusive"
        );
        insert(&mut c, user, &format!("mine {round}"))
            .await
            .unwrap();
        c.commit().await.unwrap();
        if contents(&db).await.contains(&format!("abandoned {round}")) {
            committed_abandoned.push(format!("B cancelled was a read: {next_is_read}"));
        }
    }
    assert!(
        committed_abandoned.is_empty(),
        "the abandoned row was committed by the next request when {committed_abandoned:?}"
    );
}

// ---------------------------------------------------------------------------------------
// F2: whether a session is read-only is the pool's bookkeeping, never asked of the session.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn attack_a_read_that_turns_read_only_off_makes_every_later_read_write() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    let mut leaks = Vec::new();
    for sql in [
        "SET default_transaction_read_only = off",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "RESET ALL",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
    ] {
        for through_deref in [false, true] {
            // Back to a read-only session first (what an earlier round may have left).
            let mut fix = db.read().await.unwrap();
            sqlx::query("SET default_transaction_read_only = on")
                .execute(&mut fix)
                .await
                .unwrap();
            drop(fix);
            let mut a = db.read().await.unwrap();
            let victim = pid(&mut a).await;
            if through_deref {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *a)
                    .await
                    .unwrap();
            } else {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut a)
                    .await
                    .unwrap();
            }
            drop(a);
            // The next, unrelated read request on that connection.
            let mut b = db.read().await.unwrap();
            assert_eq!(
                pid(&mut b).await,
                victim,
                "not the same connection: inconclusive"
            );
            let label = format!("{sql} (deref {through_deref})");
            if insert(&mut b, user, &label).await.is_ok() {
                leaks.push(label);
            }
        }
    }
    let committed = contents(&db).await;
    assert!(
        leaks.is_empty(),
        "a later read() wrote and committed after: {leaks:#?}; rows: {committed:?}"
    );
}

#[tokio::test]
async fn attack_a_read_that_turns_read_only_off_itself_leaves_the_next_read_read_only() {
    // `read()` is not a permission boundary: a message whose own statement makes its
    // implicit transaction read-write before it writes does write (the app's explicit raw
    // SQL; a role without write grants is the boundary, as the docs say). What it must not
    // do is leave the session so for the next request on the connection.
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    for sql in [
        "SET transaction_read_only = off; \
         INSERT INTO notes (user_id, content) SELECT id, 'via implicit' FROM users LIMIT 1",
        "SET default_transaction_read_only = off; SELECT 1",
        "RESET ALL",
    ] {
        let mut a = db.read().await.unwrap();
        let victim = pid(&mut a).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut a)
            .await
            .unwrap();
        drop(a);
        let mut b = db.read().await.unwrap();
        assert_eq!(
            pid(&mut b).await,
            victim,
            "not the same connection: inconclusive"
        );
        let refused = insert(&mut b, user, "by the next read").await;
        assert_eq!(
            refused
                .as_ref()
                .err()
                .and_then(|e| e.as_database_error())
                .and_then(|e| e.code())
                .as_deref(),
            Some("25006"),
            "after {sql}: {refused:?}"
        );
    }
    assert!(!contents(&db).await.iter().any(|c| c == "by the next read"));
}

// ---------------------------------------------------------------------------------------
// F3: a read reuses an idle connection with no round trip at all. A backend killed while
// the connection was idle (under `CHECK_AFTER_IDLE`) fails the one read that finds it, as
// it did when connections were pinged at release; the connection is then closed, never
// tried again.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn attack_a_backend_killed_while_idle_fails_at_most_one_read() {
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut next = db.read().await.unwrap();
    let got: Result<i32, _> = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut next)
        .await;
    drop(next);
    if let Err(e) = &got {
        assert_eq!(
            e.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("57P01"),
            "{e}"
        );
    }
    let mut after = db.read().await.unwrap();
    let pid_after = pid(&mut after).await;
    drop(after);
    admin.close().await.unwrap();
    assert_ne!(pid_after, victim);
}

// ---------------------------------------------------------------------------------------
// Defended (expected to pass).
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn defended_a_write_abandoned_mid_query_never_commits_with_the_next_request() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    for next_is_read in [false, true] {
        let mut a = db.conn().await.unwrap();
        let victim = pid(&mut a).await;
        insert(&mut a, user, "abandoned").await.unwrap();
        abandon_mid_query(a, 0.2).await;
        let mut b = if next_is_read {
            db.read().await.unwrap()
        } else {
            db.conn().await.unwrap()
        };
        assert_eq!(pid(&mut b).await, victim);
        let in_tx: bool =
            sqlx::query_scalar("SELECT count(*) > 0 FROM notes WHERE content = 'abandoned'")
                .fetch_one(&mut b)
                .await
                .unwrap();
        assert!(!in_tx, "next request sees the abandoned row");
        if !next_is_read {
            b.commit().await.unwrap();
        }
        assert!(contents(&db).await.is_empty());
    }
}

#[tokio::test]
async fn defended_hidden_transaction_starts_on_a_read_connection() {
    // Ways to open a transaction that do not spell BEGIN/START: all refused or harmless.
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    for sql in [
        "SELECT 1; COMMIT AND CHAIN",
        "COMMIT AND CHAIN",
        "ROLLBACK AND CHAIN",
        "SET TRANSACTION READ WRITE",
        "SELECT 1; SET TRANSACTION READ WRITE; SELECT 2",
    ] {
        let mut a = db.read().await.unwrap();
        let victim = pid(&mut a).await;
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut a)
            .await;
        drop(a);
        let mut b = db.conn().await.unwrap();
        assert_eq!(pid(&mut b).await, victim);
        insert(&mut b, user, sql).await.unwrap();
        drop(b); // abandoned: nothing may commit
        assert!(contents(&db).await.is_empty(), "{sql}");
    }
}

#[tokio::test]
async fn defended_dedicated_tenants_never_share_a_connection() {
    let app = TestApp::with_demo_tenants().await;
    let t1 = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let t2 = CurrentTenant::new(app.registry.resolve(T2).unwrap());
    let (db1, db2) = (t1.db(), t2.db());
    let mut seen1 = std::collections::HashSet::new();
    let mut seen2 = std::collections::HashSet::new();
    for round in 0..6 {
        for (db, seen) in [(&db1, &mut seen1), (&db2, &mut seen2)] {
            let mut c = if round % 2 == 0 {
                db.read().await.unwrap()
            } else {
                db.conn().await.unwrap()
            };
            let row: (i32, String) =
                sqlx::query_as("SELECT pg_backend_pid(), current_database()::text")
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
            seen.insert(row);
            if round == 3 {
                abandon_mid_query(c, 0.1).await;
            }
        }
    }
    let dbs1: std::collections::HashSet<_> = seen1.iter().map(|r| &r.1).collect();
    let dbs2: std::collections::HashSet<_> = seen2.iter().map(|r| &r.1).collect();
    assert_eq!(dbs1.len(), 1);
    assert_eq!(dbs2.len(), 1);
    assert!(dbs1.is_disjoint(&dbs2));
    let pids1: std::collections::HashSet<_> = seen1.iter().map(|r| r.0).collect();
    let pids2: std::collections::HashSet<_> = seen2.iter().map(|r| r.0).collect();
    assert!(pids1.is_disjoint(&pids2));
}

#[tokio::test]
async fn defended_a_shared_tenants_read_leaves_nothing_for_the_next_tenant() {
    let app = TestApp::with_shared_demo_tenants().await;
    let t1 = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let t2 = CurrentTenant::new(app.registry.resolve(T2).unwrap());
    let (db1, db2) = (t1.db(), t2.db());
    let mut a = db1.read().await.unwrap();
    let victim = pid(&mut a).await;
    sqlx::raw_sql(
        "SET application_name = 'leak'; SET default_transaction_read_only = on; \
         SET statement_timeout = 4321",
    )
    .execute(&mut a)
    .await
    .unwrap();
    a.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..4 {
        let mut b = db2.read().await.unwrap();
        let row: (i32, String, String, String, Option<String>) = sqlx::query_as(
            "SELECT pg_backend_pid(), current_setting('application_name'), \
             current_setting('default_transaction_read_only'), \
             current_setting('statement_timeout'), current_setting('app.tenant_id', true)",
        )
        .fetch_one(&mut b)
        .await
        .unwrap();
        assert_ne!(row.1, "leak", "{row:?}");
        assert_ne!(row.2, "on", "{row:?}");
        assert_ne!(row.3, "4321ms", "{row:?}");
        assert_ne!(row.4.as_deref(), Some(db1.scope()), "{row:?}");
        if row.0 == victim {
            return;
        }
        drop(b);
    }
    panic!("tenant-2 never got tenant-1's connection: inconclusive");
}

// ---------------------------------------------------------------------------------------
// Second review: a session setting made in a transaction outlives it, and the pool's own
// connections (`CurrentTenant::pool()`) owe what nobody said they left.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn attack_a_transaction_that_turns_read_only_off_for_the_session_leaves_reads_read_only() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    for sql in [
        // Its own COMMIT, then the setting, then dropped without `commit()`.
        "COMMIT; SET default_transaction_read_only = off",
        "COMMIT; RESET ALL",
    ] {
        // A connection that served reads, taken by a transaction.
        let mut r = db.read().await.unwrap();
        let victim = pid(&mut r).await;
        drop(r);
        let mut t = db.conn().await.unwrap();
        assert_eq!(
            pid(&mut t).await,
            victim,
            "not the same connection: inconclusive"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut t)
            .await
            .unwrap();
        drop(t);
        let mut b = db.read().await.unwrap();
        assert_eq!(pid(&mut b).await, victim);
        let refused = insert(&mut b, user, "by a later read").await;
        assert!(refused.is_err(), "after {sql}: a read wrote");
    }
    assert!(!contents(&db).await.iter().any(|c| c == "by a later read"));
}

#[tokio::test]
async fn attack_a_raw_pool_connection_left_in_a_transaction_never_carries_over() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    for sql in [
        "BEGIN READ WRITE; INSERT INTO notes (user_id, content) SELECT id, 'raw pool' FROM users",
        "SET default_transaction_read_only = off",
    ] {
        let mut raw = tenant.pool().read().await.unwrap();
        let victim: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *raw)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *raw)
            .await
            .unwrap();
        drop(raw);
        let mut b = db.read().await.unwrap();
        assert_eq!(
            pid(&mut b).await,
            victim,
            "not the same connection: inconclusive"
        );
        let refused = insert(&mut b, user, "by a later read").await;
        assert!(refused.is_err(), "after {sql}: a read wrote");
        drop(b);
        let mut t = db.conn().await.unwrap();
        insert(&mut t, user, "mine").await.unwrap();
        t.commit().await.unwrap();
    }
    assert_eq!(contents(&db).await, ["mine", "mine"]);
}

// ---------------------------------------------------------------------------------------
// Third review: a `DO` body written as an `E'…'` string spells its words in escapes
// (`\x42EGIN`, `\x73et_config`), so the text check saw none of them.
// ---------------------------------------------------------------------------------------

/// `DO E'…'` that turns `default_transaction_read_only` off for the session.
fn escaped_do_block(read_only: &str) -> String {
    format!(
        r"DO E'\x42EGIN PERFORM \x73et_config(''default_transaction_read_only'', ''{read_only}'', false); END'"
    )
}

#[tokio::test]
async fn attack_an_escaped_do_block_in_a_read_never_makes_the_next_read_writable() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;

    let mut a = db.read().await.unwrap();
    let victim = pid(&mut a).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(escaped_do_block("off")))
        .execute(&mut a)
        .await
        .unwrap();
    drop(a);

    let mut b = db.read().await.unwrap();
    assert_eq!(
        pid(&mut b).await,
        victim,
        "not the same connection: inconclusive"
    );
    let wrote = insert(&mut b, user, "written by a later read").await;
    drop(b);
    assert!(
        wrote.is_err(),
        "a later read() wrote and committed: {:?}",
        contents(&db).await
    );
}

#[tokio::test]
async fn attack_an_escaped_do_block_in_a_write_never_makes_the_next_write_read_only() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "writer").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user = user_id(&db).await;
    // A write whose text is flagged, so its connection's setting is made again after it:
    // the next `conn()` on it then begins with a plain `BEGIN`.
    let mut first = db.conn().await.unwrap();
    let victim = pid(&mut first).await;
    sqlx::query("SELECT 'reset'")
        .execute(&mut first)
        .await
        .unwrap();
    first.commit().await.unwrap();

    let mut a = db.conn().await.unwrap();
    assert_eq!(
        pid(&mut a).await,
        victim,
        "not the same connection: inconclusive"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(escaped_do_block("on")))
        .execute(&mut a)
        .await
        .unwrap();
    a.commit().await.unwrap();

    let mut b = db.conn().await.unwrap();
    assert_eq!(
        pid(&mut b).await,
        victim,
        "not the same connection: inconclusive"
    );
    let wrote = insert(&mut b, user, "by the next write").await;
    assert!(
        wrote.is_ok(),
        "the next write request was refused: {wrote:?}"
    );
}
