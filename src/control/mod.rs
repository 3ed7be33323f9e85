//! The control database: where tenants are stored, and the only writer of their versions.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::tenant::DatabaseUrl;

mod changes;
mod leftovers;
mod tenants;
mod wildcards;
mod write;

pub use changes::{Change, Changes};
pub use leftovers::{Leftover, Removed};
pub use write::{TenantSpec, UpsertOutcome, WriteError, WriteMode, Written};

/// Migrations of the control database (`migrations/control/`).
pub static CONTROL_MIGRATOR: Migrator = sqlx::migrate!("./migrations/control");

/// A handle on the control database.
#[derive(Clone)]
pub struct ControlDb {
    pool: PgPool,
    url: DatabaseUrl,
    base_domain: Option<std::sync::Arc<str>>,
}

impl ControlDb {
    /// Connects (lazily) to the control database.
    pub fn connect_lazy(url: &DatabaseUrl) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(url.connect_options().application_name("tenant-router"));
        Self {
            pool,
            url: url.clone(),
            base_domain: None,
        }
    }

    /// Hosts `<id>.<base_domain>` are the wildcard hosts of tenant `<id>`: no other tenant
    /// may claim one (see [`WriteError::WildcardTaken`]).
    pub fn with_base_domain(mut self, base_domain: Option<&str>) -> Self {
        self.base_domain = base_domain
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .map(std::sync::Arc::from);
        self
    }

    /// The base domain of wildcard hosts, if any.
    pub fn base_domain(&self) -> Option<&str> {
        self.base_domain.as_deref()
    }

    /// Records this writer's base domain in the control database, so writers configured
    /// without one enforce the same wildcard rule. Says so when it replaces another.
    pub async fn remember_base_domain(&self) -> anyhow::Result<()> {
        let Some(base) = self.base_domain.as_deref() else {
            return Ok(());
        };
        let before: Option<String> = sqlx::query_scalar(
            "WITH old AS (SELECT value FROM control_settings WHERE key = 'base_domain')
             INSERT INTO control_settings (key, value) VALUES ('base_domain', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
             RETURNING (SELECT value FROM old)",
        )
        .bind(base)
        .fetch_one(&self.pool)
        .await
        .context("recording the base domain")?;
        if let Some(before) = before.filter(|b| b != base) {
            tracing::warn!(before = %before, now = %base,
                "the control database's base domain changed: instances disagree on it");
        }
        Ok(())
    }

    /// A connection of its own, outside the pool: for a lock held across slow work
    /// (provisioning), which must not take a pooled connection that the work itself needs.
    pub async fn dedicated_connection(&self) -> anyhow::Result<sqlx::PgConnection> {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect_with(
            &self
                .url
                .connect_options()
                .application_name("tenant-router-lock"),
        )
        .await
        .context("connecting to the control database")
    }

    /// Its URL.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the control database's migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        CONTROL_MIGRATOR
            .run(&self.pool)
            .await
            .context("migrating the control database")
    }

    /// True when a trivial query succeeds.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}
