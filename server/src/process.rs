//! What every binary of ours does around its work: logging to stderr (filter in
//! `TENANT_ROUTER_LOG`, default `info,sqlx=warn`), a runtime, and one line on failure.

use std::future::Future;
use std::process::ExitCode;

/// Logs to stderr, filtered by `TENANT_ROUTER_LOG`.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TENANT_ROUTER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs `work` on a new runtime; an error is printed as `error: …` with its causes and
/// exits with status 1.
pub fn run(work: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
