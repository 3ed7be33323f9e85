//! What every binary of ours does around its work: logging to stderr (filter in
//! `TENANT_ROUTER_LOG`, default `info,sqlx=warn`), a runtime, and one line on failure.

use std::future::Future;
use std::process::ExitCode;

/// Logs to stderr, filtered by `TENANT_ROUTER_LOG`, as text or, with
/// `TENANT_ROUTER_LOG_FORMAT=json`, as one JSON object per line. Any other format is an error
/// (printed, exit status 2).
pub fn init_tracing() -> Result<(), ExitCode> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TENANT_ROUTER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let format = std::env::var("TENANT_ROUTER_LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.trim() {
        "" | "text" => builder.init(),
        // The event's fields at the top level; the span's (method, route, tenant.id) under
        // "span".
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        other => {
            eprintln!("error: TENANT_ROUTER_LOG_FORMAT must be text or json, not '{other}'");
            return Err(ExitCode::from(2));
        }
    }
    Ok(())
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
