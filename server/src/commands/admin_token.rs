//! `admin-token`: a fresh admin API token, and the hash to configure in its place.

use std::process::ExitCode;

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let (token, hash) = tenant_router_server::admin_token::generate();
    println!("token: {token}");
    println!("TENANT_ROUTER_ADMIN_TOKEN_HASH='{}'", hash.as_str());
    Ok(ExitCode::SUCCESS)
}
