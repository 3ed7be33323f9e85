//! A removed tenant's jobs, keys and files.

use super::*;

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
    let queue = JobQueue::new(cluster.redis.url(), Keys::default(), reference::kinds()).unwrap();
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
