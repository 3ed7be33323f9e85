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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_id_created_again_is_a_new_tenant_unless_its_data_is_adopted() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let id = uid("acme");
    let (old_host, new_host) = (format!("{id}.example.org"), format!("{id}.example.net"));
    let (status, created) = create(&cluster, &server, json!({"id": id, "hosts": [old_host]})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = user(&cluster, &server, &old_host, "old@example.com").await;
    add_note(
        &cluster,
        &server,
        &old_host,
        &token,
        "the old customer's secret",
    )
    .await;

    // Removed without drop_database: everything stays, recorded as kept data.
    let (status, removed) = admin_json(
        &cluster,
        &server,
        Method::DELETE,
        &format!("/admin/tenants/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["database_dropped"], false);
    assert!(database_exists(&database_of(&id)).await);
    let (_, leftovers) = admin_json(&cluster, &server, Method::GET, "/admin/leftovers", None).await;
    assert!(
        leftovers["leftovers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["tenant_id"] == id.as_str() && !l["database"].as_str().unwrap().is_empty()),
        "{leftovers}"
    );

    // The same id for a new customer is refused, naming the kept data and both ways out.
    let fresh = json!({"id": id, "hosts": [new_host]});
    let (status, problem) = create(&cluster, &server, fresh.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("adopt") && detail.contains(&format!("/admin/leftovers/{id}")),
        "{detail}"
    );

    // Adopting it brings back that tenant, whole: its incarnation, its data, its sessions.
    let mut adopt = fresh.clone();
    adopt["adopt"] = json!(true);
    let (status, adopted) = create(&cluster, &server, adopt).await;
    assert_eq!(status, StatusCode::CREATED, "{adopted}");
    assert_eq!(adopted["incarnation"], created["incarnation"]);
    let (status, listed) = notes(&cluster, &server, &new_host, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["notes"][0]["content"], "the old customer's secret");

    // Removed with drop_database, nothing is left, and the next tenant of that id starts
    // empty: another incarnation, the old email free, the old token refused.
    let (status, removed) = admin_json(
        &cluster,
        &server,
        Method::DELETE,
        &format!("/admin/tenants/{id}?drop_database=true"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["database_dropped"], true);
    assert_eq!(removed["purged"], true);
    assert!(!database_exists(&database_of(&id)).await);
    let (status, created_again) = create(&cluster, &server, fresh).await;
    assert_eq!(status, StatusCode::CREATED, "{created_again}");
    assert!(created_again["incarnation"].as_i64() > created["incarnation"].as_i64());
    let (status, _) = notes(&cluster, &server, &new_host, &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let new_token = user(&cluster, &server, &new_host, "old@example.com").await;
    let (_, listed) = notes(&cluster, &server, &new_host, &new_token).await;
    assert_eq!(listed["notes"], json!([]));

    // A `tenant_<id>` database nobody registered (made by hand, or left by an older
    // version) is never taken silently either.
    let other = uid("stray");
    let server_url = shared_postgres().await.url("postgres");
    let mut conn = PgConnection::connect_with(&server_url.connect_options())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        database_of(&other)
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    let body = json!({"id": other, "hosts": [format!("{other}.example.org")]});
    let (status, problem) = create(&cluster, &server, body.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains(&database_of(&other)),
        "{problem}"
    );
    let mut adopt = body;
    adopt["adopt"] = json!(true);
    let (status, adopted) = create(&cluster, &server, adopt).await;
    assert_eq!(status, StatusCode::CREATED, "{adopted}");
    // Not made by the router: never dropped by it.
    let (status, problem) = admin_json(
        &cluster,
        &server,
        Method::DELETE,
        &format!("/admin/tenants/{other}?drop_database=true"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(database_exists(&database_of(&other)).await);
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
    let queue = JobQueue::new(&cluster.redis.url(), Keys::default(), reference::kinds()).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_keys_and_files_of_a_removed_tenant_never_reach_the_next_one() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let _worker = cluster.start_worker("worker", &[]).await;
    let id = uid("jobco");
    let host = format!("{id}.example.org");
    let (status, created) = create(&cluster, &server, json!({"id": id, "hosts": [host]})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = user(&cluster, &server, &host, "first@example.com").await;
    add_note(&cluster, &server, &host, &token, "an old note").await;

    // Files of its own (an export), and a note scheduled a few seconds ahead.
    let export = submit(
        &cluster,
        &server,
        &host,
        &token,
        json!({"kind": "notes.export", "payload": {}}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while job_status(&cluster, &id, &export).await.as_deref() != Some("succeeded") {
        assert!(Instant::now() < deadline, "the export did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let files = cluster.logs.path().join("files").join(&id);
    assert!(files.is_dir());
    let run_at = (chrono::Utc::now() + chrono::Duration::seconds(4)).to_rfc3339();
    let scheduled = submit(
        &cluster,
        &server,
        &host,
        &token,
        json!({"kind": "notes.create", "payload": {"content": "written by the old tenant's job"}, "run_at": run_at}),
    )
    .await;
    assert!(
        delayed_members(&cluster)
            .await
            .iter()
            .any(|m| m.starts_with(&format!("{id}\n")))
    );
    assert!(
        !redis_keys(&cluster, &format!("tr:t:{id}:*"))
            .await
            .is_empty()
    );

    let (status, removed) = admin_json(
        &cluster,
        &server,
        Method::DELETE,
        &format!("/admin/tenants/{id}?drop_database=true"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["purged"], true, "{removed}");
    assert_eq!(
        redis_keys(&cluster, &format!("tr:t:{id}:*")).await,
        Vec::<String>::new()
    );
    assert!(
        !delayed_members(&cluster)
            .await
            .iter()
            .any(|m| m.starts_with(&format!("{id}\n")))
    );
    assert!(!files.exists(), "{} is still there", files.display());
    assert_eq!(job_status(&cluster, &id, &scheduled).await, None);

    // The id comes back for a new customer; the old job's time passes.
    let (status, again) = create(&cluster, &server, json!({"id": id, "hosts": [host]})).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    let new_token = user(&cluster, &server, &host, "new@example.com").await;
    // A job of the old incarnation that reached Redis anyway, from a backup of Redis taken
    // before the purge (so without the purge's fence, which would drop it), is parked, never
    // run.
    let client = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let fences: Vec<String> = redis::cmd("KEYS")
        .arg("tr:jobs:fence:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(fences.len(), 1, "{fences:?}");
    let _: () = redis::cmd("DEL")
        .arg(&fences)
        .query_async(&mut conn)
        .await
        .unwrap();
    let queue = JobQueue::new(&cluster.redis.url(), Keys::default(), reference::kinds()).unwrap();
    let stray = queue
        .submit_raw(
            &TenantId::parse(&id).unwrap(),
            created["incarnation"].as_i64(),
            "notes.create",
            json!({"content": "a stray job of the old tenant"}),
            Some(1),
            None,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while job_status(&cluster, &id, &stray).await.as_deref() != Some("parked") {
        assert!(Instant::now() < deadline, "the stray job was not parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its own jobs run.
    let own = submit(
        &cluster,
        &server,
        &host,
        &new_token,
        json!({"kind": "notes.create", "payload": {"content": "mine"}}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while job_status(&cluster, &id, &own).await.as_deref() != Some("succeeded") {
        assert!(
            Instant::now() < deadline,
            "the new tenant's job did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, listed) = notes(&cluster, &server, &host, &new_token).await;
    let contents: Vec<&str> = listed["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["mine"]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_moves_at_once_lose_nothing_and_a_move_to_where_it_is_does_nothing() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let id = uid("mv");
    let (host, token) = tenant_with_notes(&cluster, &server, &id, 300).await;
    let path = format!("/admin/tenants/{id}/move");
    let first = cluster.admin(&server, Method::POST, &path, Some(json!({"to": "shared"})));
    let second = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cluster
            .admin(&server, Method::POST, &path, Some(json!({"to": "shared"})))
            .await
    };
    let (a, b) = tokio::join!(first, second);
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    let (ta, tb) = (a.text().await.unwrap(), b.text().await.unwrap());
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{ta}\n{tb}"
    );
    assert_eq!(note_counts(&cluster, &id).await, (0, 300));
    let (status, listed) = notes(&cluster, &server, &host, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["notes"].as_array().unwrap().len(), 100);

    // Where it is already: 200, nothing copied, nothing changed.
    let (_, before) = admin_json(
        &cluster,
        &server,
        Method::GET,
        &format!("/admin/tenants/{id}"),
        None,
    )
    .await;
    let (status, report) = admin_json(
        &cluster,
        &server,
        Method::POST,
        &path,
        Some(json!({"to": "shared"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["copied"], json!([]));
    assert_eq!(report["version"], before["version"]);
    assert_eq!(note_counts(&cluster, &id).await, (0, 300));
}

/// Runs the CLI with `args` in the cluster's environment, to the end.
fn cli(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    cluster.command(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_at_any_point_is_completed_by_its_retry() {
    const NOTES: i64 = 20_000;
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let id = uid("big");
    let (host, token) = tenant_with_notes(&cluster, &server, &id, NOTES as usize).await;
    // Each round kills the CLI's move at one point, checks that the tenant is whole in one
    // place and served, then retries the same move to completion.
    for (to, point) in [
        ("shared", "move:copied"),
        ("dedicated", "move:switched"),
        ("shared", "move:announced"),
    ] {
        kill_at(&cluster, &["tenants", "move", &id, "--to", to], point).await;

        // Interrupted, and said so.
        let doctor = cli(&cluster, &["tenants", "doctor"]);
        let said = String::from_utf8_lossy(&doctor.stdout).to_string();
        assert!(said.contains("INTERRUPTED") && said.contains(&id), "{said}");
        let (_, shown) = admin_json(
            &cluster,
            &server,
            Method::GET,
            &format!("/admin/tenants/{id}"),
            None,
        )
        .await;
        assert_eq!(shown["operation"]["kind"], "move", "{shown}");
        // Nothing else may change the tenant until the move is completed.
        let (status, problem) = admin_json(
            &cluster,
            &server,
            Method::PATCH,
            &format!("/admin/tenants/{id}"),
            Some(json!({"pool": {"max_connections": 3}})),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("interrupted"),
            "{problem}"
        );

        // Whole in the one place the control database names, and served from there.
        let tenant = cluster
            .control
            .get_tenant(&TenantId::parse(&id).unwrap())
            .await
            .unwrap()
            .unwrap();
        let (dedicated, shared) = note_counts(&cluster, &id).await;
        let here = match tenant.isolation.as_str() {
            "shared" => shared,
            _ => dedicated,
        };
        assert_eq!(
            here, NOTES,
            "{point}: {dedicated} dedicated, {shared} shared"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, listed) = notes(&cluster, &server, &host, &token).await;
            if status == StatusCode::OK {
                assert_eq!(listed["notes"].as_array().unwrap().len(), 100);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{point}: not served: {status} {listed}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The same command again completes it: every note once, at the target only.
        let retry = cli(&cluster, &["tenants", "move", &id, "--to", to]);
        assert!(
            retry.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&retry.stderr)
        );
        let (dedicated, shared) = note_counts(&cluster, &id).await;
        let expected = if to == "shared" {
            (0, NOTES)
        } else {
            (NOTES, 0)
        };
        assert_eq!((dedicated, shared), expected, "{point}");
        let distinct_db = if to == "shared" {
            cluster.control_url.clone()
        } else {
            shared_postgres().await.url(&database_of(&id))
        };
        let table = if to == "shared" {
            format!("shared.notes WHERE tenant_id = '{id}'")
        } else {
            "notes".to_string()
        };
        assert_eq!(
            scalar(
                &distinct_db,
                &format!("SELECT count(DISTINCT content) FROM {table}")
            )
            .await,
            NOTES
        );
        let doctor = cli(&cluster, &["tenants", "doctor"]);
        assert!(
            doctor.status.success(),
            "{}",
            String::from_utf8_lossy(&doctor.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _) = notes(&cluster, &server, &host, &token).await;
            if status == StatusCode::OK {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{point}: not served after the retry"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reports_drift_and_never_undoes_the_api() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let (a, b) = (uid("imp"), uid("imq"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenants.toml");
    std::fs::write(
        &file,
        format!(
            "[[tenant]]\nid = \"{a}\"\nhosts = [\"{a}.example.org\"]\n\n\
             [[tenant]]\nid = \"{b}\"\nhosts = [\"{b}.example.org\"]\n"
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = cli(&cluster, &["tenants", "import", "--file", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Suspended and moved through the API.
    let (status, _) = admin_json(
        &cluster,
        &server,
        Method::PATCH,
        &format!("/admin/tenants/{a}"),
        Some(json!({"state": "suspended"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, moved) = admin_json(
        &cluster,
        &server,
        Method::POST,
        &format!("/admin/tenants/{b}/move"),
        Some(json!({"to": "shared"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{moved}");

    // A plain import (what docker-compose runs at every start) reports and changes nothing.
    let before = cluster.control.load_tenants().await.unwrap();
    let out = cli(&cluster, &["tenants", "import", "--file", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains(&format!("{a}: differs")) && said.contains("state: suspended"),
        "{said}"
    );
    assert!(
        said.contains(&format!("{b}: differs")) && said.contains("isolation: shared"),
        "{said}"
    );
    assert_eq!(cluster.control.load_tenants().await.unwrap(), before);

    // --force applies what an import may change, and never moves a tenant's data.
    let out = cli(&cluster, &["tenants", "import", "--file", path, "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = cluster.control.load_tenants().await.unwrap();
    let get = |id: &str| after.iter().find(|t| t.id.as_str() == id).unwrap().clone();
    assert_eq!(get(&a).state.as_str(), "active");
    assert_eq!(get(&b).isolation.as_str(), "shared");
    assert_eq!(
        get(&b).version,
        before.iter().find(|t| t.id.as_str() == b).unwrap().version
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_take_another_tenants_wildcard_host() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let (wild, alpha, gamma) = (uid("wild"), uid("alpha"), uid("gamma"));
    for id in [&wild, &alpha] {
        let (status, body) = create(
            &cluster,
            &server,
            json!({"id": id, "hosts": [format!("{id}.example.org")]}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // `wild.test.com` is tenant wild's by the base domain: alpha cannot claim it.
    let (status, problem) = admin_json(
        &cluster,
        &server,
        Method::PATCH,
        &format!("/admin/tenants/{alpha}"),
        Some(json!({"hosts": [format!("{wild}.test.com")]})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("tenant '{wild}'")),
        "{problem}"
    );
    let r = cluster
        .client
        .get(server.url("/healthz"))
        .header("Host", format!("{wild}.test.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A host that names no tenant may be held; a tenant of that name then cannot be made.
    let (status, body) = admin_json(
        &cluster,
        &server,
        Method::PATCH,
        &format!("/admin/tenants/{alpha}"),
        Some(json!({"hosts": [format!("{alpha}.example.org"), format!("{gamma}.test.com")]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, problem) = create(
        &cluster,
        &server,
        json!({"id": gamma, "hosts": [format!("{gamma}.example.org")]}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("tenant '{alpha}'")),
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_notices_a_restored_control_database() {
    let mut cluster = Cluster::new().await;
    cluster.reconcile_secs = 1;
    let server = cluster.start("server").await;
    let writer = cluster.start("writer").await;
    let make = |id: String| {
        let body = json!({"id": id, "hosts": [format!("{id}.example.org")]});
        async { create(&cluster, &writer, body).await }
    };
    let kept = uid("kept");
    assert_eq!(make(kept.clone()).await.0, StatusCode::CREATED);
    let backup_version = cluster.control.max_version().await.unwrap();
    let lost = uid("lost");
    assert_eq!(make(lost.clone()).await.0, StatusCode::CREATED);
    cluster
        .assert_converged(&[&server, &writer], Duration::from_secs(10))
        .await;

    // The control database goes back to the backup: the tenant made after it is gone, and
    // the version sequence is back where it was.
    let mut conn = PgConnection::connect_with(&cluster.control_url.connect_options())
        .await
        .unwrap();
    for sql in [
        format!("DELETE FROM tenants WHERE version > {backup_version}"),
        format!("DELETE FROM tenant_tombstones WHERE version > {backup_version}"),
        format!("DELETE FROM tenant_history WHERE version > {backup_version}"),
        format!("DELETE FROM tenant_operations WHERE tenant_id = '{lost}'"),
        format!("SELECT setval('tenant_version_seq', {backup_version})"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let _ = conn.close().await;
    // New writes push the highest version past what the instance held.
    for _ in 0..2 {
        assert_eq!(make(uid("new")).await.0, StatusCode::CREATED);
    }
    cluster
        .assert_converged(&[&server], Duration::from_secs(10))
        .await;
    let (held, _) = cluster.view(&server).await;
    assert!(!held.contains_key(&lost), "{held:?}");
    assert!(held.contains_key(&kept));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_create_or_remove_is_reported_and_completed_or_rolled_back() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let id = uid("crash");
    let host = format!("{id}.example.org");
    let add = ["tenants", "add", id.as_str(), "--host", host.as_str()];

    // Killed after its database was made, before the tenant was stored: reported, and
    // `repair` rolls it back.
    kill_at(&cluster, &add, "create:provisioned").await;
    assert!(database_exists(&database_of(&id)).await);
    let doctor = cli(&cluster, &["tenants", "doctor"]);
    assert_eq!(doctor.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&doctor.stdout).contains("create"));
    let repair = cli(&cluster, &["tenants", "repair", &id]);
    assert!(
        repair.status.success(),
        "{}",
        String::from_utf8_lossy(&repair.stderr)
    );
    assert!(!database_exists(&database_of(&id)).await);
    assert!(cli(&cluster, &["tenants", "doctor"]).status.success());

    // Killed at the same point again: the same command retried completes it, on the
    // database the first attempt made (not a leftover of anyone else's).
    kill_at(&cluster, &add, "create:provisioned").await;
    let retry = cli(&cluster, &add);
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    cluster
        .assert_converged(&[&server], Duration::from_secs(10))
        .await;
    let token = user(&cluster, &server, &host, "someone@example.com").await;
    add_note(&cluster, &server, &host, &token, "kept?").await;

    // A purging removal killed after its commit: the tenant is gone, its data kept and
    // blocking the id; re-creating it is refused until the removal is retried, which
    // completes the purge.
    let remove = ["tenants", "remove", id.as_str(), "--drop-database"];
    kill_at(&cluster, &remove, "remove:removed").await;
    // Announced before the kill: the server stops serving it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while notes(&cluster, &server, &host, &token).await.0 != StatusCode::NOT_FOUND {
        assert!(
            Instant::now() < deadline,
            "the removed tenant is still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(database_exists(&database_of(&id)).await);
    let (status, problem) = create(&cluster, &server, json!({"id": id, "hosts": [host]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("interrupted"),
        "{problem}"
    );
    let retry = cli(&cluster, &remove);
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    assert!(!database_exists(&database_of(&id)).await);
    let (status, body) = create(&cluster, &server, json!({"id": id, "hosts": [host]})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_elses_database_is_ever_taken_dropped_or_overwritten() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;

    // An adopt killed half-way: the database it was adopting is not the create's to drop,
    // and a retry without `adopt` is still refused.
    let victim = uid("victim");
    let host = format!("{victim}.example.org");
    let url = foreign_database(&database_of(&victim)).await;
    kill_at(
        &cluster,
        &["tenants", "add", &victim, "--host", &host, "--adopt"],
        "create:provisioning",
    )
    .await;
    let repair = cli(&cluster, &["tenants", "repair", &victim]);
    assert!(
        repair.status.success(),
        "{}",
        String::from_utf8_lossy(&repair.stderr)
    );
    assert_eq!(scalar(&url, "SELECT count(*) FROM precious").await, 1);
    kill_at(
        &cluster,
        &["tenants", "add", &victim, "--host", &host, "--adopt"],
        "create:provisioning",
    )
    .await;
    let (status, problem) = create(&cluster, &server, json!({"id": victim, "hosts": [host]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(scalar(&url, "SELECT count(*) FROM precious").await, 1);

    // Another tenant's database is not given to a second tenant, by create or by PATCH.
    let holder = uid("holder");
    let held = foreign_database(&database_of(&format!("{holder}-db"))).await;
    let (status, body) = create(
        &cluster,
        &server,
        json!({"id": holder, "hosts": [format!("{holder}.example.org")], "database": held.expose()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let thief = uid("thief");
    let (status, problem) = create(
        &cluster,
        &server,
        json!({"id": thief, "hosts": [format!("{thief}.example.org")], "database": held.expose()}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let (status, body) = create(
        &cluster,
        &server,
        json!({"id": thief, "hosts": [format!("{thief}.example.org")]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, problem) = admin_json(
        &cluster,
        &server,
        Method::PATCH,
        &format!("/admin/tenants/{thief}"),
        Some(json!({"database": held.expose()})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");

    // A move to dedicated never overwrites a `tenant_<id>` database it did not make.
    let mover = uid("mover");
    let (status, body) = create(
        &cluster,
        &server,
        json!({"id": mover, "hosts": [format!("{mover}.example.org")], "isolation": "shared"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let squatted = foreign_database(&database_of(&mover)).await;
    let (status, problem) = admin_json(
        &cluster,
        &server,
        Method::POST,
        &format!("/admin/tenants/{mover}/move"),
        Some(json!({"to": "dedicated"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(scalar(&squatted, "SELECT count(*) FROM precious").await, 1);
    let doctor = cli(&cluster, &["tenants", "doctor"]);
    assert!(
        doctor.stdout.starts_with(b"no unfinished"),
        "{}",
        String::from_utf8_lossy(&doctor.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_out_drops_the_database_it_made_and_an_adopted_guarded_one_takes_writes() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let id = uid("gx");
    let (host, token) = tenant_with_notes(&cluster, &server, &id, 3).await;
    let (status, report) = admin_json(
        &cluster,
        &server,
        Method::POST,
        &format!("/admin/tenants/{id}/move"),
        Some(json!({"to": "shared"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    // The database the router made for it is gone, not left empty and guarded.
    assert!(!database_exists(&database_of(&id)).await);
    add_note(&cluster, &server, &host, &token, "after the move").await;

    // A database given by hand keeps its guard after a move out; a tenant that is given it
    // again can write to it.
    let own = uid("byhand");
    let url = foreign_database(&database_of(&format!("{own}-db"))).await;
    let migrate = tenant_router::provision::migrate_tenant_with(&url, &tenant_router_server::schema::TENANT_MIGRATOR).await;
    assert!(
        !matches!(
            migrate,
            tenant_router::provision::MigrationOutcome::Failed(_)
        ),
        "{migrate:?}"
    );
    let own_host = format!("{own}.example.org");
    let (status, body) = create(
        &cluster,
        &server,
        json!({"id": own, "hosts": [own_host], "database": url.expose()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    user(&cluster, &server, &own_host, "alice@example.com").await;
    let (status, _) = admin_json(
        &cluster,
        &server,
        Method::POST,
        &format!("/admin/tenants/{own}/move"),
        Some(json!({"to": "shared"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = admin_json(
        &cluster,
        &server,
        Method::DELETE,
        &format!("/admin/tenants/{own}?drop_database=true"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(scalar(&url, "SELECT count(*) FROM precious").await, 1);
    let again = uid("again");
    let again_host = format!("{again}.example.org");
    let (status, body) = create(
        &cluster,
        &server,
        json!({"id": again, "hosts": [again_host], "database": url.expose()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    user(&cluster, &server, &again_host, "bobby@example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_without_a_base_domain_cannot_take_a_wildcard_host() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let (src, evil) = (uid("src"), uid("evil"));
    let (status, body) = create(
        &cluster,
        &server,
        json!({"id": src, "hosts": [format!("{src}.example.org")]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let out = cluster
        .command(&[
            "tenants",
            "add",
            &evil,
            "--host",
            &format!("{evil}.example.org"),
            "--host",
            &format!("{src}.test.com"),
        ])
        .env_remove("TENANT_ROUTER_BASE_DOMAIN")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("wildcard host of tenant '{src}'")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_kept_data_wait_for_the_adopt_and_a_purge_fences_a_running_job() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let _worker = cluster.start_worker("worker", &[]).await;
    let id = uid("keep");
    let host = format!("{id}.example.org");
    let (status, body) = create(&cluster, &server, json!({"id": id, "hosts": [host]})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = user(&cluster, &server, &host, "keeper@example.com").await;
    let run_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let job = submit(
        &cluster,
        &server,
        &host,
        &token,
        json!({"kind": "notes.create", "payload": {"content": "from before the removal"}, "run_at": run_at}),
    )
    .await;
    let (status, _) = admin_json(
        &cluster,
        &server,
        Method::DELETE,
        &format!("/admin/tenants/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(20);
    while job_status(&cluster, &id, &job).await.as_deref() != Some("waiting") {
        assert!(
            Instant::now() < deadline,
            "the job did not wait: {:?}",
            job_status(&cluster, &id, &job).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = create(
        &cluster,
        &server,
        json!({"id": id, "hosts": [host], "adopt": true}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while job_status(&cluster, &id, &job).await.as_deref() != Some("succeeded") {
        assert!(
            Instant::now() < deadline,
            "the adopted tenant's job did not run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, listed) = notes(&cluster, &server, &host, &token).await;
    assert_eq!(listed["notes"][0]["content"], "from before the removal");

    // A job still running when the tenant is purged leaves nothing behind when it ends.
    let sleeper = submit(
        &cluster,
        &server,
        &host,
        &token,
        json!({"kind": "diag.sleep", "payload": {"ms": 3000}}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while job_status(&cluster, &id, &sleeper).await.as_deref() != Some("running") {
        assert!(Instant::now() < deadline, "the job did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, removed) = admin_json(
        &cluster,
        &server,
        Method::DELETE,
        &format!("/admin/tenants/{id}?drop_database=true"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        redis_keys(&cluster, &format!("tr:t:{id}:*")).await,
        Vec::<String>::new()
    );
    let client = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for stream in ["tr:jobs:parked", "tr:jobs:dead"] {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        assert!(
            !entries
                .iter()
                .any(|(_, fields)| fields.iter().any(|(k, v)| k == "tenant_id" && v == &id)),
            "{stream}: {entries:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_taken_or_unusable_database_is_refused() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let holder = uid("held");
    let host = format!("{holder}.example.org");
    let (status, body) = create(&cluster, &server, json!({"id": holder, "hosts": [host]})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let pg = shared_postgres().await;
    let name = database_of(&holder);
    let base = pg.url("postgres").expose().to_string();
    let server_part = base.rsplit_once('/').unwrap().0.to_string();
    let escaped = name.replace('_', "%5F");
    let control_name = cluster.control_url.database_name().unwrap();
    for (database, status_wanted) in [
        (format!("{server_part}/{escaped}"), StatusCode::CONFLICT),
        (
            format!("{server_part}/x?dbname={name}"),
            StatusCode::CONFLICT,
        ),
        (
            format!("{server_part}/?dbname={name}"),
            StatusCode::CONFLICT,
        ),
        // The control database (here also the shared one) is never a tenant's.
        (
            format!("{server_part}/{control_name}"),
            StatusCode::CONFLICT,
        ),
        (
            format!("{server_part}/{control_name}?options=-c%20search_path%3Dshared"),
            StatusCode::CONFLICT,
        ),
        // A database that cannot be reached is the client's mistake, said plainly.
        (
            format!("{server_part}/no_such_database"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let other = uid("other");
        let (status, problem) = create(
            &cluster,
            &server,
            json!({"id": other, "hosts": [format!("{other}.example.org")], "database": database}),
        )
        .await;
        assert_eq!(status, status_wanted, "{database}: {problem}");
    }
    // The holder is untouched and still serves.
    user(&cluster, &server, &host, "holder@example.com").await;
}
