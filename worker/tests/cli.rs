//! The worker binary starts from the router's settings and refuses clearly without Redis.

use std::process::Command;

#[test]
fn help_names_the_settings() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-router-worker"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--worker-concurrency"), "{text}");
    assert!(text.contains("--redis-url"), "{text}");
}

#[test]
fn without_redis_it_says_what_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-router-worker"))
        .env_remove("TENANT_ROUTER_REDIS_URL")
        .env_remove("TENANT_ROUTER_CONFIG")
        .env(
            "TENANT_ROUTER_DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TENANT_ROUTER_REDIS_URL"), "{err}");
}
