//! Attacks on the performance change set after 17c502f (hand-written notes page, timestamps
//! written straight into it, remembered `may_change_state` verdicts, one deadline timer per
//! connection, the access log as a tower service of its own). Every attack tried held; the
//! tests pin the properties it tried.

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection as _;

use crate::harness::{TestApp, shared_postgres};

const T1: &str = "tenant-1.test.com";
const T2: &str = "tenant-2.test.com";

/// Everything a `fmt().json()` subscriber writes, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// A scoped JSON subscriber at `info` (the default level: the handlers' own spans are
/// `debug`), with callsite interest rebuilt so events first seen on another test's thread
/// are not left off.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(log.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    (log, guard)
}

/// The server's own router: the apex login's `from_fn` sits between the access log and the
/// tenant layer (the control database is the shared one by default), so the tenant layer
/// still runs inside the request span there: the access line and a warning inside the
/// request name the tenant.
///
/// Current-thread runtime: the server runs on this thread, so a scoped subscriber sees it.
#[tokio::test]
async fn server_access_line_and_warnings_name_the_tenant() {
    let app = TestApp::with_demo_tenants().await;
    let token = app.user_token(T1, "logged").await;
    let token2 = app.user_token(T2, "gone").await;
    // tenant-2's database goes away: its next request fails with a logged warning.
    let name = app
        .control
        .get_tenant(&"tenant-2".parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .database
        .database_name()
        .unwrap()
        .to_string();
    let mut admin = sqlx::PgConnection::connect(shared_postgres().await.url("postgres").expose())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();

    let (log, guard) = capture();
    let r = app.get(T1, "/api/notes", Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.get(T2, "/api/notes", Some(&token2)).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(guard);

    let lines = log.lines();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "tenant_router::access" && l["span"]["route"] == "/api/notes")
        .collect();
    assert_eq!(access.len(), 2, "{lines:#?}");
    assert_eq!(
        access[0]["span"]["tenant.id"], "tenant-1",
        "{:#}",
        access[0]
    );
    assert_eq!(
        access[1]["span"]["tenant.id"], "tenant-2",
        "{:#}",
        access[1]
    );
    let warning = lines
        .iter()
        .find(|l| l["fields"]["message"] == "tenant database unavailable")
        .unwrap_or_else(|| panic!("no warning in {lines:#?}"));
    assert_eq!(warning["span"]["tenant.id"], "tenant-2", "{warning:#}");
}

/// The hand-written page: notes that need escaping, timestamps outside RFC 3339's years and
/// PostgreSQL's infinities, every page size walked to the end by cursor, an empty page and
/// a dead session: valid JSON, each note once, in order, as written.
#[tokio::test]
async fn notes_pages_are_valid_json_and_whole() {
    let app = TestApp::with_demo_tenants().await;
    let token = app.user_token(T1, "pager").await;
    let idle = app.user_token(T1, "idle").await;
    let other = app.user_token(T2, "pager").await;
    app.create_note(T2, &other, "tenant-2's own").await;
    let tricky = [
        "plain".to_string(),
        "\"quoted\" \\ back".to_string(),
        "\u{1}\u{1f}\n\t\r\u{7f}".to_string(),
        "</script><script>alert(1)</script>".to_string(),
        "\u{2028}\u{2029}\u{feff}\u{fffe}\u{10ffff} caf\u{e9} \u{1f600}".to_string(),
        "x".repeat(10_000),
        "\"},{\"id\":1,\"content\":\"forged\"}],\"next_cursor\":\"1\"}".to_string(),
    ];
    let mut expected = Vec::new();
    for c in &tricky {
        let n = app.create_note(T1, &token, c).await;
        expected.push((n["id"].as_i64().unwrap(), c.clone()));
    }
    for i in 0..20 {
        let c = format!("n{i}");
        let n = app.create_note(T1, &token, &c).await;
        expected.push((n["id"].as_i64().unwrap(), c));
    }
    expected.reverse();
    // Timestamps the fast path cannot write: serde's fallback inside the hand-written page.
    let mut conn = app.tenant_connection("tenant-1").await;
    let odd = [
        ("infinity", "-infinity"),
        ("10000-01-01 00:00:00+00", "0001-01-01 00:00:00+00 BC"),
        (
            "2000-01-01 00:00:00.000001+00",
            "1969-12-31 23:59:59.999+00",
        ),
    ];
    for (k, (a, b)) in odd.iter().enumerate() {
        sqlx::query("UPDATE notes SET created_at = $1::timestamptz, updated_at = $2::timestamptz WHERE id = $3")
            .bind(a)
            .bind(b)
            .bind(expected[k].0)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    for limit in [1, 2, 3, 7, 26, 27, 28, 100] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/notes?limit={limit}&cursor={c}"),
                None => format!("/api/notes?limit={limit}"),
            };
            let r = app.get(T1, &path, Some(&token)).await;
            assert_eq!(r.status(), StatusCode::OK);
            let text = r.text().await.unwrap();
            let page: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            let notes = page["notes"].as_array().unwrap();
            assert!(notes.len() <= limit);
            for n in notes {
                assert_eq!(n.as_object().unwrap().len(), 4, "{n}");
                seen.push((
                    n["id"].as_i64().unwrap(),
                    n["content"].as_str().unwrap().to_string(),
                ));
                assert!(
                    n["created_at"].is_string() && n["updated_at"].is_string(),
                    "{n}"
                );
            }
            match page["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(notes.len(), limit);
                    assert_eq!(c, notes.last().unwrap()["id"].as_i64().unwrap().to_string());
                    cursor = Some(c.to_string());
                }
                None => {
                    assert!(page["next_cursor"].is_null(), "{page}");
                    break;
                }
            }
        }
        assert_eq!(seen, expected, "limit {limit}");
    }
    let r = app.get(T1, "/api/notes?limit=100", Some(&token)).await;
    let page: Value = r.json().await.unwrap();
    let by_id = |k: usize| {
        page["notes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"].as_i64() == Some(expected[k].0))
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(0)["created_at"], "infinity");
    assert_eq!(by_id(0)["updated_at"], "-infinity");
    assert!(
        by_id(1)["created_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("+10000-01-01T00:00:00")),
        "{}",
        by_id(1)
    );
    assert_eq!(by_id(1)["updated_at"], "0000-01-01T00:00:00Z");
    assert_eq!(by_id(2)["created_at"], "2000-01-01T00:00:00.000001Z");
    assert_eq!(by_id(2)["updated_at"], "1969-12-31T23:59:59.999Z");
    // A user with no notes, and a session gone.
    let r = app.get(T1, "/api/notes?limit=1", Some(&idle)).await;
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"notes":[],"next_cursor":null}"#
    );
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 s'")
        .execute(&mut conn)
        .await
        .unwrap();
    let r = app.get(T1, "/api/notes", Some(&token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.get(T2, "/api/notes", Some(&other)).await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["notes"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["notes"][0]["content"], "tenant-2's own");
}

/// `with_common_layers` around a router with the tenant layer right inside it, as
/// `examples/citus-ads` (and `server::app`, without the apex) build it. The access log, a
/// tower service of its own now, calls its inner service synchronously in `call`, outside
/// the request span; but each `Router::layer` boxes the route into a `Route`, whose `call`
/// is lazy (a `Oneshot`), so the tenant layer's `call` still runs inside the instrumented
/// future and `tenant.id` lands on the request span.
#[tokio::test]
async fn access_log_without_apex_names_the_tenant() {
    use tenant_router::middleware::{CurrentTenant, TenantLayer};
    use tower::ServiceExt as _;

    async fn inside(tenant: CurrentTenant) -> &'static str {
        tracing::warn!(seen = %tenant.id(), "inside the request");
        "ok"
    }
    let app = TestApp::with_demo_tenants().await;
    let router = axum::Router::new()
        .route("/api/inside", axum::routing::get(inside))
        .layer(TenantLayer::new(Arc::clone(&app.registry)));
    let router = tenant_router_server::server::with_common_layers(router, 16 * 1024);

    let (log, guard) = capture();
    let request = axum::http::Request::get("/api/inside")
        .header("Host", T1)
        .body(axum::body::Body::empty())
        .unwrap();
    let r = router.oneshot(request).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    drop(guard);

    let lines = log.lines();
    let access = lines
        .iter()
        .find(|l| l["target"] == "tenant_router::access")
        .unwrap_or_else(|| panic!("no access line in {lines:#?}"));
    let warning = lines
        .iter()
        .find(|l| l["fields"]["message"] == "inside the request")
        .unwrap_or_else(|| panic!("no warning in {lines:#?}"));
    assert_eq!(warning["fields"]["seen"], "tenant-1");
    assert_eq!(access["span"]["route"], "/api/inside", "{access:#}");
    assert_eq!(
        access["span"]["tenant.id"], "tenant-1",
        "access line: {access:#}"
    );
    assert_eq!(
        warning["span"]["tenant.id"], "tenant-1",
        "warning: {warning:#}"
    );
}

/// Three requests pipelined on one connection (written at once) under a 2 s deadline: the
/// first waits 3 s on a lock and gets its 503 at 2 s; the second starts then and, though
/// the connection's one timer has fired, gets its own full deadline (the lock goes at 3 s):
/// 200; the third 200. No answer belongs to another request.
#[tokio::test]
async fn pipelined_requests_each_get_their_own_deadline() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt as _;

    let pg = shared_postgres().await;
    let db = crate::harness::tenant_database(pg, "apf").await;
    let app = TestApp::spawn_with(vec![crate::harness::spec("tenant-1", &[T1], db)], |s| {
        s.http.request_timeout = Duration::from_secs(2)
    })
    .await;
    let token = app.user_token(T1, "piper").await;
    app.create_note(T1, &token, "mine").await;
    let release = crate::edge::hold_notes(&app, Duration::from_secs(3)).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let one = |limit: u32| {
        format!(
            "GET /api/notes?limit={limit} HTTP/1.1\r\nHost: {T1}\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
    };
    let started = Instant::now();
    stream
        .write_all(format!("{}{}{}", one(1), one(2), one(3)).as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (status, body) = crate::edge::read_answer(&mut stream, &mut got).await;
        answers.push((status, body, started.elapsed()));
    }
    release.await.unwrap();
    assert_eq!(answers[0].0, 503, "{answers:?}");
    assert_eq!(answers[1].0, 200, "{answers:?}");
    assert_eq!(answers[2].0, 200, "{answers:?}");
    assert!(answers[1].2 >= Duration::from_millis(2900), "{answers:?}");
    let second: Value = serde_json::from_str(&answers[1].1).unwrap();
    let third: Value = serde_json::from_str(&answers[2].1).unwrap();
    assert_eq!(second["notes"][0]["content"], "mine", "{second}");
    assert_eq!(second, third);
}
