//! Host resolution end to end: isolation, normalisation and every refusal.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tenant_router::control::TenantSpec;
use tenant_router::tenant::TenantState;
use tenant_router::testing::LocalPostgres;

use crate::harness::{TestApp, both, problem, shared_postgres, spec, tenant_database};

const T1: &str = "tenant-1.test.com";
const T2: &str = "tenant-2.test.com";

both!(demo_tenants_are_isolated);
async fn demo_tenants_are_isolated(app: TestApp) {
    // The same email registers in both: they are separate databases.
    let a1 = app.user_token(T1, "ada").await;
    let a2 = app.user_token(T2, "ada").await;
    app.create_note(T1, &a1, "tenant one's secret").await;

    let r = app.get(T1, "/api/notes", Some(&a1)).await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["notes"].as_array().unwrap().len(), 1);
    assert_eq!(page["notes"][0]["content"], "tenant one's secret");

    let r = app.get(T2, "/api/notes", Some(&a2)).await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(
        page["notes"],
        json!([]),
        "tenant 2 must not see tenant 1's note"
    );

    // A token of one tenant means nothing to the other.
    problem(
        app.get(T2, "/api/notes", Some(&a1)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        app.get(T1, "/api/notes", Some(&a2)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

both!(a_client_chosen_tenant_header_is_ignored);
async fn a_client_chosen_tenant_header_is_ignored(app: TestApp) {
    let token = app.user_token(T1, "grace").await;
    for header in ["X-Tenant", "X-Tenant-Id", "X-Forwarded-Host"] {
        let r = app
            .request(reqwest::Method::GET, T1, "/api/notes")
            .bearer_auth(&token)
            .header(header, T2)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{header} changed the tenant");
        let r = app
            .request(reqwest::Method::GET, "unknown.example.org", "/api/notes")
            .header(header, T1)
            .send()
            .await
            .unwrap();
        problem(r, StatusCode::NOT_FOUND).await;
    }
}

#[tokio::test]
async fn host_is_normalised() {
    let app = TestApp::with_demo_tenants().await;
    app.user_token(T1, "lin").await;
    for host in [
        "tenant-1.test.com",
        "TENANT-1.Test.Com",
        "tenant-1.test.com:9500",
        "tenant-1.test.com.",
        "Tenant-1.test.com.:80",
        // Wildcard: <id>.test.com.
        "tenant-1.TEST.com:1",
    ] {
        let r = app.login(host, "lin@example.com", "correct horse").await;
        assert_eq!(r.status(), StatusCode::OK, "host {host}");
    }
    // The same user does not exist behind tenant 2's host.
    problem(
        app.login(T2, "lin@example.com", "correct horse").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn wildcard_base_domain_resolves_ids() {
    let pg = shared_postgres().await;
    let db = tenant_database(pg, "acme").await;
    let app = TestApp::spawn(vec![spec("acme", &["www.acme.example"], db)]).await;
    app.user_token("acme.test.com", "wile").await;
    let r = app
        .login("www.acme.example", "wile@example.com", "correct horse")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    for unknown in [
        "x.acme.test.com",
        "nobody.test.com",
        "test.com",
        "acme.example",
    ] {
        problem(
            app.get(unknown, "/api/notes", None).await,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
}

#[tokio::test]
async fn unknown_missing_and_malformed_hosts() {
    let app = TestApp::with_demo_tenants().await;
    let body = problem(
        app.get("tenant-3.example.org", "/api/notes", None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("tenant-3.example.org")
    );

    for bad in ["bad host", "a:b", "a..b", "x_y.test.com"] {
        problem(
            app.get(bad, "/api/notes", None).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }

    // No Host at all: HTTP/1.0 allows that, and we must answer 400, not guess.
    let raw = raw_request(app.addr, "GET /api/notes HTTP/1.0\r\n\r\n").await;
    assert!(
        raw.starts_with("HTTP/1.0 400") || raw.starts_with("HTTP/1.1 400"),
        "{raw}"
    );
    assert!(raw.contains("application/problem+json"), "{raw}");

    // Health routes are not tenant-scoped.
    let r = app.get("anything.example", "/healthz", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.get("anything.example", "/readyz", None).await;
    assert_eq!(r.status(), StatusCode::OK);
}

async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn suspended_tenant_is_503_with_retry_after() {
    let app = TestApp::with_demo_tenants().await;
    let token = app.user_token(T1, "sus").await;
    let tenant = app
        .control
        .get_tenant(&"tenant-1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    app.control
        .upsert(&TenantSpec {
            state: TenantState::Suspended,
            ..spec("tenant-1", &[T1], tenant.database.clone())
        })
        .await
        .unwrap();
    app.reload().await;

    let r = app.get(T1, "/api/notes", Some(&token)).await;
    assert!(r.headers().contains_key("retry-after"));
    problem(r, StatusCode::SERVICE_UNAVAILABLE).await;
    // The other tenant is unaffected.
    let other = app.user_token(T2, "fine").await;
    assert_eq!(
        app.get(T2, "/api/notes", Some(&other)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn one_tenants_database_down_is_503_for_that_tenant_only() {
    let shared = shared_postgres().await;
    let mut own = LocalPostgres::start_ephemeral().await.unwrap();
    let up = tenant_database(shared, "up").await;
    let down = tenant_database(&own, "down").await;
    let app = TestApp::spawn(vec![
        spec("up", &["up.example.org"], up),
        spec("down", &["down.example.org"], down),
    ])
    .await;
    let t_up = app.user_token("up.example.org", "upper").await;
    let t_down = app.user_token("down.example.org", "downer").await;
    assert_eq!(
        app.get("down.example.org", "/api/notes", Some(&t_down))
            .await
            .status(),
        StatusCode::OK
    );

    own.stop();
    for _ in 0..2 {
        let r = app
            .get("down.example.org", "/api/notes", Some(&t_down))
            .await;
        let body = problem(r, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(body["detail"].as_str().unwrap().contains("database"));
        let r = app.get("up.example.org", "/api/notes", Some(&t_up)).await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "a healthy tenant must not suffer"
        );
    }

    // When the database returns, so does the tenant, without a restart.
    own.start().await.unwrap();
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..20 {
        status = app
            .get("down.example.org", "/api/notes", Some(&t_down))
            .await
            .status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK);
}

both!(bad_bodies_are_4xx_problems);
async fn bad_bodies_are_4xx_problems(app: TestApp) {
    let token = app.user_token(T1, "bodies").await;
    let post_raw = |body: Vec<u8>, content_type: &'static str| {
        app.request(reqwest::Method::POST, T1, "/api/notes")
            .bearer_auth(&token)
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    problem(
        post_raw(b"{\"content\":".to_vec(), "application/json")
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        post_raw(b"not json".to_vec(), "application/json")
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        post_raw(b"{\"content\":\"x\"}".to_vec(), "text/plain")
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    problem(
        post_raw(b"{\"content\":42}".to_vec(), "application/json")
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let huge = serde_json::to_vec(&json!({"content": "x".repeat(100 * 1024)})).unwrap();
    problem(
        post_raw(huge, "application/json").await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;

    // Nothing was stored by any of them.
    let page: Value = app
        .get(T1, "/api/notes", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["notes"], json!([]));

    // Unknown routes and methods are problems too.
    problem(app.get(T1, "/api/nope", None).await, StatusCode::NOT_FOUND).await;
    let r = app
        .request(reqwest::Method::PATCH, T1, "/api/notes")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::METHOD_NOT_ALLOWED).await;
    problem(
        app.get(T1, "/api/notes/abc", Some(&token)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}
