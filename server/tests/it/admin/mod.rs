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

    // Search: a substring of the id or a host, any case, literal (no wildcards), paged.
    let ids = |q: &'static str| {
        let app = &app;
        async move {
            let page: Value = app
                .admin_get(&format!("/admin/tenants?limit=1000&q={q}"), None)
                .await
                .json()
                .await
                .unwrap();
            page["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids("B-2.EXAMPLE").await, ["b-2"]);
    assert_eq!(ids("-3").await, ["c-3"]);
    assert_eq!(ids("example.org").await, ["a-1", "b-2", "c-3"]);
    assert!(ids("%25").await.is_empty(), "% is not a wildcard");
    assert!(ids("_").await.is_empty(), "_ is not a wildcard");
    let page: Value = app
        .admin_get("/admin/tenants?limit=1&q=example&cursor=a-1", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["tenants"][0]["id"], "b-2");
    assert_eq!(page["next_cursor"], "b-2");
    problem(
        app.admin_get("/admin/tenants?q=%00", None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        app.admin_get("/admin/tenants?search=a", None).await,
        StatusCode::BAD_REQUEST,
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

mod writes;

/// After a restart (no token remembered yet), a flood of wrong tokens from one address
/// must not hold the real administrator, calling from another, behind every one of its
/// argon2 checks: one address gets a few checks, then 429s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_flood_from_one_address_is_rationed_and_the_admin_gets_in() {
    let app = TestApp::spawn(vec![]).await;
    let url = format!("http://{}/admin/tenants", app.admin_addr);
    let flood = futures_util::future::join_all((0..40).map(|i| {
        app.client
            .get(&url)
            .bearer_auth(format!("tra_wrong_{i}"))
            .send()
    }))
    .await;
    let mut checked = 0;
    let mut rationed = 0;
    for r in flood {
        let r = r.unwrap();
        match r.status() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(wait >= 1);
                rationed += 1;
            }
            other => panic!("a wrong token answered {other}"),
        }
    }
    assert!(rationed > 0, "all 40 wrong tokens were checked with argon2");
    assert!(
        checked <= 12,
        "{checked} wrong tokens were checked from one address"
    );
    // The right token, from another loopback address, is not rationed with the flood.
    let admin = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let r = admin
        .get(&url)
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The flooding address is still rationed (it regains one check a second); a remembered
    // right token never is.
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(
            app.admin_get("/admin/tenants", Some("tra_wrong_again"))
                .await
                .status(),
        );
    }
    assert!(
        again.contains(&StatusCode::TOO_MANY_REQUESTS),
        "wrong tokens after the flood answered {again:?}"
    );
    assert_eq!(
        app.admin_get("/admin/tenants", None).await.status(),
        StatusCode::OK
    );
}

/// Wrong tokens from many addresses at once (each within its own allowance) must not put
/// the real administrator's check behind all of theirs: each address is a caller of its
/// own in the fair password queue, so the administrator waits for about one check per
/// flooding address, not for every check they queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_from_many_addresses_do_not_queue_ahead_of_the_admin() {
    let app = TestApp::spawn(vec![]).await;
    let url = format!("http://{}/admin/tenants", app.admin_addr);
    let done = std::sync::atomic::AtomicUsize::new(0);
    // 20 addresses, 10 wrong tokens each (their whole allowance): 200 argon2 checks.
    let clients: Vec<reqwest::Client> = (1..=20u8)
        .map(|i| {
            reqwest::Client::builder()
                .local_address(std::net::IpAddr::from([127, 0, 1, i]))
                .build()
                .unwrap()
        })
        .collect();
    let flood = futures_util::future::join_all(clients.iter().flat_map(|client| {
        let (url, done) = (&url, &done);
        (0..10).map(move |i| async move {
            let r = client
                .get(url)
                .bearer_auth(format!("tra_wrong_{i}"))
                .send()
                .await
                .unwrap();
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            r.status()
        })
    }));
    let admin = async {
        // Let the flood queue up first.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let client = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .build()
            .unwrap();
        let r = client
            .get(&url)
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .unwrap();
        (r.status(), done.load(std::sync::atomic::Ordering::SeqCst))
    };
    let (statuses, (status, answered_before)) = tokio::join!(flood, admin);
    assert_eq!(status, StatusCode::OK);
    assert!(
        statuses.iter().all(|s| matches!(
            *s,
            StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE
        )),
        "{statuses:?}"
    );
    // One at a time in a single line, the admin would come after all 200.
    assert!(
        answered_before < 100,
        "the admin's check came after {answered_before} of the 200 wrong ones"
    );
}
