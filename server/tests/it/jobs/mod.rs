//! Background jobs: the right tenant every time, retries and dead letters, parking (run in
//! the test process by `testing::drain`, deterministically), and with real worker processes:
//! crash recovery, two workers, fairness and graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tenant_router::jobs::{JobQueue, Keys};
use tenant_router::registry::{Registry, RegistryOptions};
use tenant_router::sync::ConfigSync;
use tenant_router::tenant::{DatabaseUrl, TenantId};
use tenant_router::testing::{self, DrainOptions, DrainReport};
use tenant_router_server::reference_jobs as reference;

use crate::cluster::{Cluster, Instance};
use crate::harness::{problem, shared_postgres, tenant_database};

mod delivery;
mod limits;
mod tenancy;

pub(crate) struct Site {
    pub(crate) host: String,
    pub(crate) db: DatabaseUrl,
    pub(crate) token: String,
    /// Where its notes are: `notes` of its own database, or its rows of the shared schema.
    notes: String,
}

pub(crate) async fn add_tenant(cluster: &Cluster, server: &Instance, id: &str) -> Site {
    let db = tenant_database(shared_postgres().await, id).await;
    add_site(
        cluster,
        server,
        id,
        json!({"database": db.expose()}),
        db,
        "notes".into(),
    )
    .await
}

/// A shared tenant: its rows live in the shared schema of the control database.
async fn add_shared_tenant(cluster: &Cluster, server: &Instance, id: &str) -> Site {
    let notes = format!("shared.notes WHERE tenant_id = '{id}'");
    add_site(
        cluster,
        server,
        id,
        json!({"isolation": "shared"}),
        cluster.control_url.clone(),
        notes,
    )
    .await
}

async fn add_site(
    cluster: &Cluster,
    server: &Instance,
    id: &str,
    extra: Value,
    db: DatabaseUrl,
    notes: String,
) -> Site {
    let host = format!("{id}.example.org");
    let mut body = json!({"id": id, "hosts": [host]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = cluster
        .admin(server, Method::POST, "/admin/tenants", Some(body))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let post = |path: &str, body: Value| {
        cluster
            .client
            .post(server.url(path))
            .header("Host", &host)
            .json(&body)
            .send()
    };
    let r = post(
        "/api/register",
        json!({"username": "jobuser", "email": "u@example.com", "password": "correct horse"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = post(
        "/api/login",
        json!({"email": "u@example.com", "password": "correct horse"}),
    )
    .await
    .unwrap();
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    Site {
        host,
        db,
        token,
        notes,
    }
}

pub(crate) async fn submit(
    cluster: &Cluster,
    server: &Instance,
    site: &Site,
    kind: &str,
    payload: Value,
) -> String {
    let r = cluster
        .client
        .post(server.url("/api/jobs"))
        .header("Host", &site.host)
        .bearer_auth(&site.token)
        .json(&json!({"kind": kind, "payload": payload}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["status_url"],
        format!("/api/jobs/{}", body["job_id"].as_str().unwrap())
    );
    body["job_id"].as_str().unwrap().to_string()
}

async fn status(cluster: &Cluster, server: &Instance, site: &Site, job_id: &str) -> Value {
    let r = cluster
        .client
        .get(server.url(&format!("/api/jobs/{job_id}")))
        .header("Host", &site.host)
        .bearer_auth(&site.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

pub(crate) async fn wait_for(
    cluster: &Cluster,
    server: &Instance,
    site: &Site,
    job_id: &str,
    want: &str,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = status(cluster, server, site, job_id).await;
        if s["status"] == want {
            return s;
        }
        assert!(Instant::now() < deadline, "job {job_id} is {s}, not {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn pool(db: &DatabaseUrl) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.connect_options())
        .await
        .unwrap()
}

async fn count(db: &DatabaseUrl, sql: &'static str) -> i64 {
    let p = pool(db).await;
    let n = sqlx::query_scalar(sql).fetch_one(&p).await.unwrap();
    p.close().await;
    n
}

/// What `diag.sleep` logged in a tenant's Redis namespace: `start|end <job> <worker>` lines.
async fn diag_runs(cluster: &Cluster, tenant: &str) -> Vec<String> {
    let redis = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let id = TenantId::parse(tenant).unwrap();
    let (tenants, _) = cluster.control.load_all().await.unwrap();
    let incarnation = tenants.iter().find(|t| t.id == id).unwrap().incarnation;
    let key = format!("{}diag:runs", Keys::default().namespace(&id, incarnation));
    redis::AsyncCommands::lrange(&mut conn, key, 0, -1)
        .await
        .unwrap()
}

fn queue(cluster: &Cluster) -> JobQueue {
    JobQueue::new(
        cluster.redis.url(),
        Keys::default(),
        reference::kinds_with_diagnostics(),
    )
    .unwrap()
}

/// Runs every queued job in this process, as a worker process of this cluster would (three
/// attempts, files under the data directory), until none is queued, running or due.
async fn drain(cluster: &Cluster) -> DrainReport {
    let registry = Registry::new(RegistryOptions {
        shared_database: Some(cluster.control_url.clone()),
        ..RegistryOptions::default()
    });
    let sync = Arc::new(ConfigSync::new(Arc::new(registry), cluster.control.clone()));
    sync.full_load().await.unwrap();
    let mut options = DrainOptions::default();
    options.worker.max_attempts = 3;
    options.worker.files_dir = cluster.logs.path().join("files");
    testing::drain(&queue(cluster), &sync, &options)
        .await
        .unwrap()
}
