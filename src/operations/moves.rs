//! Moving a tenant between its own database and the shared one, resumable at every step.

use serde::Serialize;

use super::errors::write_error;
use super::{OpError, TenantOps};
use crate::bus::HintOp;
use crate::control::{TenantSpec, WriteMode};
use crate::journal::Operation;
use crate::provision;
use crate::tenant::{DatabaseUrl, Isolation, TenantId};

/// What a move did.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct MoveReport {
    /// The tenant.
    pub id: TenantId,
    /// Where it was.
    pub from: Isolation,
    /// Where it is.
    pub to: Isolation,
    /// The version of the switch.
    pub version: i64,
    /// Rows copied per table (equal at source and target).
    pub copied: Vec<crate::moving::Copied>,
}

impl TenantOps {
    /// Moves a tenant to its own database or to the shared one: copies its rows, checks the
    /// counts, closes the source to writes, switches its configuration in one version bump,
    /// then deletes the source rows (see [`crate::moving`]). Only this tenant's writes wait
    /// meanwhile. One operation per tenant: a second move while one runs is a 409; a move to
    /// where the tenant is already does nothing; a move killed anywhere is completed by
    /// retrying it.
    pub async fn move_tenant(&self, id: &TenantId, to: Isolation) -> Result<MoveReport, OpError> {
        self.move_tenant_if(id, to, None).await
    }

    /// [`TenantOps::move_tenant`], only while the tenant is at version `expected` (when
    /// given), checked under the tenant's operation lock ([`OpError::Stale`] otherwise). A
    /// retry of an interrupted move completes it whatever the version.
    pub async fn move_tenant_if(
        &self,
        id: &TenantId,
        to: Isolation,
        expected: Option<i64>,
    ) -> Result<MoveReport, OpError> {
        let mut op = self
            .control
            .begin_operation(id, "move", serde_json::json!({"to": to.as_str()}))
            .await?;
        let result = self.move_locked(id, to, expected, &mut op).await;
        match &result {
            Ok(_) => op.finish("done").await,
            Err(e) if op.is_clean() => op.finish(&format!("failed: {e}")).await,
            Err(e) => {
                tracing::error!(tenant.id = %id, error = %e,
                    "a move stopped half-way; retry it to complete it");
                op.abandon().await;
            }
        }
        result
    }

    async fn move_locked(
        &self,
        id: &TenantId,
        to: Isolation,
        expected: Option<i64>,
        op: &mut Operation,
    ) -> Result<MoveReport, OpError> {
        use crate::moving::{Source, copy_to_dedicated, copy_to_shared};
        let resumed = op.resumed().cloned();
        if resumed
            .as_ref()
            .is_some_and(|r| r.detail.get("to").and_then(|t| t.as_str()) != Some(to.as_str()))
        {
            let r = resumed
                .as_ref()
                .map(|r| r.detail.clone())
                .unwrap_or_default();
            op.mark_dirty();
            return Err(OpError::Conflict(format!(
                "an interrupted move of tenant '{id}' (to {}) must be completed first: retry it",
                r.get("to").and_then(|t| t.as_str()).unwrap_or("?")
            )));
        }
        let current = self
            .control
            .get_tenant(id)
            .await?
            .ok_or_else(|| OpError::NotFound(id.to_string()))?;
        if let Some(expected) = expected
            && resumed.is_none()
            && current.version != expected
        {
            return Err(OpError::Stale {
                current: current.version,
            });
        }
        if current.isolation == to {
            // Where it should be. A move killed after its switch left the source's rows:
            // delete them now (the journal knows where they are).
            if let Some(r) = &resumed {
                let from: Option<Isolation> = r
                    .detail
                    .get("from")
                    .and_then(|f| f.as_str())
                    .and_then(|f| f.parse().ok());
                if let (Some(from), Some(source)) = (from, &r.database) {
                    op.mark_dirty();
                    // The switch may never have been announced (killed right after it).
                    self.announce(HintOp::Upsert, id, current.version).await;
                    let source_provisioned =
                        r.detail.get("source_provisioned") == Some(&serde_json::Value::Bool(true));
                    self.retire_source(from, source, source_provisioned, id)
                        .await
                        .map_err(|e| {
                            OpError::Other(e.context("deleting the rows left at the source"))
                        })?;
                    tracing::info!(tenant.id = %id, "completed an interrupted move");
                }
            }
            return Ok(MoveReport {
                id: id.clone(),
                from: current.isolation,
                to,
                version: current.version,
                copied: Vec::new(),
            });
        }
        if current.isolation == Isolation::Dedicated
            && let Some(name) = current.database.database_name()
        {
            let users = self.control.database_users(&name).await?;
            if let Some((other, _)) = users.iter().find(|(user, _)| user != id.as_str()) {
                return Err(OpError::Conflict(format!(
                    "tenant '{id}' shares database '{name}' with tenant '{other}': a move \
                         would close it to both; give one of them a database of its own first"
                )));
            }
        }
        let source_provisioned = self.control.is_provisioned(id).await?;
        op.step(
            "started",
            serde_json::json!({
                "from": current.isolation.as_str(),
                "source_provisioned": source_provisioned,
            }),
            Some(&current.database),
        )
        .await?;
        // What an interrupted run of this move made at the target is its own to replace;
        // anything else there is someone's data, never overwritten.
        let made_before = |key: &str| {
            resumed
                .as_ref()
                .and_then(|r| r.detail.get(key))
                .and_then(|v| v.as_bool())
                == Some(true)
        };
        let (shared, shared_url) = self.shared_db().await?;
        let (target, provisioned) = match to {
            Isolation::Shared => {
                let registered = shared.register(id).await?;
                if !registered
                    && !made_before("target_registered")
                    && shared.has_rows(id, &self.schema).await?
                {
                    return Err(OpError::Conflict(format!(
                        "the shared database holds rows of tenant '{id}' that no tenant owns; \
                         delete them first (DELETE /admin/leftovers/{id})"
                    )));
                }
                op.step(
                    "target",
                    serde_json::json!({"target_registered": true}),
                    None,
                )
                .await?;
                (shared_url.clone(), false)
            }
            Isolation::Dedicated => {
                let name = provision::database_name(id);
                if let Some(owner) = self.control.database_owner(&name).await? {
                    return Err(OpError::Conflict(format!(
                        "database '{name}' is the database of tenant '{owner}' (or of its kept \
                         data); tenant '{id}' cannot move there"
                    )));
                }
                if provision::database_exists(&self.provision_server, &name).await?
                    && !made_before("target_created")
                {
                    return Err(OpError::Conflict(format!(
                        "database '{name}' already exists on the provisioning server and \
                         belongs to no tenant; drop it first, then move"
                    )));
                }
                op.step("target", serde_json::json!({"target_created": true}), None)
                    .await?;
                let migrator = self
                    .migrations
                    .load()
                    .await
                    .map_err(OpError::Provisioning)?;
                let made = provision::provision(&self.provision_server, id, &migrator)
                    .await
                    .map_err(OpError::Provisioning)?;
                (made.database, true)
            }
        };
        let (source, rows) = Source::lock(
            current.isolation,
            &current.database,
            id,
            &self.schema,
            source_provisioned,
        )
        .await?;
        // The version check before anything destructive: nothing changed the tenant since
        // it was read (the operation lock keeps other writers of this tenant out; this
        // catches one that bypassed it).
        let now = self.control.get_tenant(id).await?;
        if now.as_ref().map(|t| t.version) != Some(current.version) {
            source.abandon().await;
            return Err(OpError::Conflict(format!(
                "tenant '{id}' changed while the move started; retry"
            )));
        }
        let copied = match to {
            Isolation::Shared => copy_to_shared(shared, id, &rows, &self.schema).await,
            Isolation::Dedicated => copy_to_dedicated(&target, &rows, &self.schema).await,
        };
        let copied = match copied {
            Ok(c) => c,
            Err(e) => {
                source.abandon().await;
                return Err(OpError::Other(
                    e.context("copying the tenant's rows; nothing was switched"),
                ));
            }
        };
        op.step("copied", serde_json::json!({}), None).await?;
        op.mark_dirty();
        source
            .guard(id, &self.schema)
            .await
            .map_err(|e| OpError::Other(e.context("closing the source to writes")))?;
        op.step("guarded", serde_json::json!({}), None).await?;
        let spec = TenantSpec {
            id: id.clone(),
            hosts: current.hosts.clone(),
            database: target,
            provisioned,
            pool: current.pool,
            state: current.state,
            isolation: to,
            incarnation: None,
            rate_limit: current.rate_limit,
        };
        let written = self
            .control
            .write(
                &spec,
                WriteMode::Update {
                    expected_version: Some(current.version),
                },
            )
            .await
            .map_err(|e| write_error(e, id))?;
        op.step("switched", serde_json::json!({}), None).await?;
        self.announce(HintOp::Upsert, id, written.tenant.version)
            .await;
        op.step("announced", serde_json::json!({}), None).await?;
        self.retire_source(current.isolation, &current.database, source_provisioned, id)
            .await
            .map_err(|e| {
                OpError::Other(e.context(format!(
                    "tenant '{id}' was switched to {}, but its old rows could not be deleted; \
                     retry the move to delete them",
                    to.as_str()
                )))
            })?;
        Ok(MoveReport {
            id: id.clone(),
            from: current.isolation,
            to,
            version: written.tenant.version,
            copied,
        })
    }

    /// The last step of a move: the source's rows go. A dedicated database the router made
    /// is dropped (once no instance holds a connection to it, or after the drop wait), so an
    /// instance that missed the switch finds no database, not an empty one, and catches up;
    /// a database given by hand keeps its guard and loses its rows.
    async fn retire_source(
        &self,
        from: Isolation,
        source: &DatabaseUrl,
        provisioned: bool,
        id: &TenantId,
    ) -> anyhow::Result<()> {
        match (from, source.database_name()) {
            (Isolation::Dedicated, Some(name)) if provisioned => {
                // Another tenant on it (a database given twice before the rule existed):
                // only this tenant's rows go.
                let users = self.control.database_users(&name).await?;
                if users.iter().any(|(user, _)| user != id.as_str()) {
                    tracing::warn!(tenant.id = %id, database = %name,
                        "the moved tenant's old database is another tenant's too; left as it is");
                    return Ok(());
                }
                self.wait_until_unused(&name).await;
                provision::drop_database(&self.provision_server, &name).await
            }
            _ => crate::moving::clean_source(from, source, id, &self.schema).await,
        }
    }
}
