//! The wildcard rule: `<id>.<base domain>` belongs to tenant `<id>`, whoever claims it.

use anyhow::Context as _;

use super::{ControlDb, WriteError};
use crate::tenant::TenantId;

impl ControlDb {
    /// Refuses hosts that are another tenant's wildcard host, and a new wildcard host
    /// (`<id>.<base domain>`) that another tenant holds exactly. Runs under the writers' lock.
    pub(super) async fn check_wildcards(
        &self,
        tx: &mut sqlx::PgConnection,
        id: &TenantId,
        hosts: &[String],
        creating: bool,
    ) -> Result<(), WriteError> {
        // A writer configured without a base domain (a CLI, say) follows the one the
        // servers recorded.
        let base = match self.base_domain.as_deref() {
            Some(base) => base.to_string(),
            None => {
                let stored: Option<String> = sqlx::query_scalar(
                    "SELECT value FROM control_settings WHERE key = 'base_domain'",
                )
                .fetch_optional(&mut *tx)
                .await
                .context("reading the base domain")?;
                match stored {
                    Some(base) => base,
                    None => return Ok(()),
                }
            }
        };
        let suffix = format!(".{base}");
        for host in hosts {
            let Some(label) = host.strip_suffix(&suffix) else {
                continue;
            };
            if label == id.as_str() || label.contains('.') {
                continue;
            }
            let owner: Option<String> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
                .bind(label)
                .fetch_optional(&mut *tx)
                .await
                .context("looking up a wildcard host's tenant")?;
            if let Some(owner) = owner {
                return Err(WriteError::WildcardTaken {
                    host: host.clone(),
                    owner,
                });
            }
        }
        if !creating {
            return Ok(());
        }
        let own = format!("{id}{suffix}");
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT tenant_id FROM tenant_hosts WHERE host = $1 AND tenant_id <> $2",
        )
        .bind(&own)
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .context("looking up the tenant's wildcard host")?;
        if let Some(owner) = holder {
            return Err(WriteError::WildcardTaken { host: own, owner });
        }
        Ok(())
    }
}
