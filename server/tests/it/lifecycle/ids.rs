//! An id removed and created again, and databases that are somebody else's.

use super::*;

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
