//! Creating tenant databases on the provisioning server, and migrating them.

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::tenant::{DatabaseUrl, Tenant, TenantId};

/// Where tenant migrations come from.
#[derive(Debug, Clone)]
pub enum TenantMigrations {
    /// Built into the binary (`sqlx::migrate!`): the app schema's own
    /// ([`crate::schema::TenantSchema::dedicated_migrations`]).
    Embedded(&'static Migrator),
    /// A directory of `<version>_<name>.sql` files, read each time they are needed, so a fixed
    /// migration is picked up without a restart.
    Dir(std::path::PathBuf),
}

impl PartialEq for TenantMigrations {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Embedded(a), Self::Embedded(b)) => std::ptr::eq(*a, *b),
            (Self::Dir(a), Self::Dir(b)) => a == b,
            _ => false,
        }
    }
}

impl TenantMigrations {
    /// The migrator.
    pub async fn load(&self) -> anyhow::Result<Arc<Migrator>> {
        match self {
            Self::Embedded(migrator) => Ok(Arc::new(Migrator {
                migrations: migrator.migrations.clone(),
                ..Migrator::DEFAULT
            })),
            Self::Dir(dir) => Migrator::new(dir.as_path())
                .await
                .map(Arc::new)
                .with_context(|| format!("reading tenant migrations from {}", dir.display())),
        }
    }
}

/// The database name a provisioned tenant gets: `tenant_` and the id with `-` as `_`. Ids are
/// `[a-z0-9-]`, so this is injective; ids too long for PostgreSQL's 63-byte limit keep a
/// prefix and a hash of the whole id.
pub fn database_name(id: &TenantId) -> String {
    let name = format!("tenant_{}", id.as_str().replace('-', "_"));
    if name.len() <= 63 {
        return name;
    }
    let hash = Sha256::digest(id.as_str().as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}_{hex}", &name[..46])
}

/// Quotes an SQL identifier. Callers pass validated names; quoting is the second guard.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates `name` on the server of `server` unless it exists. Returns whether it created it.
pub async fn create_database_if_missing(server: &DatabaseUrl, name: &str) -> anyhow::Result<bool> {
    let mut conn = PgConnection::connect_with(&server.connect_options())
        .await
        .with_context(|| format!("connecting to the provisioning server {server}"))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if exists {
        return Ok(false);
    }
    let sql = format!("CREATE DATABASE {}", quote_ident(name));
    match sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
    {
        Ok(_) => Ok(true),
        // 42P04 duplicate_database: another process created it between our check and now.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating database {name}")),
    }
}

/// How a tenant's migration went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationOutcome {
    /// Migrations were applied (how many).
    Migrated(usize),
    /// Nothing was pending.
    Current,
    /// It failed; the message says why (credentials redacted).
    Failed(String),
}

/// Applies pending migrations of `migrator` to one database.
pub async fn migrate_tenant_with(database: &DatabaseUrl, migrator: &Migrator) -> MigrationOutcome {
    match try_migrate(database, migrator).await {
        Ok(0) => MigrationOutcome::Current,
        Ok(n) => MigrationOutcome::Migrated(n),
        Err(e) => MigrationOutcome::Failed(format!("{e:#}")),
    }
}

/// Migrates every tenant, `jobs` at a time. One failure does not stop the others; the result
/// has one line per tenant, in the order given.
pub async fn migrate_all(
    tenants: &[Tenant],
    migrator: Arc<Migrator>,
    jobs: usize,
) -> Vec<(TenantId, MigrationOutcome)> {
    migrate_all_with_progress(tenants, migrator, jobs, |_, _| {}).await
}

/// [`migrate_all`], calling `progress(done, outcome)` as each tenant finishes.
pub async fn migrate_all_with_progress(
    tenants: &[Tenant],
    migrator: Arc<Migrator>,
    jobs: usize,
    mut progress: impl FnMut(usize, &MigrationOutcome),
) -> Vec<(TenantId, MigrationOutcome)> {
    let limit = Arc::new(Semaphore::new(jobs.max(1)));
    let mut set = JoinSet::new();
    for (i, tenant) in tenants.iter().enumerate() {
        let limit = Arc::clone(&limit);
        let database = tenant.database.clone();
        let migrator = Arc::clone(&migrator);
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (i, migrate_tenant_with(&database, &migrator).await)
        });
    }
    let mut outcomes: Vec<Option<MigrationOutcome>> = vec![None; tenants.len()];
    let mut done = 0;
    while let Some(joined) = set.join_next().await {
        done += 1;
        match joined {
            Ok((i, outcome)) => {
                progress(done, &outcome);
                outcomes[i] = Some(outcome);
            }
            Err(e) => tracing::error!(error = %e, "a migration task panicked"),
        }
    }
    tenants
        .iter()
        .zip(outcomes)
        .map(|(t, o)| {
            let o =
                o.unwrap_or_else(|| MigrationOutcome::Failed("the migration task panicked".into()));
            (t.id.clone(), o)
        })
        .collect()
}

/// True when every migration of `migrator` is applied to `database` with the same checksum:
/// one connection and one query, instead of the migrator's lock and checks.
async fn is_current(database: &DatabaseUrl, migrator: &Migrator) -> anyhow::Result<bool> {
    let mut conn = PgConnection::connect_with(&database.connect_options())
        .await
        .with_context(|| format!("connecting to {database}"))?;
    let applied: Option<Vec<(i64, Vec<u8>)>> = match sqlx::query_as(
        "SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    {
        Ok(rows) => Some(rows),
        // No migrations table yet: not current.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => None,
        Err(e) => return Err(e.into()),
    };
    let _ = conn.close().await;
    let Some(applied) = applied else {
        return Ok(false);
    };
    let wanted: Vec<(i64, Vec<u8>)> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.checksum.to_vec()))
        .collect();
    Ok(applied == wanted)
}

async fn try_migrate(database: &DatabaseUrl, migrator: &Migrator) -> anyhow::Result<usize> {
    if is_current(database, migrator).await? {
        return Ok(0);
    }
    // A one-connection pool rather than a bare connection: `Migrator::run` on `&mut
    // PgConnection` produces a future that cannot be spawned (sqlx's `Acquire` lifetimes).
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(database.connect_options())
        .await
        .with_context(|| format!("connecting to {database}"))?;
    let result = async {
        let before = applied_count(&pool).await?;
        migrator.run(&pool).await.context("applying migrations")?;
        let after = applied_count(&pool).await?;
        anyhow::Ok(after.saturating_sub(before))
    }
    .await;
    pool.close().await;
    result
}

async fn applied_count(pool: &PgPool) -> anyhow::Result<usize> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(0);
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    Ok(n as usize)
}

/// A database made for a tenant.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// Its URL (credentials of the provisioning server).
    pub database: DatabaseUrl,
    /// Migrations applied.
    pub migrations: usize,
    /// False when it already existed (left behind by an attempt that crashed) and was adopted.
    pub created: bool,
}

/// Creates the tenant's database on `server` and applies every migration. On failure, a
/// database this call created is dropped again, so a retry starts clean.
pub async fn provision(
    server: &DatabaseUrl,
    id: &TenantId,
    migrator: &Migrator,
) -> anyhow::Result<Provisioned> {
    let name = database_name(id);
    let created = create_database_if_missing(server, &name).await?;
    let database = server.with_database(&name);
    match try_migrate(&database, migrator).await {
        Ok(migrations) => Ok(Provisioned {
            database,
            migrations,
            created,
        }),
        Err(e) => {
            if created && let Err(drop_error) = drop_database(server, &name).await {
                tracing::error!(database = %name, error = %format!("{drop_error:#}"),
                        "could not drop a half-provisioned database");
            }
            Err(e.context(format!("migrating the new database {name}")))
        }
    }
}

/// Drops `name` on `server` if it exists, ending any session still connected to it.
pub async fn drop_database(server: &DatabaseUrl, name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(&server.connect_options())
        .await
        .with_context(|| format!("connecting to the provisioning server {server}"))?;
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .with_context(|| format!("dropping database {name}"))?;
    Ok(())
}

/// Sessions other than ours connected to database `name` on `server`.
pub async fn sessions_on(server: &DatabaseUrl, name: &str) -> anyhow::Result<i64> {
    let mut conn = PgConnection::connect_with(&server.connect_options())
        .await
        .with_context(|| format!("connecting to the provisioning server {server}"))?;
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await?)
}

/// True when database `name` exists on `server`.
pub async fn database_exists(server: &DatabaseUrl, name: &str) -> anyhow::Result<bool> {
    let mut conn = PgConnection::connect_with(&server.connect_options())
        .await
        .with_context(|| format!("connecting to the provisioning server {server}"))?;
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_differ() {
        let a = TenantId::parse("tenant-1").unwrap();
        assert_eq!(database_name(&a), "tenant_tenant_1");
        let long1 = TenantId::parse(&format!("{}a", "x".repeat(62))).unwrap();
        let long2 = TenantId::parse(&format!("{}b", "x".repeat(62))).unwrap();
        assert!(database_name(&long1).len() <= 63);
        assert_ne!(database_name(&long1), database_name(&long2));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
