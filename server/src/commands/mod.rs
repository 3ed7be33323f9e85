//! The commands, one module each; what several of them share is here.

use std::process::ExitCode;

use tenant_router::control::ControlDb;
use tenant_router::operations::{OpError, TenantOps};
use tenant_router::problem::FieldError;
use tenant_router::tenant::TenantId;
use tenant_router_server::config::Settings;

pub(crate) mod admin_token;
pub(crate) mod demo;
pub(crate) mod jobs;
pub(crate) mod migrate;
pub(crate) mod serve;
pub(crate) mod tenants;
pub(crate) mod worker;

/// Tenant operations for a CLI command: the control database (migrated), and hints on the
/// bus when Redis is configured, so running servers apply the change at once.
async fn operations(settings: &Settings) -> anyhow::Result<TenantOps> {
    let control = ControlDb::connect_lazy(settings.require_database_url()?);
    control.migrate().await?;
    settings.tenant_ops(control)
}

/// An id as the commands take it: one that cannot be a tenant's is simply not found.
fn parse_id(raw: String) -> Result<TenantId, OpError> {
    TenantId::parse(&raw).map_err(|_| OpError::NotFound(raw))
}

fn invalid(errors: &[FieldError]) -> ExitCode {
    eprintln!("error: invalid input");
    for e in errors {
        eprintln!("  {}: {}", e.field, e.message);
    }
    ExitCode::from(2)
}

/// Prints the result as JSON on stdout, or the error on stderr. Exit status 2 for a
/// mistake in the input (the HTTP API's 4xx), 1 for anything else.
fn report<T: serde::Serialize>(result: Result<T, OpError>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(value) => {
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(OpError::Invalid(errors)) => Ok(invalid(&errors)),
        Err(e @ (OpError::NotFound(_) | OpError::Conflict(_) | OpError::Stale { .. })) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(anyhow::Error::from(e)),
    }
}
