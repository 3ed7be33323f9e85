//! Removing a tenant, and purging what a removal kept: its database or shared rows, Redis
//! keys and jobs, files.

use anyhow::Context as _;
use serde::Serialize;

use super::{OpError, TenantOps};
use crate::bus::HintOp;
use crate::control::Leftover;
use crate::journal::Operation;
use crate::provision;
use crate::tenant::{Isolation, TenantId};

/// What a removal did.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Removal {
    /// The removed tenant.
    pub id: TenantId,
    /// The version of the removal.
    pub version: i64,
    /// Whether its database was dropped (or its shared rows deleted).
    pub database_dropped: bool,
    /// Whether everything else of it was deleted: Redis keys, jobs, files. False when no
    /// Redis is configured here: its Redis keys, if it had any, are still there (remove it
    /// again where Redis is configured, or `tenants purge` there).
    pub purged: bool,
    /// What the purge removed from Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<crate::namespace::Purged>,
}

impl TenantOps {
    /// Whether the Redis part of a purge happened; says so in the log when it could not.
    fn redis_purged(&self, id: &TenantId, redis: &Option<crate::namespace::Purged>) -> bool {
        if redis.is_none() && self.redis.is_none() {
            tracing::warn!(tenant.id = %id,
                "no Redis is configured here: the removed tenant's Redis keys, if any, were not deleted");
            return false;
        }
        true
    }

    /// Removes a tenant. Without `purge`, everything of it stays (its database or shared
    /// rows, Redis keys, jobs, files) as a [`Leftover`] that only an explicit adopt brings
    /// back. With `purge`, all of it is deleted: a database only when the router created it,
    /// once no instance holds a connection to it, or after [`DROP_WAIT`](super::DROP_WAIT).
    /// A removal killed half-way is completed by retrying it.
    pub async fn remove(&self, id: &TenantId, purge: bool) -> Result<Removal, OpError> {
        self.remove_if(id, purge, None).await
    }

    /// [`TenantOps::remove`], only while the tenant is at version `expected` (when given):
    /// checked under the tenant's operation lock, so a tenant removed and created again
    /// since the caller looked is not the one removed ([`OpError::Stale`]). A retry of an
    /// interrupted removal completes it whatever the version.
    pub async fn remove_if(
        &self,
        id: &TenantId,
        purge: bool,
        expected: Option<i64>,
    ) -> Result<Removal, OpError> {
        let mut op = self
            .control
            .begin_operation(id, "remove", serde_json::json!({"purge": purge}))
            .await?;
        let resumed = op.resumed().cloned();
        let purge = purge
            || resumed
                .as_ref()
                .is_some_and(|r| r.detail.get("purge") == Some(&serde_json::Value::Bool(true)));
        let resuming = resumed.is_some();
        let result = self
            .remove_locked(id, purge, resuming, expected, &mut op)
            .await;
        match &result {
            Ok(_) => op.finish("done").await,
            // Nothing was done: the journal closes. Anything half-done leaves it open.
            Err(e @ (OpError::NotFound(_) | OpError::Conflict(_) | OpError::Stale { .. }))
                if !resuming =>
            {
                op.finish(&format!("refused: {e}")).await
            }
            Err(e) => {
                tracing::error!(tenant.id = %id, error = %e,
                    "a removal stopped half-way; retry it to complete it");
                op.abandon().await;
            }
        }
        result
    }

    async fn remove_locked(
        &self,
        id: &TenantId,
        purge: bool,
        resuming: bool,
        expected: Option<i64>,
        op: &mut Operation,
    ) -> Result<Removal, OpError> {
        let current = self.control.get_tenant(id).await?;
        if let (Some(t), Some(expected), false) = (&current, expected, resuming)
            && t.version != expected
        {
            return Err(OpError::Stale { current: t.version });
        }
        let version = match &current {
            Some(t) => {
                if purge
                    && t.isolation == Isolation::Dedicated
                    && !self.control.is_provisioned(id).await?
                {
                    return Err(OpError::Conflict(format!(
                        "tenant '{id}' uses a database tenant-router did not create; it is \
                         never dropped (remove it without drop_database)"
                    )));
                }
                let removed = self
                    .control
                    .delete(id)
                    .await?
                    .ok_or_else(|| OpError::NotFound(id.to_string()))?;
                self.announce(HintOp::Remove, id, removed.version).await;
                op.step(
                    "removed",
                    serde_json::json!({"version": removed.version}),
                    None,
                )
                .await?;
                removed.version
            }
            // A removal killed after its commit: finish what it started, announcing it
            // again in case it died before it could.
            None if resuming => {
                let version = self
                    .control
                    .leftover(id)
                    .await?
                    .map_or(0, |l| l.removed_version);
                self.announce(HintOp::Remove, id, version).await;
                version
            }
            None => return Err(OpError::NotFound(id.to_string())),
        };
        if !purge {
            return Ok(Removal {
                id: id.clone(),
                version,
                database_dropped: false,
                purged: false,
                redis: None,
            });
        }
        let Some(leftover) = self.control.leftover(id).await? else {
            return Ok(Removal {
                id: id.clone(),
                version,
                database_dropped: false,
                purged: true,
                redis: None,
            });
        };
        let (database_dropped, redis) = self.purge_leftover(id, &leftover).await?;
        Ok(Removal {
            id: id.clone(),
            version,
            database_dropped,
            purged: self.redis_purged(id, &redis),
            redis,
        })
    }

    /// Deletes what a removal kept (see [`Self::remove`]): `DELETE /admin/leftovers/{id}`.
    pub async fn discard_leftover(&self, id: &TenantId) -> Result<Removal, OpError> {
        let op = self
            .control
            .begin_operation(id, "remove", serde_json::json!({"purge": true}))
            .await?;
        let result = async {
            if self.control.get_tenant(id).await?.is_some() {
                return Err(OpError::Conflict(format!(
                    "tenant '{id}' exists; remove it with DELETE /admin/tenants/{id}?drop_database=true"
                )));
            }
            let leftover = match self.control.leftover(id).await? {
                Some(l) => l,
                None => {
                    // Rows in the shared schema that no leftover records (a crashed create
                    // or move of an earlier version): deletable too.
                    let has_rows = match &self.shared {
                        Some(_) => self.shared_db().await?.0.has_rows(id, &self.schema).await?,
                        None => false,
                    };
                    if !has_rows {
                        return Err(OpError::NotFound(format!("{id} (no kept data)")));
                    }
                    let rows = self.shared_db().await?.0.purge(id, &self.schema).await?;
                    tracing::info!(tenant.id = %id, rows, "deleted unowned shared rows");
                    return Ok(Removal {
                        id: id.clone(),
                        version: 0,
                        database_dropped: true,
                        purged: true,
                        redis: None,
                    });
                }
            };
            let (database_dropped, redis) = self.purge_leftover(id, &leftover).await?;
            Ok(Removal {
                id: id.clone(),
                version: leftover.removed_version,
                database_dropped,
                purged: self.redis_purged(id, &redis),
                redis,
            })
        }
        .await;
        match &result {
            Ok(_) => op.finish("done").await,
            Err(e) => op.finish(&format!("failed: {e}")).await,
        }
        result
    }

    /// Deletes the data of a removed incarnation: its database (when the router made it) or
    /// shared rows, its Redis keys and jobs, its files; then forgets the leftover.
    async fn purge_leftover(
        &self,
        id: &TenantId,
        leftover: &Leftover,
    ) -> Result<(bool, Option<crate::namespace::Purged>), OpError> {
        let mut database_dropped = false;
        match leftover.isolation {
            Isolation::Shared => {
                let (db, _) = self.shared_db().await?;
                let rows = db.purge(id, &self.schema).await.map_err(|e| {
                    OpError::Other(e.context(format!(
                        "tenant '{id}' was removed, but its shared rows could not be deleted; \
                         retry the removal"
                    )))
                })?;
                tracing::info!(tenant.id = %id, rows, "purged a shared tenant's rows");
                database_dropped = true;
            }
            Isolation::Dedicated if leftover.provisioned => {
                let name = leftover
                    .database
                    .database_name()
                    .context("the provisioned database URL names no database")?
                    .to_string();
                let users = self.control.database_users(&name).await?;
                if let Some((user, _)) = users.iter().find(|(user, _)| user != id.as_str()) {
                    return Err(OpError::Conflict(format!(
                        "database '{name}' of the removed tenant '{id}' is now used by tenant \
                         '{user}'; it is not dropped"
                    )));
                }
                self.wait_until_unused(&name).await;
                provision::drop_database(&self.provision_server, &name)
                    .await
                    .map_err(|e| {
                        OpError::Other(e.context(format!(
                            "tenant '{id}' was removed, but its database could not be \
                             dropped; retry the removal"
                        )))
                    })?;
                database_dropped = true;
            }
            Isolation::Dedicated => {}
        }
        let redis = match &self.redis {
            Some((pool, ns)) => Some(
                purge_redis(pool, ns, id, leftover.incarnation)
                    .await
                    .map_err(|e| {
                        OpError::Other(anyhow::anyhow!(
                            "tenant '{id}' was removed, but its Redis keys could not be \
                             deleted ({e}); retry the removal"
                        ))
                    })?,
            ),
            None => None,
        };
        if let Some(dir) = &self.files_dir {
            let path = dir.join(id.as_str());
            match tokio::fs::remove_dir_all(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(OpError::Other(anyhow::anyhow!(
                        "tenant '{id}' was removed, but its files ({}) could not be deleted \
                         ({e}); retry the removal",
                        path.display()
                    )));
                }
            }
        }
        self.control
            .forget_leftover(id, leftover.incarnation)
            .await?;
        Ok((database_dropped, redis))
    }
}

/// Everything of a removed incarnation in Redis: with jobs, its streams and letters too.
async fn purge_redis(
    pool: &deadpool_redis::Pool,
    ns: &crate::namespace::RedisNamespace,
    id: &TenantId,
    incarnation: i64,
) -> Result<crate::namespace::Purged, String> {
    #[cfg(feature = "jobs")]
    {
        crate::jobs::purge_tenant(pool, &crate::jobs::Keys::from(ns), id, Some(incarnation))
            .await
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "jobs"))]
    {
        let _ = incarnation;
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        let keys = crate::namespace::purge(&mut conn, ns, id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(crate::namespace::Purged {
            keys,
            ..Default::default()
        })
    }
}
