//! The OpenAPI documents: served where the README says, valid 3.1 with the problem schema,
//! and describing only routes that exist (each documented operation reaches a handler, not
//! the router's fallback). Schemathesis (`scripts/schemathesis`, in `.ci/run`) checks the
//! responses against them; the browser test renders the docs pages with the network off.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::harness::{TestApp, problem};

/// Every (method, path) of a document, with path parameters filled in.
fn operations(doc: &Value) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{which}", "dead")
            .replace("{job_id}", "0000")
            .replace("{id}", "1");
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            out.push((method, concrete.clone()));
        }
    }
    out
}

/// True when the router's fallback answered: no route, or not that method.
async fn fell_through(r: reqwest::Response) -> Option<String> {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or_default();
    let detail = body["detail"].as_str().unwrap_or_default().to_string();
    let fallback = (status == StatusCode::NOT_FOUND && detail == "no such route")
        || status == StatusCode::METHOD_NOT_ALLOWED;
    fallback.then(|| format!("{status} {detail}"))
}

#[tokio::test]
async fn the_documents_describe_only_routes_that_exist() {
    let app = TestApp::with_demo_tenants().await;

    // The app's document answers on any host, a tenant's or none, like /healthz.
    for host in ["tenant-1.test.com", "nobody.example.org"] {
        let r = app.get(host, "/openapi.json", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/json");
    }
    let doc: Value = app
        .get("tenant-1.test.com", "/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["schemas"]["Problem"].is_object(), "{doc}");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let app_ops = operations(&doc);
    assert!(app_ops.len() >= 9, "{app_ops:?}");
    for (method, path) in app_ops {
        let r = app
            .request(method.clone(), "tenant-1.test.com", &path)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        if let Some(why) = fell_through(r).await {
            panic!("{method} {path} is documented but not routed: {why}");
        }
    }

    // The admin document is behind the token, and its operations exist too.
    let r = app.admin_get("/admin/openapi.json", Some("")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let doc: Value = app
        .admin_get("/admin/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let admin_ops = operations(&doc);
    assert!(admin_ops.len() >= 17, "{admin_ops:?}");
    for (method, path) in admin_ops {
        let r = app
            .client
            .request(method.clone(), format!("http://{}{path}", app.admin_addr))
            .bearer_auth(&app.admin_token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        if let Some(why) = fell_through(r).await {
            panic!("{method} {path} is documented but not routed: {why}");
        }
    }

    // The docs pages are served from the binary.
    let r = app.get("nobody.example.org", "/docs/", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    let r = app
        .get("nobody.example.org", "/docs/swagger-initializer.js", None)
        .await;
    let init = r.text().await.unwrap();
    assert!(
        init.contains("url: '/openapi.json'") && init.contains("validatorUrl: null"),
        "{init}"
    );
    // Only the bundle's plain files: not its unfilled initializer, however spelled.
    for path in ["/docs/swagger%2Dinitializer.js", "/docs/..%2Fopenapi.json"] {
        let r = app.get("nobody.example.org", path, None).await;
        problem(r, StatusCode::NOT_FOUND).await;
    }
    let r = app.get("nobody.example.org", "/docs/%ff", None).await;
    assert!(r.status().is_client_error());
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = app
        .client
        .get(format!("http://{}/admin/docs/", app.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
