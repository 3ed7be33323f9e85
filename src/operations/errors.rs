//! Why a tenant operation failed, and the problem response each failure becomes.

use crate::control::{Leftover, WriteError};
use crate::journal::Refused;
use crate::problem::{ApiError, FieldError};
use crate::tenant::{Isolation, TenantId};

/// Why a tenant operation failed. Converts into the matching problem response.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// 422.
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    /// 404.
    #[error("no tenant '{0}'")]
    NotFound(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 412: the tenant is at another version than `If-Match` said.
    #[error("the tenant is at version {current}, not the one given in If-Match")]
    Stale {
        /// Its version now.
        current: i64,
    },
    /// Provisioning failed; nothing was kept.
    #[error("provisioning failed, nothing was kept and retrying is safe: {0:#}")]
    Provisioning(anyhow::Error),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Invalid(errors) => ApiError::Invalid(errors),
            OpError::NotFound(_) => ApiError::NotFound(e.to_string()),
            OpError::Conflict(msg) => ApiError::Conflict(msg),
            OpError::Stale { .. } => {
                ApiError::Client(http::StatusCode::PRECONDITION_FAILED, e.to_string())
            }
            OpError::Provisioning(_) => {
                tracing::error!(error = %e, "provisioning a tenant failed");
                // The cause names the failing migration or server; URLs in it are redacted.
                ApiError::Client(http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            OpError::Other(e) => ApiError::Internal(e),
        }
    }
}

pub(super) fn write_error(e: WriteError, id: &TenantId) -> OpError {
    match e {
        WriteError::Leftover(l) => OpError::Conflict(leftover_message(&l)),
        WriteError::WildcardTaken { host, owner } => OpError::Conflict(format!(
            "host '{host}' is the wildcard host of tenant '{owner}'"
        )),
        WriteError::HostTaken { host, owner } => {
            OpError::Conflict(format!("host '{host}' already belongs to tenant '{owner}'"))
        }
        WriteError::IdTaken => OpError::Conflict(format!("a tenant '{id}' already exists")),
        WriteError::NotFound => OpError::NotFound(id.to_string()),
        WriteError::Stale { current } => OpError::Stale { current },
        WriteError::Other(e) => OpError::Other(e),
    }
}

pub(super) fn leftover_message(l: &Leftover) -> String {
    let what = match l.isolation {
        Isolation::Dedicated => format!(
            "its database '{}'",
            l.database.database_name().unwrap_or_else(|| "?".into())
        ),
        Isolation::Shared => "its rows in the shared database".to_string(),
    };
    format!(
        "tenant '{id}' was removed (version {v}) and {what}, jobs and files were kept. \
         Create it with \"adopt\": true to take that data back, or discard it first: \
         DELETE /admin/leftovers/{id} (CLI: tenant-router tenants purge {id})",
        id = l.tenant_id,
        v = l.removed_version,
    )
}

impl From<Refused> for OpError {
    fn from(e: Refused) -> Self {
        match e {
            Refused::Other(e) => Self::Other(e),
            refused => Self::Conflict(refused.to_string()),
        }
    }
}
