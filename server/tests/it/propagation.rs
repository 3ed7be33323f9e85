//! Changes made through one instance reach every other one through Redis, and nothing is
//! lost when Redis goes away, an instance is paused, starts late, or a burst arrives.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use nix::sys::signal::Signal;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tenant_router::control::{TenantSpec, WriteMode};
use tenant_router::tenant::{PoolSettings, TenantHost, TenantId, TenantState};

use crate::cluster::{Cluster, Instance};
use crate::harness::{shared_postgres, tenant_database};

const CONVERGE: Duration = Duration::from_secs(20);

async fn login(cluster: &Cluster, instance: &Instance, host: &str, email: &str) -> StatusCode {
    cluster
        .client
        .post(instance.url("/api/login"))
        .header("Host", host)
        .json(&json!({"email": email, "password": "correct horse"}))
        .send()
        .await
        .unwrap()
        .status()
}

async fn register(cluster: &Cluster, instance: &Instance, host: &str, name: &str) {
    let r = cluster
        .client
        .post(instance.url("/api/register"))
        .header("Host", host)
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": "correct horse"}))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_follow_an_add_a_database_move_and_a_delete() {
    let pg = shared_postgres().await;
    let db1 = tenant_database(pg, "move1").await;
    let db2 = tenant_database(pg, "move2").await;
    let cluster = Cluster::new().await;
    let a = cluster.start("a").await;
    let b = cluster.start("b").await;
    let c = cluster.start("c").await;

    // A probe tenant on db2 puts a user there whom only db2 knows.
    let r = cluster
        .admin(
            &a,
            Method::POST,
            "/admin/tenants",
            Some(json!({
                "id": "probe", "hosts": ["probe.example.org"], "database": db2.expose()
            })),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    register(&cluster, &a, "probe.example.org", "only-in-db2").await;

    let r = cluster
        .admin(
            &a,
            Method::POST,
            "/admin/tenants",
            Some(json!({
                "id": "moving", "hosts": ["moving.example.org"], "database": db1.expose()
            })),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    // Added through A, it resolves on B and C.
    for i in [&b, &c] {
        cluster
            .eventually(i, "moving.example.org", "/api/notes", |s| {
                s != StatusCode::NOT_FOUND
            })
            .await;
    }
    register(&cluster, &b, "moving.example.org", "only-in-db1").await;
    assert_eq!(
        login(
            &cluster,
            &c,
            "moving.example.org",
            "only-in-db1@example.com"
        )
        .await,
        StatusCode::OK
    );

    // The probe goes (a database given by hand is never dropped: discarding what its
    // removal kept only forgets it), so db2 is nobody's and "moving" may have it.
    for path in ["/admin/tenants/probe", "/admin/leftovers/probe"] {
        let r = cluster.admin(&a, Method::DELETE, path, None).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    // Moving it to db2 moves new requests on every instance.
    let r = cluster
        .client
        .patch(a.admin_url("/admin/tenants/moving"))
        .bearer_auth(&cluster.token)
        .header("If-Match", &etag)
        .json(&json!({"database": db2.expose()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    cluster.assert_converged(&[&a, &b, &c], CONVERGE).await;
    for i in [&a, &b, &c] {
        assert_eq!(
            login(&cluster, i, "moving.example.org", "only-in-db2@example.com").await,
            StatusCode::OK,
            "{} still routes to the old database",
            i.name
        );
        assert_eq!(
            login(&cluster, i, "moving.example.org", "only-in-db1@example.com").await,
            StatusCode::UNAUTHORIZED
        );
    }

    // Deleted through A: 404 everywhere.
    let r = cluster
        .admin(&a, Method::DELETE, "/admin/tenants/moving", None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    for i in [&a, &b, &c] {
        cluster
            .eventually(i, "moving.example.org", "/api/notes", |s| {
                s == StatusCode::NOT_FOUND
            })
            .await;
    }
    cluster.assert_converged(&[&a, &b, &c], CONVERGE).await;
    // The hint travelled, not a reconcile: instances reconcile once an hour here.
    assert!(
        b.log().contains("configuration bus connected"),
        "{}",
        b.log()
    );
    assert!(!b.log().contains("reconcile found changes"), "{}", b.log());
}

/// A tenant for tests of configuration only: shared, so hundreds of them need no database
/// each (two dedicated tenants never share one).
fn body_tenant(id: &str, host: &str) -> Value {
    json!({"id": id, "hosts": [host], "isolation": "shared"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_converge_after_redis_comes_back() {
    let mut cluster = Cluster::new().await;
    let a = cluster.start("a").await;
    let b = cluster.start("b").await;
    let c = cluster.start("c").await;
    for n in 0..3 {
        let r = cluster
            .admin(
                &a,
                Method::POST,
                "/admin/tenants",
                Some(body_tenant(
                    &format!("before-{n}"),
                    &format!("before-{n}.example.org"),
                )),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    cluster.assert_converged(&[&a, &b, &c], CONVERGE).await;

    cluster.redis.stop();
    // They notice, say so, and keep serving what they hold.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.readyz(&b).await["status"] != "degraded" {
        assert!(
            Instant::now() < deadline,
            "b never reported the bus degraded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.readyz(&b).await["bus"]["state"], "degraded");
    cluster
        .eventually(&b, "before-0.example.org", "/api/notes", |s| {
            s == StatusCode::UNAUTHORIZED
        })
        .await;

    // Adds, an update and removals while Redis is down: committed, announced to no one.
    for n in 0..3 {
        let r = cluster
            .admin(
                &a,
                Method::POST,
                "/admin/tenants",
                Some(body_tenant(
                    &format!("during-{n}"),
                    &format!("during-{n}.example.org"),
                )),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = cluster
        .admin(
            &a,
            Method::PATCH,
            "/admin/tenants/before-1",
            Some(json!({"state": "suspended"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = cluster
        .admin(&a, Method::DELETE, "/admin/tenants/before-2", None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // A serves its own writes at once.
    cluster
        .eventually(&a, "during-0.example.org", "/api/notes", |s| {
            s == StatusCode::UNAUTHORIZED
        })
        .await;

    cluster.redis.start().unwrap();
    cluster.assert_converged(&[&a, &b, &c], CONVERGE).await;
    for i in [&b, &c] {
        cluster
            .eventually(i, "before-1.example.org", "/api/notes", |s| {
                s == StatusCode::SERVICE_UNAVAILABLE
            })
            .await;
        cluster
            .eventually(i, "before-2.example.org", "/api/notes", |s| {
                s == StatusCode::NOT_FOUND
            })
            .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster.readyz(i).await["status"] != "ready" {
            assert!(Instant::now() < deadline, "{} stayed degraded", i.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(!b.log().contains("reconcile found changes"), "{}", b.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_and_a_late_one_converge() {
    let cluster = Cluster::new().await;
    let a = cluster.start("a").await;
    let b = cluster.start("b").await;

    b.signal(Signal::SIGSTOP);
    for n in 0..20 {
        let r = cluster
            .admin(
                &a,
                Method::POST,
                "/admin/tenants",
                Some(body_tenant(
                    &format!("p-{n}"),
                    &format!("p-{n}.example.org"),
                )),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    for n in 0..5 {
        let r = cluster
            .admin(&a, Method::DELETE, &format!("/admin/tenants/p-{n}"), None)
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let c = cluster.start("late").await;
    b.signal(Signal::SIGCONT);
    cluster.assert_converged(&[&a, &b, &c], CONVERGE).await;
    cluster
        .eventually(&b, "p-3.example.org", "/api/notes", |s| {
            s == StatusCode::NOT_FOUND
        })
        .await;
    cluster
        .eventually(&b, "p-7.example.org", "/api/notes", |s| {
            s == StatusCode::UNAUTHORIZED
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_writes_ends_with_identical_versions_everywhere() {
    let cluster = Cluster::new().await;
    let a = cluster.start("a").await;
    let b = cluster.start("b").await;
    let c = cluster.start("c").await;

    // 500 creates, then 300 updates and 200 removals, 8 at a time: 1,000 writes.
    let mut writes: Vec<(Method, String, Option<Value>)> = (0..500)
        .map(|n| {
            (
                Method::POST,
                "/admin/tenants".to_string(),
                Some(body_tenant(
                    &format!("b-{n}"),
                    &format!("b-{n}.example.org"),
                )),
            )
        })
        .collect();
    let mut rest: Vec<(Method, String, Option<Value>)> = (0..300)
        .map(|n| {
            (
                Method::PATCH,
                format!("/admin/tenants/b-{n}"),
                Some(json!({"pool": {"max_connections": 2 + n % 5}})),
            )
        })
        .chain((300..500).map(|n| (Method::DELETE, format!("/admin/tenants/b-{n}"), None)))
        .collect();
    let creates = std::mem::take(&mut writes);
    for phase in [creates, std::mem::take(&mut rest)] {
        let statuses: Vec<StatusCode> = futures_util::stream::iter(phase)
            .map(|(method, path, body)| {
                let cluster = &cluster;
                let a = &a;
                async move { cluster.admin(a, method, &path, body).await.status() }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        assert!(
            statuses.iter().all(|s| s.is_success()),
            "{:?}",
            statuses
                .iter()
                .filter(|s| !s.is_success())
                .collect::<Vec<_>>()
        );
    }
    let (tenants, _) = cluster.truth().await;
    assert_eq!(tenants.len(), 300);
    cluster
        .assert_converged(&[&a, &b, &c], Duration::from_secs(60))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_catches_a_change_no_hint_announced() {
    let pg = shared_postgres().await;
    let db = tenant_database(pg, "silent").await;
    let mut cluster = Cluster::new().await;
    cluster.reconcile_secs = 1;
    let a = cluster.start("a").await;
    // The subscriber catches up once right after it subscribes: the write must come after
    // that, or that catch-up (not the reconcile) is what finds it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !a.log().contains("configuration bus connected") {
        assert!(std::time::Instant::now() < deadline, "{}", a.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Written straight into the control database: no hint is ever published.
    let spec = TenantSpec {
        id: TenantId::parse("silent").unwrap(),
        hosts: vec![TenantHost::parse("silent.example.org").unwrap()],
        database: db,
        provisioned: false,
        pool: PoolSettings::default(),
        state: TenantState::Active,
        isolation: Default::default(),
        incarnation: None,
        rate_limit: None,
    };
    cluster
        .control
        .write(&spec, WriteMode::Create)
        .await
        .unwrap();
    cluster
        .assert_converged(&[&a], Duration::from_secs(15))
        .await;
    assert!(a.log().contains("reconcile found changes"), "{}", a.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_writes_reach_a_running_instance() {
    let pg = shared_postgres().await;
    let db = tenant_database(pg, "cli").await;
    let cluster = Cluster::new().await;
    let a = cluster.start("a").await;
    let run = |args: &[&str]| {
        let out = cluster.command(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let secret_db = db.expose().replace("postgres@", "postgres:s3cret@");
    // Listen to the channel as any Redis client could.
    let redis = redis::Client::open(cluster.redis.url()).unwrap();
    let mut listener = redis.get_async_pubsub().await.unwrap();
    listener.subscribe("tenant-router:tenants").await.unwrap();
    let mut hints = listener.into_on_message();
    let (code, out, err) = run(&[
        "tenants",
        "add",
        "cli-t",
        "--host",
        "CLI.Example.org",
        "--database",
        &secret_db,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["hosts"], json!(["cli.example.org"]));
    assert!(
        !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );
    cluster
        .eventually(&a, "cli.example.org", "/api/notes", |s| {
            s == StatusCode::UNAUTHORIZED
        })
        .await;
    // The hint is four fields and no secret: what, which tenant, the version, and when it
    // was sent (for the propagation-lag histogram).
    let hint = tokio::time::timeout(Duration::from_secs(5), hints.next())
        .await
        .unwrap()
        .unwrap();
    let mut payload: Value = serde_json::from_slice(hint.get_payload_bytes()).unwrap();
    let sent = payload
        .as_object_mut()
        .unwrap()
        .remove("sent_at_ms")
        .and_then(|v| v.as_i64())
        .expect("a sent_at_ms");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now - 60_000..=now).contains(&sent), "{sent} vs {now}");
    let version = cluster.control.max_version().await.unwrap();
    assert_eq!(
        payload,
        json!({"op": "upsert", "tenant_id": "cli-t", "version": version})
    );

    let (code, _, err) = run(&[
        "tenants",
        "add",
        "other",
        "--host",
        "cli.example.org",
        "--database",
        db.expose(),
    ]);
    assert_eq!(code, Some(2), "a taken host is the user's mistake: {err}");
    assert!(err.contains("already belongs to tenant 'cli-t'"), "{err}");
    let (code, _, err) = run(&["tenants", "add", "Bad_Id", "--host", "x.example.org:80"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("id:") && err.contains("hosts[0]:"), "{err}");

    let (code, _, err) = run(&[
        "tenants",
        "update",
        "cli-t",
        "--state",
        "suspended",
        "--if-match",
        "999",
    ]);
    assert_eq!(code, Some(2), "a stale --if-match is refused: {err}");
    let (code, out, err) = run(&["tenants", "update", "cli-t", "--state", "suspended"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"suspended\""));
    cluster
        .eventually(&a, "cli.example.org", "/api/notes", |s| {
            s == StatusCode::SERVICE_UNAVAILABLE
        })
        .await;

    let (code, _, err) = run(&["tenants", "remove", "cli-t", "--drop-database"]);
    assert_eq!(
        code,
        Some(2),
        "a database given by hand is never dropped: {err}"
    );
    let (code, _, err) = run(&["tenants", "remove", "cli-t"]);
    assert_eq!(code, Some(0), "{err}");
    cluster
        .eventually(&a, "cli.example.org", "/api/notes", |s| {
            s == StatusCode::NOT_FOUND
        })
        .await;
    let (code, _, _) = run(&["tenants", "remove", "cli-t"]);
    assert_eq!(code, Some(2), "removing twice: not found");
    cluster.assert_converged(&[&a], CONVERGE).await;
    assert!(!a.log().contains("s3cret"), "{}", a.log());
}
