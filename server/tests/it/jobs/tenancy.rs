//! Each job runs in its own tenant's context, and bad submissions are refused.

use super::*;

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
