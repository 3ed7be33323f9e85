//! At least once: retries, dead letters, killed and stopped workers, reclaim, two workers.

use super::*;

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
