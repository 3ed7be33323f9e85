//! The declarative tenants file (`tenant-config/tenants.toml`) and its idempotent import.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use crate::control::{ControlDb, TenantSpec, UpsertOutcome};
use crate::provision::{self, MigrationOutcome};
use crate::shared::SharedDb;
use crate::tenant::{DatabaseUrl, Isolation, PoolSettings, TenantHost, TenantId, TenantState};

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
        }
        Ok(file)
    }
}

/// What importing one tenant did.
#[derive(Debug)]
pub struct ImportLine {
    /// The tenant.
    pub id: TenantId,
    /// Its control-database write.
    pub outcome: UpsertOutcome,
    /// Its database's migration, for tenants the import provisioned.
    pub migration: Option<MigrationOutcome>,
}

/// Imports every tenant of `file`. Tenants without a database get one on `provision_server`,
/// created if missing and migrated. Running it twice changes nothing the second time.
pub async fn import(
    control: &ControlDb,
    provision_server: &DatabaseUrl,
    file: &TenantsFile,
    migrator: &sqlx::migrate::Migrator,
    shared: Option<(&SharedDb, &DatabaseUrl)>,
) -> anyhow::Result<Vec<ImportLine>> {
    let mut lines = Vec::new();
    for t in &file.tenants {
        let (database, provisioned, migration) = match (&t.database, t.isolation) {
            (Some(_), Isolation::Shared) => {
                anyhow::bail!(
                    "tenant '{}': a shared tenant has no database of its own",
                    t.id
                )
            }
            (None, Isolation::Shared) => {
                let (db, url) = shared.with_context(|| {
                    format!(
                        "tenant '{}' is shared, but no shared database is configured",
                        t.id
                    )
                })?;
                db.prepare().await?;
                db.register(&t.id).await?;
                (url.clone(), false, None)
            }
            (Some(url), Isolation::Dedicated) => (url.clone(), false, None),
            (None, Isolation::Dedicated) => {
                let name = provision::database_name(&t.id);
                provision::create_database_if_missing(provision_server, &name).await?;
                let url = provision_server.with_database(&name);
                let outcome = provision::migrate_tenant_with(&url, migrator).await;
                if let MigrationOutcome::Failed(e) = &outcome {
                    anyhow::bail!("migrating tenant '{}': {e}", t.id);
                }
                (url, true, Some(outcome))
            }
        };
        let spec = TenantSpec {
            id: t.id.clone(),
            hosts: t.hosts.clone(),
            database,
            provisioned,
            pool: t.pool,
            state: t.state,
            isolation: t.isolation,
        };
        let outcome = control
            .upsert(&spec)
            .await
            .with_context(|| format!("importing tenant '{}'", t.id))?;
        lines.push(ImportLine {
            id: t.id.clone(),
            outcome,
            migration,
        });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shipped_file() {
        let file = TenantsFile::load(Path::new("tenant-config/tenants.toml")).unwrap();
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
    }
}
