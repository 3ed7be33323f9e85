//! What operators see: the access log (one `info` line per request, naming method, route,
//! status, latency and tenant), JSON logs, the tenant on every warning inside a request or a
//! job, and the histograms on `/metrics` (the server's and the worker's).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection as _;
use tenant_router::testing::free_port;

use crate::cluster::Cluster;
use crate::jobs::{add_tenant, submit, wait_for};

fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_tenant_of_every_request_line_and_warning() {
    let mut cluster = Cluster::new().await;
    cluster
        .env
        .push(("TENANT_ROUTER_LOG_FORMAT".into(), "json".into()));
    let server = cluster.start("obs").await;
    let site = add_tenant(&cluster, &server, "obs-a").await;
    // A tenant whose database goes away: its requests fail with a logged warning.
    let gone = add_tenant(&cluster, &server, "obs-gone").await;
    let mut admin_conn = sqlx::PgConnection::connect(
        crate::harness::shared_postgres()
            .await
            .url("postgres")
            .expose(),
    )
    .await
    .unwrap();
    let name = gone.db.database_name().unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin_conn)
    .await
    .unwrap();
    let r = cluster
        .client
        .get(server.url("/api/notes"))
        .header("Host", &site.host)
        .bearer_auth(&site.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = cluster
        .client
        .post(server.url("/api/login"))
        .header("Host", &gone.host)
        .json(&json!({"email": "u@example.com", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

    let lines = json_lines(&server.log());
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "tenant_router::access")
        .collect();
    let notes = access
        .iter()
        .find(|l| l["span"]["tenant.id"] == "obs-a" && l["span"]["route"] == "/api/notes")
        .unwrap_or_else(|| panic!("no access line for obs-a's notes in {access:#?}"));
    assert_eq!(notes["level"], "INFO");
    assert_eq!(notes["span"]["method"], "GET");
    assert_eq!(notes["status"], 200);
    assert!(
        notes["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{notes}"
    );
    // The admin's calls are logged too, without a tenant.
    assert!(
        access
            .iter()
            .any(|l| l["span"]["route"] == "/admin/tenants" && l["status"] == 201),
        "{access:#?}"
    );
    // The warning logged deep inside the failing request names its tenant.
    let warnings: Vec<&Value> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" || l["level"] == "ERROR")
        .filter(|l| l["target"] != "tenant_router::access")
        .collect();
    assert!(
        warnings
            .iter()
            .any(|l| l["span"]["tenant.id"] == "obs-gone"),
        "no warning names obs-gone: {warnings:#?}"
    );

    // Inside a job: the worker's warning about a dead job names the tenant and the job.
    let mut worker = cluster.start_worker("obs-worker", &[]).await;
    let id = submit(
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
        &id,
        "dead",
        Duration::from_secs(30),
    )
    .await;
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    worker.wait_exit(Duration::from_secs(20)).await;
    let dead = json_lines(&worker.log())
        .into_iter()
        .find(|l| l["message"] == "job dead")
        .unwrap_or_else(|| panic!("no 'job dead' line:\n{}", worker.log()));
    assert_eq!(dead["level"], "WARN");
    assert_eq!(dead["span"]["tenant.id"], "obs-a", "{dead}");
    assert_eq!(dead["span"]["job.id"], id.as_str(), "{dead}");
}

#[test]
fn an_unknown_log_format_is_refused_by_name() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-router"))
        .args(["tenants", "list"])
        .env("TENANT_ROUTER_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TENANT_ROUTER_LOG_FORMAT"), "{err}");
}

async fn scrape(cluster: &Cluster, url: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut req = cluster.client.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

/// The `_count` of a histogram series whose labels contain all of `labels`.
fn count(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}_count")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_has_histograms_of_requests_pools_jobs_and_propagation() {
    let cluster = Cluster::new().await;
    let server = cluster.start("metrics").await;
    let site = add_tenant(&cluster, &server, "met-a").await;
    for _ in 0..3 {
        let r = cluster
            .client
            .get(server.url("/api/notes"))
            .header("Host", &site.host)
            .bearer_auth(&site.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let (status, text) = scrape(
        &cluster,
        &server.admin_url("/metrics"),
        Some(&cluster.token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let requests = "tenant_router_http_request_duration_seconds";
    assert!(
        count(&text, requests, &["route=\"/api/notes\"", "status=\"2xx\""]) >= 3,
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{requests}_bucket{{route=\"/api/notes\",status=\"2xx\",le=\"0.005\"}}"
        )),
        "buckets, not a summary: {text}"
    );
    assert!(
        count(
            &text,
            "tenant_router_pool_acquire_wait_seconds",
            &["outcome=\"ok\""]
        ) >= 3
    );
    // The instance heard its own hint of the create on the bus.
    assert!(
        count(&text, "tenant_router_propagation_lag_seconds", &[]) >= 1,
        "{text}"
    );
    // No histogram has a tenant label.
    assert!(
        !text
            .lines()
            .any(|l| l.contains("_seconds") && l.contains("met-a")),
        "{text}"
    );
    // Still behind the token.
    let (status, _) = scrape(&cluster, &server.admin_url("/metrics"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The worker's own listener: job run time and queue wait.
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let _worker = cluster
        .start_worker(
            "met-worker",
            &[("TENANT_ROUTER_WORKER_METRICS_LISTEN", listen.as_str())],
        )
        .await;
    let id = submit(&cluster, &server, &site, "diag.noop", json!({})).await;
    wait_for(
        &cluster,
        &server,
        &site,
        &id,
        "succeeded",
        Duration::from_secs(30),
    )
    .await;
    let url = format!("http://{listen}/metrics");
    let (status, _) = scrape(&cluster, &url, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = scrape(&cluster, &url, Some("not-the-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A flood of wrong tokens from one address is rationed (429) and does not keep the
    // scrape, from another, out.
    let mut limited = 0;
    for i in 0..15 {
        let (status, _) = scrape(&cluster, &url, Some(&format!("wrong-{i}"))).await;
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(&status),
            "{status}"
        );
        limited += usize::from(status == StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(
        limited >= 1,
        "15 wrong tokens from one address were never rationed"
    );
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let r = other
        .get(&url)
        .bearer_auth(&cluster.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = scrape(&cluster, &url, Some(&cluster.token)).await;
        assert_eq!(status, StatusCode::OK);
        let runs = count(
            &text,
            "tenant_router_job_run_seconds",
            &["kind=\"diag.noop\"", "outcome=\"succeeded\""],
        );
        if runs >= 1 {
            assert!(
                count(&text, "tenant_router_job_queue_wait_seconds", &[]) >= 1,
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no job run recorded: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
