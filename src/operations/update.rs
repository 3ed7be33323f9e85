//! Changing a tenant: merged with the stored one, written at the version read, retried when
//! a concurrent change got there first.

use super::errors::write_error;
use super::requests::merge;
use super::{OpError, TenantOps, TenantPatchRequest};
use crate::bus::HintOp;
use crate::control::{WriteError, WriteMode};
use crate::tenant::{Tenant, TenantId};

impl TenantOps {
    /// Changes a tenant. With `if_match`, a tenant at another version is refused
    /// ([`OpError::Stale`]); without it, a concurrent change is merged with, never lost.
    /// Refused with a 409 while another operation (a move, a removal) runs on the tenant.
    pub async fn update(
        &self,
        id: &TenantId,
        patch: TenantPatchRequest,
        if_match: Option<i64>,
    ) -> Result<Tenant, OpError> {
        let lock = self.control.lock_tenant(id).await?;
        let result = self.update_locked(id, patch, if_match).await;
        lock.finish("").await;
        result
    }

    async fn update_locked(
        &self,
        id: &TenantId,
        patch: TenantPatchRequest,
        if_match: Option<i64>,
    ) -> Result<Tenant, OpError> {
        for _attempt in 0..5 {
            let current = self
                .control
                .get_tenant(id)
                .await?
                .ok_or_else(|| OpError::NotFound(id.to_string()))?;
            if let Some(expected) = if_match
                && expected != current.version
            {
                return Err(OpError::Stale {
                    current: current.version,
                });
            }
            let provisioned = self.control.is_provisioned(id).await?;
            let spec = merge(&current, provisioned, &patch).map_err(OpError::Invalid)?;
            if spec.database != current.database {
                self.check_database_free(id, &spec.database).await?;
            }
            match self
                .control
                .write(
                    &spec,
                    WriteMode::Update {
                        expected_version: Some(current.version),
                    },
                )
                .await
            {
                Ok(written) => {
                    if written.tenant.version != current.version {
                        self.announce(HintOp::Upsert, id, written.tenant.version)
                            .await;
                    }
                    return Ok(written.tenant);
                }
                // Someone else changed it between our read and our write.
                Err(WriteError::Stale { current }) if if_match.is_some() => {
                    return Err(OpError::Stale { current });
                }
                Err(WriteError::Stale { .. }) => continue,
                Err(e) => return Err(write_error(e, id)),
            }
        }
        Err(OpError::Conflict(format!(
            "tenant '{id}' kept changing under this update; retry"
        )))
    }
}
