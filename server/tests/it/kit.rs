//! The `testing` kit as an embedding app's tests use it: a tiny axum app of our own over a
//! dedicated and a shared tenant, and the reference job kinds drained to completion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Json;
use axum::routing::{get, post};
use axum::{Router, http};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tenant_router::jobs::{Worker, WorkerOptions};
use tenant_router::middleware::CurrentTenant;
use tenant_router::problem::ApiError;
use tenant_router::tenant::{DatabaseUrl, TenantId};
use tenant_router::testing::{DrainReport, TestKit};
use tenant_router_server::reference_jobs as reference;
use tenant_router_server::schema::schema;
use tower::ServiceExt as _;

async fn whoami(tenant: CurrentTenant) -> Json<Value> {
    Json(json!({
        "id": tenant.id().as_str(),
        "isolation": tenant.tenant().isolation.as_str(),
    }))
}

/// Creates a user of the tenant; returns its id.
async fn add_user(tenant: CurrentTenant, Json(name): Json<String>) -> Result<Json<i64>, ApiError> {
    let db = tenant.db();
    let mut tx = db.begin().await?;
    let id = sqlx::query_scalar(
        "INSERT INTO users (tenant_id, username, email, password_hash)
         VALUES ($1, $2, $2 || '@example.com', 'not a hash') RETURNING id",
    )
    .bind(db.scope())
    .bind(&name)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(id))
}

/// The tenant's notes, oldest first.
async fn notes(tenant: CurrentTenant) -> Result<Json<Vec<String>>, ApiError> {
    let db = tenant.db();
    let mut conn = db.conn().await?;
    let notes = sqlx::query_scalar("SELECT content FROM notes WHERE tenant_id = $1 ORDER BY id")
        .bind(db.scope())
        .fetch_all(&mut *conn)
        .await?;
    Ok(Json(notes))
}

fn app(router: &tenant_router::TenantRouter) -> Router {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/users", post(add_user))
        .route("/notes", get(notes))
        .layer(router.layer())
}

async fn call(app: &Router, host: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let request = http::Request::builder().uri(path).header("host", host);
    let request = match body {
        Some(body) => request
            .method("POST")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    };
    let response = app.clone().oneshot(request.unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Rows of `sql` on `url` (the shared schema first, where there is one), as the server's
/// superuser, whom row-level security does not bind: what is really stored where.
async fn rows(url: &DatabaseUrl, sql: &'static str) -> Vec<(String, String)> {
    let options = url
        .connect_options()
        .options([("search_path", "shared,public")]);
    let mut conn = PgConnection::connect_with(&options).await.unwrap();
    let rows = sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap();
    let _ = conn.close().await;
    rows
}

#[tokio::test]
async fn a_tiny_app_serves_a_dedicated_and_a_shared_tenant_each_its_own_rows() {
    let kit = TestKit::builder(schema()).start().await.unwrap();
    let a = kit
        .dedicated_tenant("kit-a", &["a.kit.test"])
        .await
        .unwrap();
    kit.shared_tenant("kit-b", &["b.kit.test"]).await.unwrap();
    let router = kit.router().await.unwrap();
    let app = app(&router);

    for (host, id, isolation) in [
        ("a.kit.test", "kit-a", "dedicated"),
        ("b.kit.test", "kit-b", "shared"),
    ] {
        let (status, body) = call(&app, host, "/whoami", None).await;
        assert_eq!(status, 200, "{host}: {body}");
        assert_eq!(body, json!({"id": id, "isolation": isolation}));
        let (status, body) = call(&app, host, "/users", Some(json!(id))).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    assert_eq!(call(&app, "c.kit.test", "/whoami", None).await.0, 404);
    // Each user is stored with its tenant only: in A's own database, in B's rows of the
    // shared schema.
    let sql = "SELECT tenant_id, username FROM users ORDER BY id";
    assert_eq!(rows(&a.database, sql).await, [("".into(), "kit-a".into())]);
    assert_eq!(
        rows(kit.control_url(), sql).await,
        [("kit-b".into(), "kit-b".into())]
    );

    // A tenant written after the router started is served at once: no waiting on the bus.
    kit.dedicated_tenant("kit-c", &["c.kit.test"])
        .await
        .unwrap();
    let (status, body) = call(&app, "c.kit.test", "/whoami", None).await;
    assert_eq!((status, &body["id"]), (200, &json!("kit-c")), "{body}");
}

#[tokio::test]
async fn jobs_of_two_tenants_drain_into_their_own_databases() {
    let kit = TestKit::builder(schema())
        .jobs(reference::kinds())
        .start()
        .await
        .unwrap();
    let a = kit
        .dedicated_tenant("kit-jobs-a", &["a.jobs.test"])
        .await
        .unwrap();
    let b = kit
        .shared_tenant("kit-jobs-b", &["b.jobs.test"])
        .await
        .unwrap();
    let router = kit.router().await.unwrap();
    let app = app(&router);
    let mut jobs = Vec::new();
    for (tenant, host, name, n) in [(&a, "a.jobs.test", "a", 3), (&b, "b.jobs.test", "b", 2)] {
        let (status, user) = call(&app, host, "/users", Some(json!(name))).await;
        assert_eq!(status, 200, "{user}");
        for i in 0..n {
            let payload = json!({"content": format!("{name} {i}")});
            let id = kit
                .queue()
                .submit(tenant, "notes.create", payload, user.as_i64(), None)
                .await
                .unwrap();
            jobs.push((tenant.id.clone(), id));
        }
    }
    // No submitting user: a failure no retry fixes.
    let orphan = kit
        .queue()
        .submit(&a, "notes.create", json!({"content": "x"}), None, None)
        .await
        .unwrap();
    // A tenant nobody created.
    let ghost = TenantId::parse("kit-ghost").unwrap();
    let ghost_job = kit
        .queue()
        .submit_raw(
            &ghost,
            None,
            "notes.create",
            json!({"content": "x"}),
            Some(1),
            None,
        )
        .await
        .unwrap();
    // Nothing runs until the drain.
    assert_eq!(call(&app, "a.jobs.test", "/notes", None).await.1, json!([]));

    let report = kit.drain().await.unwrap();
    assert_eq!(
        (report.succeeded, report.dead, report.parked, report.retried),
        (5, 1, 1, 0),
        "{report}"
    );
    for (tenant, id) in &jobs {
        let s = kit.queue().status(tenant, id).await.unwrap().unwrap();
        assert_eq!((s.status.as_str(), s.attempts), ("succeeded", 1), "{s:?}");
    }
    let s = kit.queue().status(&a.id, &orphan).await.unwrap().unwrap();
    assert_eq!(s.status, "dead", "{s:?}");
    let s = kit
        .queue()
        .status(&ghost, &ghost_job)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.status, "parked", "{s:?}");

    // Through the app, each tenant sees its own notes; in storage, A's are in its own
    // database only and B's are its rows of the shared schema only.
    assert_eq!(
        call(&app, "a.jobs.test", "/notes", None).await.1,
        json!(["a 0", "a 1", "a 2"])
    );
    assert_eq!(
        call(&app, "b.jobs.test", "/notes", None).await.1,
        json!(["b 0", "b 1"])
    );
    let sql = "SELECT tenant_id, content FROM notes ORDER BY id";
    let own = |s: &str| (String::new(), s.to_string());
    assert_eq!(
        rows(&a.database, sql).await,
        [own("a 0"), own("a 1"), own("a 2")]
    );
    let b_row = |s: &str| ("kit-jobs-b".to_string(), s.to_string());
    assert_eq!(
        rows(kit.control_url(), sql).await,
        [b_row("b 0"), b_row("b 1")]
    );

    // Drained: a second drain finds nothing.
    assert_eq!(kit.drain().await.unwrap(), DrainReport::default());
}

#[tokio::test]
async fn a_drain_runs_retries_that_fall_due_and_leaves_scheduled_jobs() {
    let kit = TestKit::builder(schema())
        .jobs(reference::kinds_with_diagnostics())
        .worker(|w| w.max_attempts = 3)
        .start()
        .await
        .unwrap();
    let t = kit
        .dedicated_tenant("kit-retry", &["retry.kit.test"])
        .await
        .unwrap();
    let q = kit.queue();
    let flaky = q
        .submit(&t, "diag.flaky", json!({"failures": 2}), None, None)
        .await
        .unwrap();
    let doomed = q
        .submit(&t, "diag.fail", json!({"message": "broken"}), None, None)
        .await
        .unwrap();
    let in_an_hour = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let later = q
        .submit(&t, "diag.record", json!({}), None, Some(in_an_hour))
        .await
        .unwrap();

    let report = kit.drain().await.unwrap();
    assert_eq!(
        (
            report.succeeded,
            report.retried,
            report.dead,
            report.delayed
        ),
        (1, 4, 1, 1),
        "{report}"
    );
    let status = |id: String| {
        let (q, t) = (q.clone(), t.id.clone());
        async move { q.status(&t, &id).await.unwrap().unwrap() }
    };
    let s = status(flaky).await;
    assert_eq!((s.status.as_str(), s.attempts), ("succeeded", 3), "{s:?}");
    let s = status(doomed).await;
    assert_eq!((s.status.as_str(), s.attempts), ("dead", 3), "{s:?}");
    let s = status(later).await;
    assert_eq!((s.status.as_str(), s.attempts), ("queued", 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_the_job_another_worker_is_running() {
    let kit = TestKit::builder(schema())
        .jobs(reference::kinds_with_diagnostics())
        .start()
        .await
        .unwrap();
    let t = kit
        .dedicated_tenant("kit-busy", &["busy.kit.test"])
        .await
        .unwrap();
    let router = kit.router().await.unwrap();
    let worker = Worker::new(
        kit.queue().clone(),
        Arc::clone(router.sync()),
        WorkerOptions {
            name: "elsewhere".into(),
            files_dir: kit.files_dir().to_path_buf(),
            ..WorkerOptions::default()
        },
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let redis_url = kit.redis_url().to_string();
    let running = tokio::spawn(async move { worker.run(&redis_url, stopped).await });
    let id = kit
        .queue()
        .submit(&t, "diag.sleep", json!({"ms": 500}), None, None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while kit
        .queue()
        .status(&t.id, &id)
        .await
        .unwrap()
        .unwrap()
        .status
        != "running"
    {
        assert!(
            Instant::now() < deadline,
            "the worker never started the job"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The drain runs nothing itself, and returns only once the other worker is done.
    assert_eq!(kit.drain().await.unwrap(), DrainReport::default());
    let s = kit.queue().status(&t.id, &id).await.unwrap().unwrap();
    assert_eq!(s.status, "succeeded", "{s:?}");
    assert_eq!(s.result.unwrap()["worker"], "elsewhere");
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
}
