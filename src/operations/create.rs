//! Creating a tenant: provisioned (or adopted) first, committed next, announced last; what
//! a failed create made is dropped again.

use super::errors::{leftover_message, write_error};
use super::{NewTenant, OpError, TenantOps};
use crate::bus::HintOp;
use crate::control::{TenantSpec, WriteMode};
use crate::journal::Operation;
use crate::provision;
use crate::tenant::{Isolation, Tenant};

impl TenantOps {
    /// Creates a tenant. Without a database, one is created and migrated first; on any
    /// failure what was created is dropped again. Data already there (what a removal of
    /// this id kept, an existing `tenant_<id>` database, rows in the shared schema) is a 409
    /// unless `adopt` is set.
    pub async fn create(&self, new: NewTenant) -> Result<Tenant, OpError> {
        // Clear answers before any work; the write below re-checks atomically.
        if self.control.get_tenant(&new.id).await?.is_some() {
            return Err(OpError::Conflict(format!(
                "a tenant '{}' already exists",
                new.id
            )));
        }
        for host in &new.hosts {
            if let Some(owner) = self.control.host_owner(host).await? {
                return Err(OpError::Conflict(format!(
                    "host '{host}' already belongs to tenant '{owner}'"
                )));
            }
        }
        // One operation per tenant: a second create of the id (from any instance) waits for
        // nothing and gets a 409; one killed half-way is resumed by the next.
        let mut op = self
            .control
            .begin_operation(
                &new.id,
                "create",
                serde_json::json!({"isolation": new.isolation.as_str()}),
            )
            .await?;
        let result = self.create_locked(&new, &mut op).await;
        // A database an interrupted run of this create made, and this run did not use
        // (it failed, or the tenant went elsewhere): never left behind unowned.
        let made = op
            .resumed()
            .and_then(|r| r.detail.get("database"))
            .and_then(|d| d.as_str());
        if let Some(name) = made {
            let used_here = result
                .as_ref()
                .is_ok_and(|t| t.database.database_name().as_deref() == Some(name));
            if !used_here && self.control.tenant_using_database(name).await?.is_none() {
                self.drop_quietly(name).await;
            }
        }
        match &result {
            Ok(_) => op.finish("done").await,
            Err(e) => op.finish(&format!("failed: {e}")).await,
        }
        let tenant = result?;
        self.announce(HintOp::Upsert, &tenant.id, tenant.version)
            .await;
        Ok(tenant)
    }

    async fn create_locked(&self, new: &NewTenant, op: &mut Operation) -> Result<Tenant, OpError> {
        if self.control.get_tenant(&new.id).await?.is_some() {
            return Err(OpError::Conflict(format!(
                "a tenant '{}' already exists",
                new.id
            )));
        }
        // The database an interrupted create of this id made: it holds nothing but
        // migrations (the tenant was never committed, so never served).
        let made_before: Option<String> = op
            .resumed()
            .and_then(|r| r.detail.get("database"))
            .and_then(|d| d.as_str())
            .map(str::to_string);
        let leftover = self.control.leftover(&new.id).await?;
        let mut incarnation = None;
        let mut registered = false;
        let mut created_here: Option<String> = None;
        let (database, provisioned) = match (&leftover, new.isolation) {
            (Some(l), _) if !new.adopt => return Err(OpError::Conflict(leftover_message(l))),
            (Some(l), isolation) => {
                if l.isolation != isolation {
                    return Err(OpError::Conflict(format!(
                        "the kept data of tenant '{}' is {}; adopt it as {} and move it \
                         afterwards",
                        new.id,
                        l.isolation.as_str(),
                        l.isolation.as_str()
                    )));
                }
                if new.database.as_ref().is_some_and(|d| *d != l.database) {
                    return Err(OpError::Conflict(format!(
                        "the kept data of tenant '{}' is in another database; omit `database` \
                         to adopt it",
                        new.id
                    )));
                }
                incarnation = Some(l.incarnation);
                match isolation {
                    Isolation::Shared => {
                        let (db, url) = self.shared_db().await?;
                        db.register(&new.id).await?;
                        (url.clone(), false)
                    }
                    Isolation::Dedicated => {
                        let migrator = self
                            .migrations
                            .load()
                            .await
                            .map_err(OpError::Provisioning)?;
                        if let provision::MigrationOutcome::Failed(e) =
                            provision::migrate_tenant_with(&l.database, &migrator).await
                        {
                            return Err(OpError::Provisioning(anyhow::anyhow!(
                                "migrating the adopted database: {e}"
                            )));
                        }
                        crate::moving::lift_guard(&l.database, &self.schema).await?;
                        (l.database.clone(), l.provisioned)
                    }
                }
            }
            (None, Isolation::Shared) => {
                let (db, url) = self.shared_db().await?;
                registered = db.register(&new.id).await?;
                if !registered && !new.adopt && db.has_rows(&new.id, &self.schema).await? {
                    return Err(OpError::Conflict(format!(
                        "the shared database holds rows of tenant '{}' that no tenant owns; \
                         create it with \"adopt\": true to take them over, or delete them \
                         first (DELETE /admin/leftovers/{})",
                        new.id, new.id
                    )));
                }
                (url.clone(), false)
            }
            (None, Isolation::Dedicated) if new.database.is_some() => {
                // A database given by hand is adopted by saying so, unless another tenant
                // (or a removed tenant's kept data) has it.
                let database = new.database.clone().unwrap_or_else(|| unreachable!());
                self.check_database_free(&new.id, &database).await?;
                (database, false)
            }
            (None, Isolation::Dedicated) => {
                let name = provision::database_name(&new.id);
                if let Some(user) = self.control.tenant_using_database(&name).await? {
                    return Err(OpError::Conflict(format!(
                        "database '{name}' is already used by tenant '{user}'"
                    )));
                }
                let exists = provision::database_exists(&self.provision_server, &name).await?;
                let ours = made_before.as_deref() == Some(name.as_str());
                if exists && !ours && !new.adopt {
                    return Err(OpError::Conflict(format!(
                        "database '{name}' already exists on the provisioning server and \
                         belongs to no tenant (left by an earlier tenant, or made by hand); \
                         create with \"adopt\": true to take it over as this tenant's, or \
                         drop it first"
                    )));
                }
                // The journal says whether this create makes the database (and may drop it on
                // a rollback) or adopts one that was there (never dropped).
                let detail = if exists && !ours {
                    serde_json::json!({"adopting": name})
                } else {
                    serde_json::json!({"database": name})
                };
                op.step("provisioning", detail, None).await?;
                let migrator = self
                    .migrations
                    .load()
                    .await
                    .map_err(OpError::Provisioning)?;
                let made = provision::provision(&self.provision_server, &new.id, &migrator)
                    .await
                    .map_err(OpError::Provisioning)?;
                tracing::info!(tenant.id = %new.id, database = %made.database,
                    migrations = made.migrations, adopted = exists && !ours, "provisioned");
                if exists && !ours {
                    crate::moving::lift_guard(&made.database, &self.schema).await?;
                }
                if !exists || ours {
                    created_here = Some(name);
                }
                op.step("provisioned", serde_json::json!({}), None).await?;
                // An existing database adopted by hand was not made by the router: it is
                // never dropped by it.
                (made.database, !exists || ours)
            }
        };
        let spec = TenantSpec {
            id: new.id.clone(),
            hosts: new.hosts.clone(),
            database,
            provisioned,
            pool: new.pool,
            state: new.state,
            isolation: new.isolation,
            incarnation,
            rate_limit: new.rate_limit,
        };
        match self.control.write(&spec, WriteMode::Create).await {
            Ok(written) => {
                if incarnation.is_some() {
                    // Adopted: its jobs that waited for this run now.
                    #[cfg(feature = "jobs")]
                    if let Some((pool, ns)) = &self.redis {
                        let keys = crate::jobs::Keys::from(ns);
                        if let Err(e) = crate::jobs::wake_tenant(pool, &keys, &new.id).await {
                            tracing::warn!(tenant.id = %new.id, error = %e,
                                "the adopted tenant's waiting jobs run at their next look");
                        }
                    }
                }
                Ok(written.tenant)
            }
            Err(e) => {
                if let Some(name) = &created_here {
                    self.drop_quietly(name).await;
                }
                if registered && let Some((db, _)) = &self.shared {
                    let _ = db.unregister(&new.id).await;
                }
                Err(write_error(e, &new.id))
            }
        }
    }
}
