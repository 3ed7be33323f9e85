//! Imports, wildcard hosts, killed creates and removals, a restored control database.

use super::*;

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

/// A removal with everything of it, run where no Redis is configured, cannot delete the
/// tenant's Redis keys, and says so instead of answering "purged".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_without_redis_does_not_claim_the_keys_are_gone() {
    let cluster = Cluster::new().await;
    let id = uid("noredis");
    let host = format!("{id}.example.org");
    let out = cli(&cluster, &["tenants", "add", &id, "--host", &host]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster
        .command(&["tenants", "remove", &id, "--drop-database"])
        .env_remove("TENANT_ROUTER_REDIS_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let removal: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(removal["database_dropped"], true, "{removal}");
    assert_eq!(removal["purged"], false, "{removal}");
    assert!(stderr.contains("Redis keys"), "{stderr}");
}
