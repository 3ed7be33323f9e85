//! The admin console in a real browser: Debian's chromium, headless, driven over WebDriver
//! by chromedriver, with every host name but 127.0.0.1 unresolvable (the network is off
//! for it). Sign-in with a wrong token and the right one, the list and its search, add,
//! suspend and the instance panel; a screenshot is kept in `target/console.png`. Then the
//! Swagger UI pages of both OpenAPI documents.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tenant_router::testing::free_port;

use crate::cluster::Cluster;
use crate::jobs::add_tenant;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_binary(names: &[&str]) -> String {
    for name in names {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let path = std::path::Path::new(dir).join(name);
            if path.is_file() {
                return path.display().to_string();
            }
        }
    }
    panic!(
        "{names:?} not found on PATH: the browser tests need Debian's chromium and \
         chromium-driver (scripts/test installs them as root)"
    );
}

/// A headless chromium behind chromedriver, that can reach 127.0.0.1 only.
async fn browser() -> (Driver, Client) {
    let port = free_port().unwrap();
    let driver = Driver(
        Command::new(find_binary(&["chromedriver"]))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let chromium = find_binary(&["chromium", "chromium-browser"]);
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            ],
        }
    }))
    .unwrap();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, client),
            Err(e) => {
                assert!(Instant::now() < deadline, "no WebDriver session: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until `css` matches an element whose text contains `want`.
async fn wait_text(c: &Client, css: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && e.text().await.is_ok_and(|t| t.contains(want))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed {want:?}; page:\n{}",
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_in(c: &Client, token: &str) {
    let input = c.find(Locator::Id("token")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(token).await.unwrap();
    c.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_lists_adds_and_suspends_in_a_real_browser() {
    let cluster = Cluster::new().await;
    let server = cluster.start("console").await;
    add_tenant(&cluster, &server, "acme").await;
    add_tenant(&cluster, &server, "globex").await;
    let (_driver, c) = browser().await;
    let origin = format!("http://127.0.0.1:{}", server.admin_port);
    c.goto(&format!("{origin}/")).await.unwrap();

    // A wrong token is refused, and not kept.
    sign_in(&c, "not-the-token").await;
    wait_text(&c, "#sign-in-error", "refused").await;
    assert!(
        !c.find(Locator::Id("console"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );
    let stored = c
        .execute(
            "return sessionStorage.getItem('tenant-router-admin-token')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, Value::Null);

    // The right one: the console, with the token in this tab's session storage only.
    sign_in(&c, &cluster.token).await;
    wait_text(&c, "#tenants tr[data-tenant='acme'] td.state", "active").await;
    let storage = c
        .execute(
            "return [sessionStorage.getItem('tenant-router-admin-token'), localStorage.length, document.cookie]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(storage, json!([cluster.token, 0, ""]));
    let row = c
        .find(Locator::Css("#tenants tr[data-tenant='acme']"))
        .await
        .unwrap();
    let cells = row.text().await.unwrap();
    assert!(
        cells.contains("dedicated") && cells.contains("acme.example.org"),
        "{cells}"
    );

    // Search narrows the list.
    c.find(Locator::Id("tenant-search"))
        .await
        .unwrap()
        .send_keys("globex.exam")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .find(Locator::Css("#tenants tr[data-tenant='acme']"))
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "search did not hide acme");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        c.find(Locator::Css("#tenants tr[data-tenant='globex']"))
            .await
            .is_ok()
    );
    c.find(Locator::Id("tenant-search"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    // `clear` fires no input event; a key does.
    c.find(Locator::Id("tenant-search"))
        .await
        .unwrap()
        .send_keys(" ")
        .await
        .unwrap();
    wait_text(&c, "#tenants tr[data-tenant='acme'] td.id", "acme").await;

    // Add a shared tenant through the form; it is really created.
    c.find(Locator::Id("add-id"))
        .await
        .unwrap()
        .send_keys("initech")
        .await
        .unwrap();
    c.find(Locator::Id("add-hosts"))
        .await
        .unwrap()
        .send_keys("initech.example.org")
        .await
        .unwrap();
    c.find(Locator::Id("add-isolation"))
        .await
        .unwrap()
        .select_by_value("shared")
        .await
        .unwrap();
    c.find(Locator::Id("add-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(
        &c,
        "#tenants tr[data-tenant='initech'] td.isolation",
        "shared",
    )
    .await;
    let r = cluster
        .admin(&server, Method::GET, "/admin/tenants/initech", None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Suspend acme: the control database says so, and the page too.
    c.find(Locator::Css(
        "#tenants tr[data-tenant='acme'] button.suspend",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait_text(&c, "#tenants tr[data-tenant='acme'] td.state", "suspended").await;
    let r = cluster
        .admin(&server, Method::GET, "/admin/tenants/acme", None)
        .await;
    let acme: Value = r.json().await.unwrap();
    assert_eq!(acme["state"], "suspended");

    // This instance: its registry version and bus.
    wait_text(&c, "#bus-state", "connected").await;
    let version: i64 = text_of(&c, "#registry-version")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(version >= 4, "{version}");

    // Nothing came from, or went to, another host.
    let foreign = c
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)
                 .filter(n => !n.startsWith(location.origin))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(foreign, json!([]));

    let png = c.screenshot().await.unwrap();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console.png");
    std::fs::write(&out, png).unwrap();

    // The docs pages render from this origin alone, with the network off: the admin one
    // fetches its document with the token the console keeps in this tab.
    let app_origin = format!("http://127.0.0.1:{}", server.port);
    for (page, title, operations) in [
        (
            format!("{origin}/admin/docs"),
            "tenant-router admin API",
            17,
        ),
        (
            format!("{app_origin}/docs"),
            "tenant-router reference app",
            9,
        ),
    ] {
        c.goto(&page).await.unwrap();
        wait_text(&c, ".swagger-ui .info .title", title).await;
        let shown = c
            .execute(
                "return document.querySelectorAll('.opblock').length",
                vec![],
            )
            .await
            .unwrap();
        assert!(shown.as_u64().unwrap_or(0) >= operations, "{page}: {shown}");
        let foreign = c
            .execute(
                "return performance.getEntriesByType('resource').map(e => e.name)
                     .filter(n => !n.startsWith(location.origin))",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(foreign, json!([]), "{page}");
    }
    c.close().await.unwrap();
}
