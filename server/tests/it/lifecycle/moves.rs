//! Moves: two at once, killed half-way, out of a database the router made.

use super::*;

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
    let migrate = tenant_router::provision::migrate_tenant_with(
        &url,
        &tenant_router_server::schema::TENANT_MIGRATOR,
    )
    .await;
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
