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

struct Site {
    host: String,
    db: DatabaseUrl,
    token: String,
    /// Where its notes are: `notes` of its own database, or its rows of the shared schema.
    notes: String,
}

async fn add_tenant(cluster: &Cluster, server: &Instance, id: &str) -> Site {
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

async fn submit(
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

async fn wait_for(
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
    let key = format!(
        "{}diag:runs",
        Keys::default().namespace(&TenantId::parse(tenant).unwrap())
    );
    redis::AsyncCommands::lrange(&mut conn, key, 0, -1)
        .await
        .unwrap()
}

fn queue(cluster: &Cluster) -> JobQueue {
    JobQueue::new(
        &cluster.redis.url(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_jobs_land_in_their_own_tenants_database() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let one = add_tenant(&cluster, &server, "jobs-one").await;
    // One dedicated tenant and one shared: the same jobs serve both.
    let two = add_shared_tenant(&cluster, &server, "jobs-two").await;

    let mut jobs = Vec::new();
    for n in 0..20 {
        for (site, name) in [(&one, "one"), (&two, "two")] {
            let r = cluster
                .client
                .post(server.url("/api/notes?async=true"))
                .header("Host", &site.host)
                .bearer_auth(&site.token)
                .json(&json!({"content": format!("{name} {n}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let id = r.json::<Value>().await.unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_string();
            jobs.push((site, id));
        }
    }
    let report = drain(&cluster).await;
    assert_eq!(
        (report.succeeded, report.retried, report.dead, report.parked),
        (40, 0, 0, 0),
        "{report}"
    );
    for (site, id) in &jobs {
        let s = status(&cluster, &server, site, id).await;
        assert_eq!(
            (&s["status"], &s["attempts"]),
            (&json!("succeeded"), &json!(1))
        );
        assert!(s["result"]["note_id"].is_i64(), "{s}");
    }
    for (site, mine, theirs) in [(&one, "one %", "two %"), (&two, "two %", "one %")] {
        let p = pool(&site.db).await;
        let (m, t): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE content LIKE $1), count(*) FILTER (WHERE content LIKE $2) FROM {}",
            site.notes
        )))
        .bind(mine)
        .bind(theirs)
        .fetch_one(&p)
        .await
        .unwrap();
        assert_eq!((m, t), (20, 0), "{}", site.host);
    }
    // A job of tenant one is not visible from tenant two, even with the id.
    let r = cluster
        .client
        .get(server.url(&format!("/api/jobs/{}", jobs[0].1)))
        .header("Host", &two.host)
        .bearer_auth(&two.token)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND).await;

    // The export writes the user's notes into the tenant's own directory.
    let id = submit(&cluster, &server, &one, "notes.export", json!({})).await;
    assert_eq!(drain(&cluster).await.succeeded, 1);
    let s = status(&cluster, &server, &one, &id).await;
    assert_eq!(s["status"], "succeeded", "{s}");
    assert_eq!(s["result"]["rows"], 20);
    let file = cluster
        .logs
        .path()
        .join("files/jobs-one")
        .join(s["result"]["file"].as_str().unwrap());
    let text = std::fs::read_to_string(file).unwrap();
    assert_eq!(text.lines().count(), 20);
    assert!(text.lines().all(|l| l.contains("\"one ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_4xx() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let site = add_tenant(&cluster, &server, "jobs-bad").await;
    let post = |body: Value, token: Option<&str>| {
        let mut req = cluster
            .client
            .post(server.url("/api/jobs"))
            .header("Host", &site.host)
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap() }
    };
    let body = problem(
        post(json!({"kind": "nope"}), Some(&site.token)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "kind");
    let body = problem(
        post(
            json!({"kind": "notes.create", "payload": {"content": 5}}),
            Some(&site.token),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "payload");
    problem(
        post(
            json!({"kind": "notes.create", "payload": {"content": "x"}, "tenant": "other"}),
            Some(&site.token),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        post(json!({"kind": "diag.noop"}), None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    for run_at in ["tomorrow", "2999-01-01T00:00:00Z"] {
        let body = problem(
            post(
                json!({"kind": "diag.noop", "run_at": run_at}),
                Some(&site.token),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "run_at");
    }
    let r = cluster
        .client
        .get(server.url("/api/jobs/00000000000000000000000000000000"))
        .header("Host", &site.host)
        .bearer_auth(&site.token)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND).await;
    let r = cluster
        .client
        .post(server.url("/api/notes?async=true"))
        .header("Host", &site.host)
        .bearer_auth(&site.token)
        .json(&json!({"content": "   "}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_success_and_dead_letters_after_the_last_attempt() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let site = add_tenant(&cluster, &server, "jobs-retry").await;

    let flaky = submit(
        &cluster,
        &server,
        &site,
        "diag.flaky",
        json!({"failures": 2}),
    )
    .await;
    // The drain's retries are due at once: both failures and the success in one drain.
    let report = drain(&cluster).await;
    assert_eq!((report.succeeded, report.retried), (1, 2), "{report}");
    let s = status(&cluster, &server, &site, &flaky).await;
    assert_eq!(s["status"], "succeeded", "{s}");
    assert_eq!(s["attempts"], 3, "{s}");
    assert_eq!(s["last_error"], "planned failure 2 of 2");

    // Scheduled: not run before its time.
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let r = cluster
        .client
        .post(server.url("/api/jobs"))
        .header("Host", &site.host)
        .bearer_auth(&site.token)
        .json(&json!({"kind": "diag.record", "run_at": at.to_rfc3339()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let later = r.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let report = drain(&cluster).await;
    assert_eq!((report.succeeded, report.delayed), (0, 1), "{report}");
    assert_eq!(
        status(&cluster, &server, &site, &later).await["status"],
        "queued"
    );
    // Once its time has come, a drain runs it.
    tokio::time::sleep((at - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    let report = drain(&cluster).await;
    assert_eq!((report.succeeded, report.delayed), (1, 0), "{report}");
    let s = status(&cluster, &server, &site, &later).await;
    assert_eq!(s["status"], "succeeded", "{s}");
    assert!(
        s["started_at"].as_i64().unwrap() >= at.timestamp_millis(),
        "{s}"
    );

    let doomed = submit(
        &cluster,
        &server,
        &site,
        "diag.fail",
        json!({"message": "always broken"}),
    )
    .await;
    let report = drain(&cluster).await;
    assert_eq!((report.dead, report.retried), (1, 2), "{report}");
    let s = status(&cluster, &server, &site, &doomed).await;
    assert_eq!(s["status"], "dead", "{s}");
    assert_eq!(s["attempts"], 3, "max attempts is 3 here: {s}");
    assert_eq!(s["last_error"], "always broken");
    let redis = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let dead: redis::streams::StreamRangeReply =
        redis::AsyncCommands::xrange_all(&mut conn, Keys::default().dead())
            .await
            .unwrap();
    let entry = dead
        .ids
        .iter()
        .find(|e| e.get::<String>("job_id").as_deref() == Some(doomed.as_str()))
        .expect("the dead job is in the dead-letter stream");
    assert_eq!(
        entry.get::<String>("error").as_deref(),
        Some("always broken")
    );
    assert_eq!(
        entry.get::<String>("tenant_id").as_deref(),
        Some("jobs-retry")
    );
    assert_eq!(
        count(&site.db, "SELECT count(*) FROM job_runs").await,
        2,
        "only the flaky and the scheduled jobs' effects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_removed_or_unknown_tenant_never_run() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let doomed = add_tenant(&cluster, &server, "jobs-doomed").await;
    let other = add_tenant(&cluster, &server, "jobs-other").await;
    // Queued while no worker runs, then the tenant is removed (its data, jobs included,
    // kept: the jobs wait for an adopt or a purge).
    let mut queued = Vec::new();
    for _ in 0..5 {
        queued.push(submit(&cluster, &server, &doomed, "diag.record", json!({})).await);
    }
    let r = cluster
        .admin(&server, Method::DELETE, "/admin/tenants/jobs-doomed", None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Another tenant's job runs between them (tenants take turns): the Celery failure mode
    // would reuse its context.
    let first = submit(&cluster, &server, &other, "diag.record", json!({})).await;
    // And a job naming a tenant that never existed.
    let ghost = queue(&cluster)
        .submit_raw(
            &TenantId::parse("ghost").unwrap(),
            None,
            "diag.record",
            json!({}),
            None,
            None,
        )
        .await
        .unwrap();

    let report = drain(&cluster).await;
    // The removed tenant's jobs wait (delayed again, for an adopt or a purge).
    assert_eq!(
        (
            report.succeeded,
            report.parked,
            report.waiting,
            report.delayed
        ),
        (1, 1, 5, 5),
        "{report}"
    );
    assert_eq!(report.dead, 0, "{report}");
    assert_eq!(
        status(&cluster, &server, &other, &first).await["status"],
        "succeeded"
    );
    let q = queue(&cluster);
    for (tenant, id) in queued
        .iter()
        .map(|id| ("jobs-doomed", id.clone()))
        .chain([("ghost", ghost)])
    {
        let s = q
            .status(&TenantId::parse(tenant).unwrap(), &id)
            .await
            .unwrap()
            .unwrap();
        let (want, why) = match tenant {
            "ghost" => ("parked", "unknown or was deleted"),
            _ => ("waiting", "removed with its data kept"),
        };
        assert_eq!(s.status, want, "{tenant}/{id}");
        assert_eq!(s.attempts, 0, "the job never started");
        assert!(s.last_error.unwrap().contains(why));
    }
    assert_eq!(count(&doomed.db, "SELECT count(*) FROM job_runs").await, 0);
    assert_eq!(
        count(&other.db, "SELECT count(*) FROM job_runs").await,
        1,
        "only its own job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_killed_worker_is_reclaimed_and_applied_once() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let site = add_tenant(&cluster, &server, "jobs-crash").await;
    let first = cluster.start_worker("first", &[]).await;
    let id = submit(&cluster, &server, &site, "diag.sleep", json!({"ms": 2500})).await;
    wait_for(
        &cluster,
        &server,
        &site,
        &id,
        "running",
        Duration::from_secs(20),
    )
    .await;
    // Mid-job: its transaction is open, its effect not committed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal(Signal::SIGKILL);
    let second = cluster.start_worker("second", &[]).await;
    let s = wait_for(
        &cluster,
        &server,
        &site,
        &id,
        "succeeded",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        s["result"]["worker"]
            .as_str()
            .map(|w| w.contains(&format!("-{}-", second.pid()))),
        Some(true),
        "finished by the second worker: {s}"
    );
    assert_eq!(count(&site.db, "SELECT count(*) FROM job_runs").await, 1);
    // Both workers started it; only the second finished it.
    let log = diag_runs(&cluster, "jobs-crash").await;
    assert_eq!(
        log.iter().filter(|l| l.starts_with("start")).count(),
        2,
        "{log:?}"
    );
    assert_eq!(
        log.iter().filter(|l| l.starts_with("end")).count(),
        1,
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_load_and_never_run_a_job_twice() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let site = add_tenant(&cluster, &server, "jobs-pair").await;
    let _a = cluster
        .start_worker("w-a", &[("TENANT_ROUTER_WORKER_TENANT_CONCURRENCY", "4")])
        .await;
    let _b = cluster
        .start_worker("w-b", &[("TENANT_ROUTER_WORKER_TENANT_CONCURRENCY", "4")])
        .await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(submit(&cluster, &server, &site, "diag.sleep", json!({"ms": 50})).await);
    }
    for id in &ids {
        wait_for(
            &cluster,
            &server,
            &site,
            id,
            "succeeded",
            Duration::from_secs(30),
        )
        .await;
    }
    let p = pool(&site.db).await;
    let by_worker: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT result->>'worker', count(*) FROM job_runs GROUP BY 1 ORDER BY 1")
            .fetch_all(&p)
            .await
            .unwrap();
    assert_eq!(by_worker.len(), 2, "both workers took jobs: {by_worker:?}");
    assert_eq!(by_worker.iter().map(|(_, n)| n).sum::<i64>(), 100);
    let log = diag_runs(&cluster, "jobs-pair").await;
    for id in &ids {
        let starts = log
            .iter()
            .filter(|l| l.starts_with(&format!("start {id} ")))
            .count();
        assert_eq!(starts, 1, "job {id} started {starts} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_backlog_does_not_starve_another() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let flood = add_tenant(&cluster, &server, "jobs-flood").await;
    let single = add_tenant(&cluster, &server, "jobs-single").await;
    let q = queue(&cluster);
    let flood_id = TenantId::parse("jobs-flood").unwrap();
    // 10,000 jobs queued for one tenant before any worker runs.
    for _ in 0..20 {
        let batch =
            (0..500).map(|_| q.submit_raw(&flood_id, None, "diag.record", json!({}), None, None));
        for r in futures_util::future::join_all(batch).await {
            r.unwrap();
        }
    }
    let _worker = cluster
        .start_worker(
            "worker",
            &[("TENANT_ROUTER_WORKER_TENANT_CONCURRENCY", "4")],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = submit(&cluster, &server, &single, "diag.record", json!({})).await;
    wait_for(
        &cluster,
        &server,
        &single,
        &id,
        "succeeded",
        Duration::from_secs(60),
    )
    .await;
    let drained = count(&flood.db, "SELECT count(*) FROM job_runs").await;
    assert!(
        drained < 5_000,
        "the single job waited for {drained} of the backlog"
    );
    assert!(drained > 0, "the backlog was being worked on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_loses_no_job() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let site = add_tenant(&cluster, &server, "jobs-term").await;
    let mut first = cluster
        .start_worker("first", &[("TENANT_ROUTER_WORKER_TENANT_CONCURRENCY", "4")])
        .await;
    let mut ids = Vec::new();
    for _ in 0..80 {
        ids.push(submit(&cluster, &server, &site, "diag.sleep", json!({"ms": 40})).await);
    }
    // Let it get going, then ask it to stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&site.db, "SELECT count(*) FROM job_runs").await < 8 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal(Signal::SIGTERM);
    let exit = first.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.success(), "{exit}:\n{}", first.log());
    assert!(first.log().contains("worker stopped"), "{}", first.log());
    let done_by_first = count(&site.db, "SELECT count(*) FROM job_runs").await;
    assert!(done_by_first < 80, "stopped before the end of the load");

    let _second = cluster.start_worker("second", &[]).await;
    for id in &ids {
        wait_for(
            &cluster,
            &server,
            &site,
            id,
            "succeeded",
            Duration::from_secs(30),
        )
        .await;
    }
    assert_eq!(count(&site.db, "SELECT count(*) FROM job_runs").await, 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_shared_tenants_jobs_on_citus() {
    let Some(control) = crate::harness::citus_database("jobs").await else {
        return;
    };
    let cluster = Cluster::new_on(control).await;
    let server = cluster.start("server").await;
    let one = add_shared_tenant(&cluster, &server, "cjobs-one").await;
    let two = add_shared_tenant(&cluster, &server, "cjobs-two").await;
    let _worker = cluster.start_worker("worker", &[]).await;
    let mut jobs = Vec::new();
    for n in 0..10 {
        for (site, name) in [(&one, "one"), (&two, "two")] {
            let id = submit(
                &cluster,
                &server,
                site,
                "notes.create",
                json!({"content": format!("{name} {n}")}),
            )
            .await;
            jobs.push((site, id));
        }
    }
    for (site, id) in &jobs {
        let s = wait_for(
            &cluster,
            &server,
            site,
            id,
            "succeeded",
            Duration::from_secs(30),
        )
        .await;
        assert!(s["result"]["note_id"].is_i64(), "{s}");
    }
    for (site, tenant, mine, theirs) in [
        (&one, "cjobs-one", "one %", "two %"),
        (&two, "cjobs-two", "two %", "one %"),
    ] {
        let p = pool(&site.db).await;
        let (m, t): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE content LIKE $1), count(*) FILTER (WHERE content LIKE $2) FROM {}",
            site.notes
        )))
        .bind(mine)
        .bind(theirs)
        .fetch_one(&p)
        .await
        .unwrap();
        assert_eq!((m, t), (10, 0), "{}", site.host);
        // The ledger is the distributed job_runs, on the worker holding the tenant's shard.
        let (_, runs) =
            crate::citus::rows_on_worker(&cluster.control_url, "job_runs", tenant).await;
        assert_eq!(runs, 10, "{tenant}");
        let (_, notes) = crate::citus::rows_on_worker(&cluster.control_url, "notes", tenant).await;
        assert_eq!(notes, 10, "{tenant}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_limits_hold_per_tenant_and_the_dead_letters_are_capped() {
    let mut cluster = Cluster::new().await;
    cluster.env = vec![
        ("TENANT_ROUTER_JOB_MAX_QUEUED_PER_TENANT".into(), "5".into()),
        ("TENANT_ROUTER_JOB_DEAD_MAX_LEN".into(), "100".into()),
    ];
    let server = cluster.start("server").await;
    let full = add_tenant(&cluster, &server, "jobs-full").await;
    let other = add_tenant(&cluster, &server, "jobs-roomy").await;
    let post = |site: &Site, body: Value| {
        cluster
            .client
            .post(server.url("/api/jobs"))
            .header("Host", &site.host)
            .bearer_auth(&site.token)
            .json(&body)
            .send()
    };
    // A payload its kind will refuse to run is refused now, naming the field.
    let r = post(
        &full,
        json!({"kind": "notes.create", "payload": {"content": "x".repeat(20_000)}}),
    )
    .await
    .unwrap();
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "payload.content", "{body}");
    // Three queued and two delayed fill the tenant's five; the sixth is a 429.
    for _ in 0..3 {
        submit(&cluster, &server, &full, "diag.record", json!({})).await;
    }
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    for _ in 0..2 {
        let r = post(
            &full,
            json!({"kind": "diag.record", "payload": {}, "run_at": later}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let r = post(&full, json!({"kind": "diag.record", "payload": {}}))
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "5");
    problem(r, StatusCode::TOO_MANY_REQUESTS).await;
    // Another tenant is not affected.
    submit(&cluster, &server, &other, "diag.record", json!({})).await;

    // Once the queued ones ran, there is room again; their statuses keep a TTL.
    let _worker = cluster.start_worker("worker", &[]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(&full, json!({"kind": "diag.record", "payload": {}}))
            .await
            .unwrap();
        if r.status() == StatusCode::ACCEPTED {
            break;
        }
        assert!(Instant::now() < deadline, "no room after the jobs ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let statuses: Vec<String> = redis::cmd("KEYS")
        .arg("tr:t:jobs-full:job:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!statuses.is_empty());
    for key in statuses {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }

    // 400 jobs of a tenant that does not exist are parked; the parked stream stays near its
    // cap of 100 (trimmed in whole nodes, `MAXLEN ~`).
    let q = queue(&cluster);
    let ghost = TenantId::parse("ghost-flood").unwrap();
    for _ in 0..400 {
        // Redis may be slow to answer while the whole suite runs: a client retries.
        let mut tries = 0;
        while let Err(e) = q
            .submit_raw(&ghost, None, "diag.record", json!({}), None, None)
            .await
        {
            tries += 1;
            assert!(
                tries < 5 && matches!(e, tenant_router::jobs::QueueError::Unavailable(_)),
                "{e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: u64 = redis::cmd("XLEN")
            .arg(Keys::default().stream(&ghost))
            .query_async(&mut conn)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} ghost jobs still queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let parked: u64 = redis::cmd("XLEN")
        .arg("tr:jobs:parked")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(parked < 300, "the parked stream holds {parked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_parked_jobs_are_listed_retried_and_purged() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let site = add_tenant(&cluster, &server, "jobs-letters").await;
    let mut worker = cluster.start_worker("worker", &[]).await;
    // One dead: it fails every attempt.
    let dead = submit(
        &cluster,
        &server,
        &site,
        "diag.fail",
        json!({"message": "boom"}),
    )
    .await;
    wait_for(
        &cluster,
        &server,
        &site,
        &dead,
        "dead",
        Duration::from_secs(20),
    )
    .await;
    // Two parked: submitted while the tenant is suspended.
    let suspend = |state: &'static str| {
        cluster.admin(
            &server,
            Method::PATCH,
            "/admin/tenants/jobs-letters",
            Some(json!({ "state": state })),
        )
    };
    let parked: Vec<String> = {
        let q = queue(&cluster);
        let tenant = cluster
            .control
            .get_tenant(&TenantId::parse("jobs-letters").unwrap())
            .await
            .unwrap()
            .unwrap();
        // A worker learns of the suspension a moment after it is committed; one that
        // starts after it knows it from the start (otherwise the test races the bus).
        worker.signal(Signal::SIGTERM);
        worker.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(suspend("suspended").await.status(), StatusCode::OK);
        let mut ids = Vec::new();
        for _ in 0..2 {
            ids.push(
                q.submit(&tenant, "diag.record", json!({}), None, None)
                    .await
                    .unwrap(),
            );
        }
        ids
    };
    let _worker = cluster.start_worker("worker-2", &[]).await;
    for id in &parked {
        let deadline = Instant::now() + Duration::from_secs(20);
        while queue(&cluster)
            .status(&TenantId::parse("jobs-letters").unwrap(), id)
            .await
            .unwrap()
            .is_none_or(|s| s.status != "parked")
        {
            assert!(Instant::now() < deadline, "{id} was not parked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(suspend("active").await.status(), StatusCode::OK);

    let list = |path: String| {
        let cluster = &cluster;
        let server = &server;
        async move {
            let r = cluster.admin(server, Method::GET, &path, None).await;
            let status = r.status();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = list("/admin/jobs/dead?tenant=jobs-letters".into()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{body}");
    assert_eq!(jobs[0]["job_id"], dead.as_str());
    assert_eq!(jobs[0]["kind"], "diag.fail");
    assert_eq!(jobs[0]["error"], "boom");
    assert_eq!(jobs[0]["attempts"], 3);
    // Paged: one at a time.
    let (_, first) = list("/admin/jobs/parked?tenant=jobs-letters&limit=1".into()).await;
    assert_eq!(first["jobs"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let (_, second) = list(format!(
        "/admin/jobs/parked?tenant=jobs-letters&limit=1&cursor={cursor}"
    ))
    .await;
    assert_ne!(first["jobs"][0]["job_id"], second["jobs"][0]["job_id"]);

    // Five retries of the dead job at once queue it once.
    let retry_path = format!("/admin/jobs/dead/{dead}/retry");
    let retries = futures_util::future::join_all(
        (0..5).map(|_| cluster.admin(&server, Method::POST, &retry_path, None)),
    )
    .await;
    let statuses: Vec<StatusCode> = retries.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    wait_for(
        &cluster,
        &server,
        &site,
        &dead,
        "dead",
        Duration::from_secs(20),
    )
    .await;
    let (_, body) = list("/admin/jobs/dead?tenant=jobs-letters".into()).await;
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1, "{body}");
    // A parked job retried, now that its tenant is active, runs.
    let r = cluster
        .admin(
            &server,
            Method::POST,
            &format!("/admin/jobs/parked/{}/retry", parked[0]),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue(&cluster)
        .status(&TenantId::parse("jobs-letters").unwrap(), &parked[0])
        .await
        .unwrap()
        .is_none_or(|s| s.status != "succeeded")
    {
        assert!(Instant::now() < deadline, "the retried job did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The CLI sees the one left.
    let out = cluster
        .command(&["jobs", "parked", "list", "--tenant", "jobs-letters"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(&parked[1]));
    // Purged: one by id, the rest by tenant.
    let r = cluster
        .admin(
            &server,
            Method::DELETE,
            &format!("/admin/jobs/dead/{dead}"),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = cluster
        .admin(
            &server,
            Method::DELETE,
            "/admin/jobs/parked?tenant=jobs-letters",
            None,
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], 1);
    let (_, body) = list("/admin/jobs/dead?tenant=jobs-letters".into()).await;
    assert_eq!(body["jobs"], json!([]));
    // Mistakes are 4xx.
    for (path, want) in [
        ("/admin/jobs/bogus", StatusCode::NOT_FOUND),
        ("/admin/jobs/dead?limit=0", StatusCode::UNPROCESSABLE_ENTITY),
        (
            "/admin/jobs/dead?cursor=nope",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/admin/jobs/dead?cursor=-",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/admin/jobs/dead?cursor=1-",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/admin/jobs/dead?cursor=99999999999999999999999-0",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/admin/jobs/dead?tenant=Bad_Id",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, body) = list(path.into()).await;
        assert_eq!(status, want, "{path}: {body}");
    }
    let r = cluster
        .admin(&server, Method::POST, "/admin/jobs/dead/nope/retry", None)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_in_a_live_worker_is_never_reclaimed() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let mut sites = Vec::new();
    for id in ["jobs-wait-a", "jobs-wait-b", "jobs-wait-c"] {
        sites.push(add_tenant(&cluster, &server, id).await);
    }
    let mut ids = Vec::new();
    for site in &sites {
        ids.push(submit(&cluster, &server, site, "diag.sleep", json!({"ms": 2500})).await);
    }
    // One slot: it reads a job of each tenant at once and runs them one after another, so
    // two of them wait longer than the visibility timeout (1.5 s) for their turn.
    let _slow = cluster
        .start_worker(
            "slow",
            &[
                ("TENANT_ROUTER_WORKER_CONCURRENCY", "1"),
                ("TENANT_ROUTER_WORKER_TENANT_CONCURRENCY", "1"),
            ],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A second worker reclaims whatever has been idle for 0.8 s: sooner than the slow
    // worker would reclaim its own waiting jobs (1.5 s), later than it touches them (0.5 s).
    let _other = cluster
        .start_worker(
            "other",
            &[("TENANT_ROUTER_JOB_VISIBILITY_TIMEOUT_MS", "800")],
        )
        .await;
    for (site, id) in sites.iter().zip(&ids) {
        let s = wait_for(
            &cluster,
            &server,
            site,
            id,
            "succeeded",
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(s["attempts"], 1, "{id} started more than once: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_without_jobs_leave_the_set_the_workers_walk() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let site = add_tenant(&cluster, &server, "jobs-idle").await;
    let _worker = cluster.start_worker("worker", &[]).await;
    let id = submit(&cluster, &server, &site, "diag.record", json!({})).await;
    wait_for(
        &cluster,
        &server,
        &site,
        &id,
        "succeeded",
        Duration::from_secs(20),
    )
    .await;
    let client = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let member: bool = redis::cmd("SISMEMBER")
            .arg(Keys::default().tenants())
            .arg("jobs-idle")
            .query_async(&mut conn)
            .await
            .unwrap();
        if !member {
            break;
        }
        assert!(Instant::now() < deadline, "an idle tenant stays in the set");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And its next job still runs.
    let id = submit(&cluster, &server, &site, "diag.record", json!({})).await;
    wait_for(
        &cluster,
        &server,
        &site,
        &id,
        "succeeded",
        Duration::from_secs(20),
    )
    .await;
}

/// Entry ids are per stream: two tenants' jobs often have the same one (submitted in the
/// same millisecond). The worker once took the second for a copy of the first and left it
/// pending until a reclaim, a visibility timeout later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_two_tenants_with_the_same_entry_id_both_run_at_once() {
    let cluster = Cluster::new().await;
    let server = cluster.start("server").await;
    let a = add_tenant(&cluster, &server, "jobs-same-id-a").await;
    let b = add_tenant(&cluster, &server, "jobs-same-id-b").await;
    let ids = [
        submit(&cluster, &server, &a, "diag.sleep", json!({"ms": 500})).await,
        submit(&cluster, &server, &b, "diag.sleep", json!({"ms": 500})).await,
    ];
    // Give both entries the same id, as the same millisecond would.
    let client = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = Keys::default();
    let mut entries = Vec::new();
    for tenant in ["jobs-same-id-a", "jobs-same-id-b"] {
        let stream = keys.stream(&TenantId::parse(tenant).unwrap());
        let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(range.ids.len(), 1);
        let job: String = range.ids[0].get("job").unwrap();
        let _: () = redis::cmd("XDEL")
            .arg(&stream)
            .arg(&range.ids[0].id)
            .query_async(&mut conn)
            .await
            .unwrap();
        entries.push((stream, job));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let id = format!("{}-0", now + 60_000);
    for (stream, job) in &entries {
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg(&id)
            .arg("job")
            .arg(job)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // Reclaims come only after a minute: both must run without one.
    let _worker = cluster
        .start_worker(
            "worker",
            &[("TENANT_ROUTER_JOB_VISIBILITY_TIMEOUT_MS", "60000")],
        )
        .await;
    for (site, job_id) in [(&a, &ids[0]), (&b, &ids[1])] {
        let s = wait_for(
            &cluster,
            &server,
            site,
            job_id,
            "succeeded",
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(s["attempts"], 1, "{s}");
    }
}
