//! The declarative tenants file (`tenant-config/tenants.toml`) and its idempotent import.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use tenant_router::operations::{NewTenant, OpError, PoolRequest, TenantOps, TenantPatchRequest};
use tenant_router::tenant::{
    DatabaseUrl, Isolation, PoolSettings, RateLimit, Tenant, TenantHost, TenantId, TenantState,
};

/// The file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    /// The tenants, as `[[tenant]]` tables.
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<FileTenant>,
}

/// One `[[tenant]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTenant {
    /// The tenant's id.
    pub id: TenantId,
    /// Its hosts.
    pub hosts: Vec<TenantHost>,
    /// Its database; when absent, one is created on the provisioning server.
    pub database: Option<DatabaseUrl>,
    /// Pool settings.
    #[serde(default)]
    pub pool: PoolSettings,
    /// State.
    #[serde(default)]
    pub state: TenantState,
    /// `dedicated` (default) or `shared`; a shared tenant has no `database`.
    #[serde(default)]
    pub isolation: Isolation,
    /// Its own request rate limit (`[tenant.rate_limit]`); absent: the router's default.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

impl TenantsFile {
    /// Reads and validates a tenants file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading tenants file {}", path.display()))?;
        let file: Self = toml::from_str(&text)
            .with_context(|| format!("parsing tenants file {}", path.display()))?;
        for t in &file.tenants {
            anyhow::ensure!(!t.hosts.is_empty(), "tenant '{}' has no hosts", t.id);
            t.pool
                .validate()
                .with_context(|| format!("tenant '{}'", t.id))?;
            if let Some(limit) = &t.rate_limit {
                limit
                    .validate()
                    .with_context(|| format!("tenant '{}'", t.id))?;
            }
        }
        Ok(file)
    }
}

/// What importing one tenant did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// It was missing and was created (its database provisioned, if it has none).
    Created,
    /// It already looked like the file.
    Unchanged,
    /// It differed from the file and, with `force`, was made to look like it.
    Updated(Vec<String>),
    /// It differs from the file; nothing was changed (import without `force`).
    Drift(Vec<String>),
    /// It could not be created or updated; the reason.
    Refused(String),
}

/// One tenant's line of an import.
#[derive(Debug, Clone)]
pub struct ImportLine {
    /// The tenant.
    pub id: TenantId,
    /// What happened.
    pub outcome: ImportOutcome,
}

/// Imports every tenant of `file` through the same operations as the admin API: a missing
/// tenant is created (a database provisioned and migrated when the file names none; kept
/// data of a removed tenant is never adopted by an import). An existing tenant is compared
/// with the file: its state, hosts, pool settings, rate limit, where it lives. Differences
/// are reported and left alone, unless `force`, which applies state, hosts, pool and rate
/// limit; where the tenant lives (isolation, a database given in the file) is never changed
/// by an import, because that needs its data moved (`tenants move`). Running it twice
/// changes nothing the second time.
pub async fn import(
    ops: &TenantOps,
    file: &TenantsFile,
    force: bool,
) -> anyhow::Result<Vec<ImportLine>> {
    let mut lines = Vec::new();
    for t in &file.tenants {
        if t.database.is_some() && t.isolation == Isolation::Shared {
            anyhow::bail!(
                "tenant '{}': a shared tenant has no database of its own",
                t.id
            );
        }
    }
    for t in &file.tenants {
        let outcome = match ops.control().get_tenant(&t.id).await? {
            None => {
                let new = NewTenant {
                    id: t.id.clone(),
                    hosts: t.hosts.clone(),
                    database: t.database.clone(),
                    pool: t.pool,
                    state: t.state,
                    isolation: t.isolation,
                    adopt: false,
                    rate_limit: t.rate_limit,
                };
                match ops.create(new).await {
                    Ok(_) => ImportOutcome::Created,
                    Err(
                        e @ (OpError::Conflict(_) | OpError::Invalid(_) | OpError::NotFound(_)),
                    ) => ImportOutcome::Refused(e.to_string()),
                    Err(e) => {
                        return Err(
                            anyhow::Error::from(e).context(format!("importing tenant '{}'", t.id))
                        );
                    }
                }
            }
            Some(current) => compare(ops, t, &current, force).await?,
        };
        lines.push(ImportLine {
            id: t.id.clone(),
            outcome,
        });
    }
    Ok(lines)
}

async fn compare(
    ops: &TenantOps,
    t: &FileTenant,
    current: &Tenant,
    force: bool,
) -> anyhow::Result<ImportOutcome> {
    let mut fixed = Vec::new();
    let mut patch = TenantPatchRequest::default();
    let mut hosts: Vec<&str> = t.hosts.iter().map(|h| h.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let held: Vec<&str> = current.hosts.iter().map(|h| h.as_str()).collect();
    if hosts != held {
        fixed.push(format!(
            "hosts: {} (file: {})",
            held.join(","),
            hosts.join(",")
        ));
        patch.hosts = Some(hosts.iter().map(|h| h.to_string()).collect());
    }
    if t.state != current.state {
        fixed.push(format!(
            "state: {} (file: {})",
            current.state.as_str(),
            t.state.as_str()
        ));
        patch.state = Some(t.state.as_str().to_string());
    }
    if t.pool != current.pool {
        fixed.push(format!("pool: {:?} (file: {:?})", current.pool, t.pool));
        patch.pool = Some(PoolRequest {
            max_connections: Some(t.pool.max_connections),
            idle_timeout_secs: Some(t.pool.idle_timeout_secs),
            statement_timeout_ms: Some(t.pool.statement_timeout_ms),
            idle_in_transaction_timeout_ms: Some(t.pool.idle_in_transaction_timeout_ms),
        });
    }
    if t.rate_limit != current.rate_limit {
        fixed.push(format!(
            "rate_limit: {:?} (file: {:?})",
            current.rate_limit, t.rate_limit
        ));
        patch.rate_limit = Some(t.rate_limit);
    }
    let mut kept = Vec::new();
    if t.isolation != current.isolation {
        kept.push(format!(
            "isolation: {} (file: {}; an import never moves data: tenant-router tenants move {} --to {})",
            current.isolation.as_str(),
            t.isolation.as_str(),
            t.id,
            t.isolation.as_str()
        ));
    } else if t.database.as_ref().is_some_and(|d| *d != current.database) {
        kept.push(format!(
            "database: {} (file: {}; an import never repoints a tenant: tenant-router tenants update {} --database …)",
            current.database.redacted(),
            t.database.as_ref().map(|d| d.redacted()).unwrap_or_default(),
            t.id
        ));
    }
    if fixed.is_empty() && kept.is_empty() {
        return Ok(ImportOutcome::Unchanged);
    }
    if !force || fixed.is_empty() {
        fixed.extend(kept);
        return Ok(ImportOutcome::Drift(fixed));
    }
    match ops.update(&t.id, patch, Some(current.version)).await {
        Ok(_) => {
            if kept.is_empty() {
                Ok(ImportOutcome::Updated(fixed))
            } else {
                fixed.extend(kept.into_iter().map(|k| format!("NOT CHANGED {k}")));
                Ok(ImportOutcome::Updated(fixed))
            }
        }
        Err(e @ (OpError::Conflict(_) | OpError::Invalid(_) | OpError::Stale { .. })) => {
            Ok(ImportOutcome::Refused(e.to_string()))
        }
        Err(e) => Err(anyhow::Error::from(e).context(format!("updating tenant '{}'", t.id))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shipped_file() {
        let file = TenantsFile::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tenant-config/tenants.toml"),
        )
        .unwrap();
        let ids: Vec<_> = file.tenants.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["tenant-1", "tenant-2", "tenant-3"]);
        assert_eq!(file.tenants[2].isolation, Isolation::Shared);
    }

    #[test]
    fn rejects_bad_ids_and_unknown_keys() {
        let bad = |text: &str| toml::from_str::<TenantsFile>(text).is_err();
        assert!(bad("[[tenant]]\nid = \"Bad_Id\"\nhosts = [\"a.b\"]\n"));
        assert!(bad("[[tenant]]\nid = \"a\"\nhosts = [\"a.b:80\"]\n"));
        assert!(bad(
            "[[tenant]]\nid = \"a\"\nhosts = [\"a.b\"]\ndatabse = \"x\"\n"
        ));
        assert!(!bad("[[tenant]]\nid = \"a\"\nhosts = [\"A.B.\"]\n"));
        let limited: TenantsFile = toml::from_str(
            "[[tenant]]\nid = \"a\"\nhosts = [\"a.b\"]\n\
             [tenant.rate_limit]\nrequests_per_second = 50\nburst = 100\n",
        )
        .unwrap();
        assert_eq!(
            limited.tenants[0].rate_limit,
            Some(RateLimit {
                requests_per_second: 50,
                burst: 100
            })
        );
        assert!(bad(
            "[[tenant]]\nid = \"a\"\nhosts = [\"a.b\"]\n[tenant.rate_limit]\nrps = 5\n"
        ));
    }
}
