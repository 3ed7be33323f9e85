//! The admin API: authentication, tenant listing without secrets, the registry view.

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{TestApp, problem, shared_postgres, spec, tenant_database};

#[tokio::test]
async fn every_admin_call_needs_the_token() {
    let app = TestApp::with_demo_tenants().await;
    problem(
        app.admin_get("/admin/tenants", Some("")).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        app.admin_get("/admin/tenants", Some("tra_wrong")).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        app.admin_get("/admin/registry", Some("")).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        app.admin_get("/admin/tenants", None).await.status(),
        StatusCode::OK
    );
    // The tenant listener does not serve admin routes.
    problem(
        app.get(
            "tenant-1.test.com",
            "/admin/tenants",
            Some(&app.admin_token),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn tenants_are_listed_page_by_page_without_passwords() {
    let pg = shared_postgres().await;
    let mut specs = Vec::new();
    for id in ["a-1", "b-2", "c-3"] {
        let db = tenant_database(pg, "adm").await;
        let with_password = tenant_router::tenant::DatabaseUrl::parse(
            &db.expose().replace("postgres@", "postgres:hunter2@"),
        )
        .unwrap();
        specs.push(spec(id, &[&format!("{id}.example.org")], with_password));
    }
    let app = TestApp::spawn(specs).await;

    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = app
            .admin_get(&format!("/admin/tenants?limit=2&cursor={cursor}"), None)
            .await;
        let text = r.text().await.unwrap();
        assert!(!text.contains("hunter2"), "a password was shown: {text}");
        let page: Value = serde_json::from_str(&text).unwrap();
        for t in page["tenants"].as_array().unwrap() {
            seen.push(t["id"].as_str().unwrap().to_string());
            assert!(t["database"].as_str().unwrap().contains(":***@"));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["a-1", "b-2", "c-3"]);

    let one: Value = app
        .admin_get("/admin/tenants/b-2", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["hosts"][0], "b-2.example.org");
    assert_eq!(one["state"], "active");
    problem(
        app.admin_get("/admin/tenants/nobody", None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.admin_get("/admin/tenants/Bad';--", None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.admin_get("/admin/tenants?limit=0", None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        app.admin_get("/admin/tenants?cursor=NOT%20AN%20ID", None)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
}

#[tokio::test]
async fn registry_view_matches_the_control_database() {
    let app = TestApp::with_demo_tenants().await;
    let view: Value = app
        .admin_get("/admin/registry", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["version"], app.control.max_version().await.unwrap());
    let tenants: Vec<(String, i64)> = view["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["version"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = app
        .control
        .load_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.id.to_string(), t.version))
        .collect();
    assert_eq!(tenants, expected);
}
