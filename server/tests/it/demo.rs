//! `tenant-router demo`, as the README's quick start runs it: its own PostgreSQL, both demo
//! tenants answering, data kept across a restart.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tenant_router::testing::free_port;

struct Demo {
    child: Child,
    base: String,
    admin: String,
    stdout: std::path::PathBuf,
    client: reqwest::Client,
}

impl Demo {
    async fn start(data_dir: &std::path::Path, port: u16) -> Demo {
        let admin_port = free_port().unwrap();
        let stdout = data_dir.join(format!("stdout-{}.txt", free_port().unwrap()));
        let child = Command::new(env!("CARGO_BIN_EXE_tenant-router"))
            .arg("demo")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("TENANT_ROUTER_DATA_DIR", data_dir)
            .env("TENANT_ROUTER_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "TENANT_ROUTER_ADMIN_LISTEN",
                format!("127.0.0.1:{admin_port}"),
            )
            .env_remove("TENANT_ROUTER_DATABASE_URL")
            .env_remove("TENANT_ROUTER_REDIS_URL")
            .env_remove("TENANT_ROUTER_ADMIN_TOKEN_HASH")
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut demo = Demo {
            child,
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            stdout,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let up = demo
                .client
                .get(format!("{}/healthz", demo.base))
                .send()
                .await;
            if up.is_ok_and(|r| r.status() == StatusCode::OK) {
                return demo;
            }
            if let Some(status) = demo.child.try_wait().unwrap() {
                panic!("the demo exited before serving: {status}");
            }
            assert!(Instant::now() < deadline, "the demo did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn post(&self, host: &str, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("Host", host)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The admin token, if this start printed one.
    fn printed_token(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.stdout).unwrap();
        let mut lines = text.lines();
        lines.find(|l| l.contains("admin token (shown this once"))?;
        lines.next().map(|l| l.trim().to_string())
    }

    async fn admin_get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.admin))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    fn interrupt(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "Ctrl-C must stop the demo cleanly: {status}"
        );
    }
}

fn host_1() -> &'static str {
    "tenant-1.test.com"
}

#[tokio::test]
async fn demo_serves_both_tenants_and_keeps_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // As root, the demo's PostgreSQL runs as `postgres`, which must reach the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port().unwrap();
    let user =
        json!({"username": "demo", "email": "demo@example.com", "password": "correct horse"});
    let login = json!({"email": "demo@example.com", "password": "correct horse"});

    let demo = Demo::start(dir.path(), port).await;
    for host in [
        "tenant-1.test.com",
        "tenant-2.test.com",
        "tenant-3.test.com",
    ] {
        assert_eq!(
            demo.post(host, "/api/register", user.clone())
                .await
                .status(),
            StatusCode::CREATED,
            "{host}"
        );
    }
    // The first start made an admin token, printed it once, and kept only its hash.
    let token = demo
        .printed_token()
        .expect("the first start prints a token");
    assert!(token.starts_with("tra_"), "{token}");
    let kept = std::fs::read_to_string(dir.path().join("admin-token.hash")).unwrap();
    assert!(kept.starts_with("$argon2id$") && !kept.contains(&token));
    let r = demo.admin_get("/admin/registry", &token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let registry: Value = r.json().await.unwrap();
    assert_eq!(registry["tenants"].as_array().unwrap().len(), 3);
    assert_eq!(
        demo.admin_get("/admin/registry", "tra_wrong")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // Its own Redis carries the bus.
    let ready: Value = demo
        .client
        .get(format!("{}/readyz", demo.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["bus"]["state"], "connected", "{ready}");
    // Its worker runs background jobs: a note created through one.
    let r = demo
        .post(host_1(), "/api/login", login.clone())
        .await
        .json::<Value>()
        .await
        .unwrap();
    let user_token = r["token"].as_str().unwrap().to_string();
    let r = demo
        .client
        .post(format!("{}/api/notes?async=true", demo.base))
        .header("Host", host_1())
        .bearer_auth(&user_token)
        .json(&json!({"content": "written by the worker"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let status_url = r.json::<Value>().await.unwrap()["status_url"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s: Value = demo
            .client
            .get(format!("{}{status_url}", demo.base))
            .header("Host", host_1())
            .bearer_auth(&user_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    demo.interrupt();

    let demo = Demo::start(dir.path(), port).await;
    for host in ["tenant-1.test.com", "tenant-2.test.com"] {
        assert_eq!(
            demo.post(host, "/api/login", login.clone()).await.status(),
            StatusCode::OK,
            "{host}"
        );
        assert_eq!(
            demo.post(host, "/api/register", user.clone())
                .await
                .status(),
            StatusCode::CONFLICT
        );
    }
    assert_eq!(demo.printed_token(), None, "the token is shown only once");
    assert_eq!(
        demo.admin_get("/admin/tenants", &token).await.status(),
        StatusCode::OK,
        "the first token stays valid"
    );
    demo.interrupt();
}
