//! The library as an app embeds it: the `embed-example` binary, and the builder's handle.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tenant_router::TenantRouter;
use tenant_router::middleware::CurrentTenant;
use tenant_router::testing::free_port;

use crate::cluster::Cluster;
use crate::harness::{shared_postgres, tenant_database};

/// The example binary, built beside `tenant-router` by `cargo test --workspace` (its
/// package has a test of its own, so cargo builds it).
fn example_binary() -> std::path::PathBuf {
    let bin =
        std::path::Path::new(env!("CARGO_BIN_EXE_tenant-router")).with_file_name("embed-example");
    assert!(
        bin.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or `cargo build -p embed-example`)",
        bin.display()
    );
    bin
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get_json(client: &reqwest::Client, port: u16, host: &str) -> (StatusCode, Value) {
    let r = client
        .get(format!("http://127.0.0.1:{port}/whoami"))
        .header("Host", host)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls until `host` answers 200. The deadline only guards against a hang: the example
/// reconciles every 30 s, so an answer before then came through the configuration bus.
async fn until_resolved(client: &reqwest::Client, port: u16, host: &str) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let (status, body) = get_json(client, port, host).await;
        if status == StatusCode::OK {
            return (body, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{host} still answers {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn add_tenant(cluster: &Cluster, id: &str) {
    let db = tenant_database(shared_postgres().await, "embed").await;
    let out = cluster
        .command(&[
            "tenants",
            "add",
            id,
            "--host",
            &format!("{id}.test.com"),
            "--database",
            db.expose(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_tenant_added_with_the_cli_resolves_in_the_running_example() {
    let cluster = Cluster::new().await;
    let port = free_port().unwrap();
    let log = cluster.logs.path().join("embed.log");
    let _example = Running(
        Command::new(example_binary())
            .env("TENANT_ROUTER_DATABASE_URL", cluster.control_url.expose())
            .env("TENANT_ROUTER_REDIS_URL", cluster.redis.url())
            .env("TENANT_ROUTER_BASE_DOMAIN", "test.com")
            .env("TENANT_ROUTER_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let started = Instant::now();
    let health = loop {
        match client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            Ok(r) => break r.status(),
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}: {}", std::fs::read_to_string(&log).unwrap()),
        }
    };
    assert_eq!(health, StatusCode::OK);

    // Before: an unknown host is a 404 problem, from the layer.
    let (status, body) = get_json(&client, port, "embed-1.test.com").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["status"], 404, "{body}");

    add_tenant(&cluster, "embed-1").await;
    let (body, took) = until_resolved(&client, port, "embed-1.test.com:8080").await;
    assert_eq!(body, json!({"tenant": "embed-1"}));
    eprintln!("resolved {took:?} after the CLI returned");
    // Another tenant's host still answers as that tenant, never as this one.
    add_tenant(&cluster, "embed-2").await;
    let (body, _) = until_resolved(&client, port, "EMBED-2.test.com").await;
    assert_eq!(body, json!({"tenant": "embed-2"}));
    let (_, body) = get_json(&client, port, "embed-1.test.com").await;
    assert_eq!(body, json!({"tenant": "embed-1"}));
}

/// The README once showed an embedding whose sync stopped as soon as its setup function
/// returned (it dropped the stop sender). The builder's handle cannot do that: dropping it
/// stops nothing.
#[tokio::test]
async fn dropping_the_builders_handle_keeps_the_registry_current() {
    let cluster = Cluster::new().await;
    let router = TenantRouter::builder(cluster.control_url.clone())
        .redis(cluster.redis.url())
        .base_domain("test.com")
        .reconcile_interval(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let app = Router::new()
        .route(
            "/whoami",
            get(|t: CurrentTenant| async move { axum::Json(json!({"tenant": t.id()})) }),
        )
        .layer(router.layer());
    drop(router);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // The subscription is up once the handle's sync has been running a moment; a hint
    // published before it would be caught up on subscribe anyway.
    add_tenant(&cluster, "kept-1").await;
    let client = reqwest::Client::new();
    let (body, _) = until_resolved(&client, port, "kept-1.test.com").await;
    assert_eq!(body, json!({"tenant": "kept-1"}));
}

/// `CurrentTenant::redis` gives each tenant keys of its own, and removing a tenant with
/// everything of it deletes them (and only them).
#[tokio::test]
async fn a_handlers_redis_keys_are_its_tenants_own_and_go_with_its_purge() {
    use redis::AsyncCommands as _;
    use tenant_router::problem::ApiError;

    async fn visit(t: CurrentTenant) -> Result<String, ApiError> {
        let redis = t.redis()?;
        let mut conn = redis
            .conn()
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let n: i64 = conn
            .incr(redis.key("visits"), 1)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        Ok(n.to_string())
    }

    let cluster = Cluster::new().await;
    for id in ["ns-1", "ns-2"] {
        // Provisioned (no --database), so removing it may delete everything of it.
        let host = format!("{id}.test.com");
        let out = cluster
            .command(&["tenants", "add", id, "--host", &host])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let router = TenantRouter::builder(cluster.control_url.clone())
        .redis(cluster.redis.url())
        .start()
        .await
        .unwrap();
    let app = Router::new()
        .route("/visit", get(visit))
        .layer(router.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let hit = |host: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://127.0.0.1:{port}/visit"))
                .header("Host", host)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.text().await.unwrap()
        }
    };
    assert_eq!(hit("ns-1.test.com").await, "1");
    assert_eq!(hit("ns-1.test.com").await, "2");
    assert_eq!(hit("ns-2.test.com").await, "1");

    let mut redis = redis::Client::open(cluster.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (tenants, _) = cluster.control.load_all().await.unwrap();
    let key = |id: &str| {
        let t = tenants.iter().find(|t| t.id.as_str() == id).unwrap();
        format!("tr:t:{id}:{}:ns:visits", t.incarnation)
    };
    let (key1, key2) = (key("ns-1"), key("ns-2"));
    let one: Option<i64> = redis.get(&key1).await.unwrap();
    let two: Option<i64> = redis.get(&key2).await.unwrap();
    assert_eq!((one, two), (Some(2), Some(1)));
    // A request of the first incarnation still running when the tenant is removed.
    let entry = router.registry().resolve("ns-1.test.com").unwrap();
    let late = router
        .redis_namespace()
        .tenant(router.redis().unwrap().clone(), entry.tenant());

    let out = cluster
        .command(&["tenants", "remove", "ns-1", "--drop-database"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let one: Option<i64> = redis.get(&key1).await.unwrap();
    let two: Option<i64> = redis.get(&key2).await.unwrap();
    assert_eq!((one, two), (None, Some(1)));

    // It writes after the purge; then the id is created again, for another customer.
    let mut conn = late.conn().await.unwrap();
    let _: () = conn.set(late.key("visits"), 99).await.unwrap();
    let out = cluster
        .command(&["tenants", "add", "ns-1", "--host", "ns-1.test.com"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    router.sync().catch_up().await.unwrap();
    // The new tenant's first visit is its first: the late write is not its.
    assert_eq!(hit("ns-1.test.com").await, "1");
    router.shutdown().await;
}
