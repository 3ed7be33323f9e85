//! Repairing an interrupted operation, as the journal records it.

use anyhow::Context as _;

use super::{OpError, TenantOps};
use crate::tenant::{Isolation, TenantId};

impl TenantOps {
    /// Completes or rolls back an interrupted operation on `id` (see
    /// [`crate::journal`]): a move or removal is completed, a create is rolled back (its
    /// database dropped; the client's retry creates it again).
    pub async fn repair(&self, id: &TenantId) -> Result<String, OpError> {
        let Some(open) = self.control.unfinished_operation(id).await? else {
            return Ok(format!("tenant '{id}': nothing to repair"));
        };
        match open.kind.as_str() {
            "move" => {
                let to: Isolation = open
                    .detail
                    .get("to")
                    .and_then(|t| t.as_str())
                    .and_then(|t| t.parse().ok())
                    .context("the journal names no target")?;
                let report = self.move_tenant(id, to).await?;
                Ok(format!(
                    "tenant '{id}': the move to {} is complete (version {})",
                    to.as_str(),
                    report.version
                ))
            }
            "remove" => {
                let purge = open.detail.get("purge") == Some(&serde_json::Value::Bool(true));
                let removal = self.remove(id, purge).await?;
                Ok(format!(
                    "tenant '{id}': the removal is complete (version {}, purged: {})",
                    removal.version, removal.purged
                ))
            }
            "create" => {
                let op = self
                    .control
                    .begin_operation(id, "create", serde_json::json!({}))
                    .await?;
                let mut said = format!("tenant '{id}': the interrupted create was rolled back");
                if self.control.get_tenant(id).await?.is_some() {
                    said = format!("tenant '{id}': the create had completed");
                } else if let Some(name) = open.detail.get("database").and_then(|d| d.as_str())
                    && self.control.tenant_using_database(name).await?.is_none()
                {
                    self.drop_quietly(name).await;
                    said.push_str(&format!(" (database '{name}' dropped)"));
                }
                op.finish("rolled back").await;
                Ok(said)
            }
            other => Err(OpError::Conflict(format!(
                "tenant '{id}': an unknown operation '{other}' is open in the journal"
            ))),
        }
    }
}
