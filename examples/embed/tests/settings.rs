//! The example without its one required setting fails with a message that names it. (Its
//! routing is tested against real servers in the server crate's `embed` tests.)

use std::process::Command;

#[test]
fn without_a_control_database_it_says_which_setting_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_embed-example"))
        .env_remove("TENANT_ROUTER_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TENANT_ROUTER_DATABASE_URL"),
        "stderr: {stderr}"
    );
}
