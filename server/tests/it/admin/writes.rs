//! Tenant writes over the admin API: provisioning, two creations at once, a failure half-way,
//! bad input, and the token.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tenant_router::provision;

use crate::harness::{TestApp, problem, shared_postgres, tenant_database};

async fn database_exists(name: &str) -> bool {
    let pg = shared_postgres().await;
    provision::database_exists(&pg.url("postgres"), name)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tenant_without_a_database_is_provisioned_served_and_dropped() {
    let app = TestApp::spawn(vec![]).await;
    let id = format!("prov-{}", std::process::id());
    let r = app
        .admin_send(
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": id, "hosts": ["Prov.Example.ORG"]})),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(r.headers()["location"], format!("/admin/tenants/{id}"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["hosts"], json!(["prov.example.org"]));
    assert_eq!(body["state"], "active");
    let name = format!("tenant_{}", id.replace('-', "_"));
    assert!(database_exists(&name).await);
    // Migrated and served at once by the instance that made it.
    let token = app.user_token("prov.example.org", "first").await;
    app.create_note("prov.example.org", &token, "in a fresh database")
        .await;

    // The same id again, or the same host under another id: 409, nothing created.
    let again = app
        .admin_send(
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": id, "hosts": ["elsewhere.example.org"]})),
        )
        .await;
    problem(again, StatusCode::CONFLICT).await;
    let clash = app
        .admin_send(
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": "clash", "hosts": ["PROV.example.org."]})),
        )
        .await;
    let body = problem(clash, StatusCode::CONFLICT).await;
    assert!(body["detail"].as_str().unwrap().contains("already belongs"));
    assert!(!database_exists("tenant_clash").await);

    let r = app
        .admin_send(
            Method::DELETE,
            &format!("/admin/tenants/{id}?drop_database=true"),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["database_dropped"], true);
    assert!(!database_exists(&name).await);
    problem(
        app.get("prov.example.org", "/api/notes", Some(&token))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.admin_send(Method::DELETE, &format!("/admin/tenants/{id}"), None)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_provision_once_per_id() {
    let app = TestApp::spawn(vec![]).await;
    let pid = std::process::id();
    // Ten creations at once: five ids, each asked for twice.
    let requests = (0..10).map(|n| {
        let id = format!("race-{pid}-{}", n % 5);
        app.admin_send(
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": id, "hosts": [format!("{id}.example.org")]})),
        )
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let conflicts = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, conflicts), (5, 5), "{statuses:?}");
    for n in 0..5 {
        let id = format!("race-{pid}-{n}");
        assert!(database_exists(&format!("tenant_{}", id.replace('-', "_"))).await);
        // The winner's database survived the loser: it serves.
        app.user_token(&format!("{id}.example.org"), "racer").await;
    }
}

#[tokio::test]
async fn provisioning_that_fails_halfway_leaves_nothing_and_a_retry_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    // The built-in migrations, then one that fails.
    let builtin = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/tenant");
    for entry in std::fs::read_dir(builtin).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let broken = dir.path().join("0099_broken.sql");
    std::fs::write(&broken, "ALTER TABLE no_such_table ADD COLUMN x int;\n").unwrap();
    let migrations = dir.path().to_path_buf();
    let app = TestApp::spawn_with(vec![], |s| {
        s.tenant_migrations = provision::TenantMigrations::Dir(migrations);
    })
    .await;
    let id = format!("half-{}", std::process::id());
    let name = format!("tenant_{}", id.replace('-', "_"));
    let create = || {
        app.admin_send(
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": id, "hosts": [format!("{id}.example.org")]})),
        )
    };

    let body = problem(create().await, StatusCode::INTERNAL_SERVER_ERROR).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("provisioning failed") && detail.contains("no_such_table"),
        "{detail}"
    );
    assert!(
        !database_exists(&name).await,
        "the half-made database stays"
    );
    problem(
        app.admin_get(&format!("/admin/tenants/{id}"), None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(app.control.max_version().await.unwrap(), 0);

    // Fixed on disk, picked up without a restart.
    std::fs::write(
        &broken,
        "ALTER TABLE notes ADD COLUMN pinned boolean NOT NULL DEFAULT false;\n",
    )
    .unwrap();
    let r = create().await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    assert!(database_exists(&name).await);
    let token = app.user_token(&format!("{id}.example.org"), "retry").await;
    app.create_note(&format!("{id}.example.org"), &token, "after the retry")
        .await;
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_the_problem() {
    let pg = shared_postgres().await;
    let db = tenant_database(pg, "valid").await;
    let app = TestApp::spawn(vec![]).await;
    let post = |body: Value| app.admin_send(Method::POST, "/admin/tenants", Some(body));

    let fields = |body: &Value| -> Vec<String> {
        body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["field"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // Upper case is not folded into another tenant's id: refused.
    let body = problem(
        post(json!({"id": "Acme", "hosts": ["a.example.org"], "database": db.expose()})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields(&body), ["id"]);
    // SQL metacharacters never reach SQL.
    for id in ["x'; DROP TABLE tenants; --", "a\"b", "a_b", "a b", "-a", ""] {
        let body = problem(
            post(json!({"id": id, "hosts": ["m.example.org"]})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(fields(&body), ["id"], "{id}");
    }
    // A port, a path, an empty list; everything wrong at once is named at once.
    let body = problem(
        post(json!({"id": "ok", "hosts": ["a.example.org:8080", "b.example.org/x"], "state": "paused", "pool": {"max_connections": 0}})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields(&body), ["hosts[0]", "hosts[1]", "pool", "state"]);
    problem(
        post(json!({"id": "ok", "hosts": []})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        post(json!({"id": "ok", "hosts": ["a.example.org"], "databse": "x"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        post(json!({"id": "ok", "hosts": "a.example.org"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let broken = app
        .client
        .post(format!("http://{}/admin/tenants", app.admin_addr))
        .bearer_auth(&app.admin_token)
        .header("content-type", "application/json")
        .body("{\"id\": ")
        .send()
        .await
        .unwrap();
    problem(broken, StatusCode::BAD_REQUEST).await;

    // Hosts in upper case or with a trailing dot are the same host: a second claim is 409.
    let r =
        post(json!({"id": "acme", "hosts": ["ACME.Example.org."], "database": db.expose()})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    problem(
        post(json!({"id": "acme-2", "hosts": ["acme.example.org"], "database": db.expose()})).await,
        StatusCode::CONFLICT,
    )
    .await;
    problem(
        post(json!({"id": "acme", "hosts": ["z.example.org"], "database": db.expose()})).await,
        StatusCode::CONFLICT,
    )
    .await;

    // PATCH: If-Match stale is 412, garbage is 400, an unknown tenant 404, bad fields 422.
    let patch = |path: &str, if_match: Option<&str>, body: Value| {
        let mut req = app
            .client
            .patch(format!("http://{}{path}", app.admin_addr))
            .bearer_auth(&app.admin_token)
            .json(&body);
        if let Some(v) = if_match {
            req = req.header("If-Match", v);
        }
        async move { req.send().await.unwrap() }
    };
    problem(
        patch(
            "/admin/tenants/acme",
            Some("\"999\""),
            json!({"state": "suspended"}),
        )
        .await,
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    problem(
        patch(
            "/admin/tenants/acme",
            Some("soon"),
            json!({"state": "suspended"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        patch("/admin/tenants/nobody", None, json!({"state": "suspended"})).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        patch("/admin/tenants/acme", None, json!({"hosts": ["x:1"]})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        patch(
            "/admin/tenants/acme",
            None,
            json!({"database": "redis://x"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let r = patch(
        "/admin/tenants/acme",
        Some(&etag),
        json!({"state": "suspended"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let next = r.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(next, etag);
    // The old ETag is stale now.
    problem(
        patch(
            "/admin/tenants/acme",
            Some(&etag),
            json!({"state": "active"}),
        )
        .await,
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    problem(
        app.get("acme.example.org", "/api/notes", None).await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;

    // A database given by hand is never dropped; removing an unknown tenant is 404.
    problem(
        app.admin_send(
            Method::DELETE,
            "/admin/tenants/acme?drop_database=true",
            None,
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    problem(
        app.admin_send(
            Method::DELETE,
            "/admin/tenants/acme?drop_database=maybe",
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.admin_send(Method::DELETE, "/admin/tenants/Not%20An%20Id", None)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(
        app.admin_send(Method::DELETE, "/admin/tenants/acme", None)
            .await
            .status(),
        StatusCode::OK
    );
    assert!(
        provision::database_exists(&pg.url("postgres"), &db.database_name().unwrap())
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn writes_need_the_token_too() {
    let app = TestApp::spawn(vec![]).await;
    for token in ["", "tra_wrong"] {
        for (method, path) in [
            (Method::POST, "/admin/tenants"),
            (Method::PATCH, "/admin/tenants/x"),
            (Method::DELETE, "/admin/tenants/x"),
        ] {
            let mut req = app
                .client
                .request(method, format!("http://{}{path}", app.admin_addr))
                .json(&json!({"id": "x", "hosts": ["x.example.org"]}));
            if !token.is_empty() {
                req = req.bearer_auth(token);
            }
            problem(req.send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
        }
    }
    assert_eq!(
        app.control.max_version().await.unwrap(),
        0,
        "nothing was written"
    );
    assert!(!database_exists("tenant_x").await);
}

/// `If-Match` on a removal and a move: an admin acting on a stale view (the tenant was
/// removed and created again under the same id since) removes or moves nothing.
#[tokio::test]
async fn a_removal_or_move_with_a_stale_version_changes_nothing() {
    let app = TestApp::spawn(vec![]).await;
    let pg = shared_postgres().await;
    let create = |db: String| {
        let app = &app;
        async move {
            let r = app
                .admin_send(
                    Method::POST,
                    "/admin/tenants",
                    Some(json!({"id": "racey", "hosts": ["racey.example.org"], "database": db})),
                )
                .await;
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.unwrap()["version"]
                .as_i64()
                .unwrap()
        }
    };
    let seen = create(tenant_database(pg, "racey").await.expose().to_string()).await;
    let send = |method: Method, path: &'static str, version: i64, body: Option<Value>| {
        let app = &app;
        async move {
            let mut req = app
                .client
                .request(method, format!("http://{}{path}", app.admin_addr))
                .bearer_auth(&app.admin_token)
                .header("If-Match", format!("\"{version}\""));
            if let Some(body) = body {
                req = req.json(&body);
            }
            req.send().await.unwrap()
        }
    };
    // Removed and created again behind the admin's back.
    let r = app
        .admin_send(Method::DELETE, "/admin/tenants/racey", None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .admin_send(Method::DELETE, "/admin/leftovers/racey", None)
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let now = create(tenant_database(pg, "racey").await.expose().to_string()).await;
    assert_ne!(seen, now);

    let r = send(
        Method::DELETE,
        "/admin/tenants/racey?drop_database=true",
        seen,
        None,
    )
    .await;
    problem(r, StatusCode::PRECONDITION_FAILED).await;
    let r = send(
        Method::POST,
        "/admin/tenants/racey/move",
        seen,
        Some(json!({"to": "shared"})),
    )
    .await;
    problem(r, StatusCode::PRECONDITION_FAILED).await;
    let t: Value = app
        .admin_get("/admin/tenants/racey", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(t["version"], now, "{t}");
    assert_eq!(t["isolation"], "dedicated");

    // The version the admin sees now is honoured.
    let r = send(Method::DELETE, "/admin/tenants/racey", now, None).await;
    assert_eq!(r.status(), StatusCode::OK);
}
