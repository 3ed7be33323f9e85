//! The operator path, as processes: `tenants import`, `tenants list`, then `serve`, all
//! configured through `TENANT_ROUTER_*` variables.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::json;
use tenant_router::testing::free_port;

use crate::harness::{shared_postgres, unique_name};

fn cli(control: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenant-router"));
    cmd.args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("TENANT_ROUTER_DATABASE_URL", control);
    cmd
}

#[tokio::test]
async fn import_list_and_serve_as_processes() {
    let pg = shared_postgres().await;
    let control = pg.create_database(&unique_name("control")).await.unwrap();
    let tenant_db = pg.create_database(&unique_name("svc")).await.unwrap();
    // A password in the URL (trust auth ignores it) must never be printed.
    let tenant_url = tenant_db.expose().replace("postgres@", "postgres:s3cret@");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenants.toml");
    std::fs::write(
        &file,
        format!(
            "[[tenant]]\nid = \"svc\"\nhosts = [\"svc.example.org\"]\ndatabase = \"{tenant_url}\"\n"
        ),
    )
    .unwrap();

    let out = cli(
        control.expose(),
        &["tenants", "import", "--file", file.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(control.expose(), &["migrate"]).output().unwrap();
    assert!(out.status.success());
    let out = cli(control.expose(), &["tenants", "list"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("svc\tactive\tdedicated") && listing.contains("svc.example.org"),
        "{listing}"
    );
    assert!(
        !listing.contains("s3cret") && listing.contains(":***@"),
        "{listing}"
    );

    let port = free_port().unwrap();
    let server = cli(control.expose(), &["serve"])
        .env("TENANT_ROUTER_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "TENANT_ROUTER_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port().unwrap()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client
        .post(format!("{base}/api/register"))
        .header("Host", "svc.example.org")
        .json(&json!({"username": "svc", "email": "svc@example.com", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    kill(Pid::from_raw(server.id() as i32), Signal::SIGTERM).unwrap();
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success(), "SIGTERM must stop serve cleanly");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        !logs.contains("s3cret"),
        "a password reached the logs:\n{logs}"
    );
}

#[test]
fn admin_token_prints_a_token_and_a_hash_that_matches_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-router"))
        .arg("admin-token")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap();
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("TENANT_ROUTER_ADMIN_TOKEN_HASH='"))
        .and_then(|l| l.strip_suffix('\''))
        .unwrap();
    let parsed = tenant_router_server::admin_token::AdminTokenHash::parse(hash).unwrap();
    assert!(parsed.verify(token));
    assert!(!hash.contains(token));

    // A value that is not an argon2 hash is refused at start-up, naming the setting.
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-router"))
        .args(["tenants", "list"])
        .env("TENANT_ROUTER_ADMIN_TOKEN_HASH", "plain-token")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TENANT_ROUTER_ADMIN_TOKEN_HASH"));
}
