//! A tenant's lifecycle never leaks or loses its data: an id removed and created again is a
//! new tenant, a purge deletes everything, one operation runs at a time per tenant, a killed
//! move completes on retry, an import reports drift instead of undoing the API, wildcard
//! hosts stay their tenant's, and a restored control database is noticed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};
use tenant_router::jobs::{JobQueue, Keys};
use tenant_router::tenant::{DatabaseUrl, TenantId};
use tenant_router_server::reference_jobs as reference;

use crate::cluster::{Cluster, Instance};
use crate::harness::shared_postgres;

mod ids;
mod jobs;
mod moves;
mod operations;

/// A tenant id of its own for this test (databases `tenant_<id>` share one server).
fn uid(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

async fn admin_json(
    cluster: &Cluster,
    server: &Instance,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let r = cluster.admin(server, method, path, body).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn create(cluster: &Cluster, server: &Instance, body: Value) -> (StatusCode, Value) {
    admin_json(cluster, server, Method::POST, "/admin/tenants", Some(body)).await
}

/// Registers a user on `host` and returns a session token.
async fn user(cluster: &Cluster, server: &Instance, host: &str, email: &str) -> String {
    let post = |path: &str, body: Value| {
        cluster
            .client
            .post(server.url(path))
            .header("Host", host)
            .json(&body)
            .send()
    };
    let name = email.split('@').next().unwrap();
    let r = post(
        "/api/register",
        json!({"username": name, "email": email, "password": "correct horse"}),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = post(
        "/api/login",
        json!({"email": email, "password": "correct horse"}),
    )
    .await
    .unwrap();
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn notes(
    cluster: &Cluster,
    server: &Instance,
    host: &str,
    token: &str,
) -> (StatusCode, Value) {
    let r = cluster
        .client
        .get(server.url("/api/notes?limit=100"))
        .header("Host", host)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn add_note(cluster: &Cluster, server: &Instance, host: &str, token: &str, content: &str) {
    let r = cluster
        .client
        .post(server.url("/api/notes"))
        .header("Host", host)
        .bearer_auth(token)
        .json(&json!({"content": content}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
}

async fn scalar(db: &DatabaseUrl, sql: &str) -> i64 {
    let mut conn = PgConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    n
}

async fn database_exists(name: &str) -> bool {
    let server = shared_postgres().await.url("postgres");
    scalar(
        &server,
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    )
    .await
        == 1
}

fn database_of(id: &str) -> String {
    format!("tenant_{}", id.replace('-', "_"))
}

async fn redis_keys(cluster: &Cluster, pattern: &str) -> Vec<String> {
    let client = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn delayed_members(cluster: &Cluster) -> Vec<String> {
    let client = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ZRANGE")
        .arg("tr:jobs:delayed")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn job_status(cluster: &Cluster, id: &str, job: &str) -> Option<String> {
    let queue = JobQueue::new(cluster.redis.url(), Keys::default(), reference::kinds()).unwrap();
    queue
        .status(&TenantId::parse(id).unwrap(), job)
        .await
        .unwrap()
        .map(|s| s.status)
}

async fn submit(
    cluster: &Cluster,
    server: &Instance,
    host: &str,
    token: &str,
    body: Value,
) -> String {
    let r = cluster
        .client
        .post(server.url("/api/jobs"))
        .header("Host", host)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );
    r.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A dedicated tenant with `n` notes of one user, inserted directly.
async fn tenant_with_notes(
    cluster: &Cluster,
    server: &Instance,
    id: &str,
    n: usize,
) -> (String, String) {
    let host = format!("{id}.example.org");
    let (status, created) = create(cluster, server, json!({"id": id, "hosts": [host]})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = user(cluster, server, &host, "owner@example.com").await;
    let db = shared_postgres().await.url(&database_of(id));
    let mut conn = PgConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO notes (tenant_id, user_id, content)
         SELECT '', (SELECT id FROM users LIMIT 1), 'note ' || i FROM generate_series(1, {n}) i"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    (host, token)
}

/// Where the tenant's notes are, as (dedicated database count, shared count, distinct
/// contents overall).
async fn note_counts(cluster: &Cluster, id: &str) -> (i64, i64) {
    let dedicated_db = shared_postgres().await.url(&database_of(id));
    let dedicated = if database_exists(&database_of(id)).await {
        scalar(&dedicated_db, "SELECT count(*) FROM notes").await
    } else {
        0
    };
    let shared = scalar(
        &cluster.control_url,
        &format!("SELECT count(*) FROM shared.notes WHERE tenant_id = '{id}'"),
    )
    .await;
    (dedicated, shared)
}

/// Runs the CLI with `args` in the cluster's environment, to the end.
fn cli(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    cluster.command(args).output().unwrap()
}

/// Starts the CLI with `args` and `TENANT_ROUTER_FAILPOINT=point`, waits until it stops
/// there, and kills it with SIGKILL.
async fn kill_at(cluster: &Cluster, args: &[&str], point: &str) {
    let mut child = cluster
        .command(args)
        .env("TENANT_ROUTER_FAILPOINT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reached = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        let whole_line = |s: &str| {
            s.find("failpoint reached")
                .is_some_and(|at| s[at..].contains('\n'))
        };
        while !whole_line(&seen) {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    let seen = tokio::time::timeout(Duration::from_secs(120), reached)
        .await
        .expect("the command reached its failpoint")
        .unwrap();
    assert!(
        seen.contains(&format!("failpoint reached: {point}")),
        "{seen}"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let _ = child.wait();
    // PostgreSQL ends the killed process's sessions (and its operation lock) a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster
        .control
        .unfinished_operations()
        .await
        .unwrap()
        .iter()
        .any(|(_, running)| *running)
    {
        assert!(
            Instant::now() < deadline,
            "the killed command's lock was never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates database `name` on the shared server with a `notes` table holding one row.
async fn foreign_database(name: &str) -> DatabaseUrl {
    let pg = shared_postgres().await;
    let server = pg.url("postgres");
    let mut conn = PgConnection::connect_with(&server.connect_options())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    let url = pg.url(name);
    let mut conn = PgConnection::connect_with(&url.connect_options())
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE precious (v text); INSERT INTO precious VALUES ('keep me')")
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    url
}
