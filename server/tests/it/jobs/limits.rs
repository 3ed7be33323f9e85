//! Fairness and limits: backlogs, per-tenant caps, dead and parked letters, the tenant set.

use super::*;

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
