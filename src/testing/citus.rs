//! A Citus cluster of our own: PostgreSQL servers with Citus preloaded, one coordinator and
//! two workers.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;
use sqlx::{Connection, PgConnection};

use super::postgres::{LocalPostgres, postgres_bin_dir};
use super::supervisor::tail;
use crate::tenant::DatabaseUrl;

/// Where Citus would be for the PostgreSQL we run: `citus.so` in its library directory
/// (`pg_config --pkglibdir`, else `../lib` beside the binaries). `Err` says why it is not.
pub fn citus_library() -> Result<PathBuf, String> {
    let bin_dir = postgres_bin_dir().map_err(|e| format!("{e:#}"))?;
    let lib_dir = Command::new(bin_dir.join("pg_config"))
        .arg("--pkglibdir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| bin_dir.with_file_name("lib"));
    let so = lib_dir.join("citus.so");
    if so.is_file() {
        Ok(so)
    } else {
        Err(format!(
            "citus.so is not in {} (the library directory of the PostgreSQL in {})",
            lib_dir.display(),
            bin_dir.display()
        ))
    }
}

/// A throwaway Citus cluster of our own: a coordinator and two workers, each a
/// [`LocalPostgres`] with Citus preloaded. Citus keeps its metadata per database, so each
/// [`LocalCitus::create_database`] is a cluster of its own: the database on every node, the
/// extension in each, the workers registered with the coordinator. Tests share the servers
/// and stay apart by database.
pub struct LocalCitus {
    coordinator: LocalPostgres,
    workers: Vec<LocalPostgres>,
}

/// The server settings of every node.
const CITUS_SETTINGS: &[(&str, &str)] = &[
    ("shared_preload_libraries", "citus"),
    // Tenant isolation and shard moves copy with logical replication.
    ("wal_level", "logical"),
    // `citus_stat_tenants` counts only when tracking is on, and only a superuser may turn
    // it on.
    ("citus.stat_tenants_track", "all"),
];

/// The defaults plus Citus, where the server has the setting (see [`knows_setting`]).
const OUTPUT_PLUGINS: (&str, &str) = ("output_plugin_libraries", "pgoutput, test_decoding, citus");

/// Whether the PostgreSQL we run has setting `name` (`postgres --describe-config`).
fn knows_setting(name: &str) -> bool {
    postgres_bin_dir()
        .ok()
        .and_then(|bin| {
            Command::new(bin.join("postgres"))
                .arg("--describe-config")
                .output()
                .ok()
        })
        .filter(|o| o.status.success())
        .is_some_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|line| line.split('\t').next() == Some(name))
        })
}

impl LocalCitus {
    /// Starts a coordinator and two workers on free ports. Fails, saying why, when Citus is
    /// not installed ([`citus_library`]).
    pub async fn start_ephemeral() -> anyhow::Result<Self> {
        citus_library().map_err(anyhow::Error::msg)?;
        let mut settings = CITUS_SETTINGS.to_vec();
        // PostgreSQL 15.20 and later name the libraries allowed as logical decoding output
        // plugins, and Citus's own (tenant isolation, shard moves) is not among the
        // defaults. An older server refuses to start with a setting it does not know.
        if knows_setting(OUTPUT_PLUGINS.0) {
            settings.push(OUTPUT_PLUGINS);
        }
        let (coordinator, w1, w2) = tokio::try_join!(
            LocalPostgres::start_ephemeral_with(&settings),
            LocalPostgres::start_ephemeral_with(&settings),
            LocalPostgres::start_ephemeral_with(&settings),
        )?;
        let citus = Self {
            coordinator,
            workers: vec![w1, w2],
        };
        // The roles shared mode switches to, allowed to log in on every node, as
        // docker-compose's `citus-setup` makes them. Roles belong to a server, not to a
        // database: were they made by the first test database's `migrate`, a later
        // database's `citus_add_node` could copy a state read before the `LOGIN` onto the
        // workers.
        for node in std::iter::once(&citus.coordinator).chain(&citus.workers) {
            let mut conn =
                PgConnection::connect_with(&node.url("postgres").connect_options()).await?;
            for role in crate::shared::ROLES {
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("creating role {role} on port {}", node.port))?;
            }
            let _ = conn.close().await;
        }
        Ok(citus)
    }

    /// The coordinator, where the router connects.
    pub fn coordinator(&self) -> &LocalPostgres {
        &self.coordinator
    }

    /// The workers.
    pub fn workers(&self) -> &[LocalPostgres] {
        &self.workers
    }

    /// Creates database `name` on every node with the citus extension, registers the
    /// workers with the coordinator, and returns its URL on the coordinator.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<DatabaseUrl> {
        for node in std::iter::once(&self.coordinator).chain(&self.workers) {
            let url = node.create_database(name).await?;
            let mut conn = PgConnection::connect_with(&url.connect_options()).await?;
            sqlx::query("CREATE EXTENSION IF NOT EXISTS citus")
                .execute(&mut conn)
                .await
                .with_context(|| format!("creating the citus extension on port {}", node.port))?;
            let _ = conn.close().await;
        }
        let url = self.coordinator.url(name);
        let mut conn = PgConnection::connect_with(&url.connect_options()).await?;
        sqlx::query("SELECT citus_set_coordinator_host('127.0.0.1', $1)")
            .bind(i32::from(self.coordinator.port))
            .execute(&mut conn)
            .await
            .context("citus_set_coordinator_host")?;
        for worker in &self.workers {
            // `citus_add_node` is idempotent, and its connection to the worker has failed
            // once in CI ("failure on connection marked as essential") while other tests
            // were busy on the same servers: try again, and say what the servers logged.
            let mut attempt = 0;
            loop {
                attempt += 1;
                match sqlx::query("SELECT citus_add_node('127.0.0.1', $1)")
                    .bind(i32::from(worker.port))
                    .execute(&mut conn)
                    .await
                {
                    Ok(_) => break,
                    Err(e) if attempt < 5 => {
                        tracing::warn!(port = worker.port, error = %e, "citus_add_node failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "citus_add_node for port {} ({attempt} attempts)\n--- worker log ---\n{}\n--- coordinator log ---\n{}",
                            worker.port,
                            tail(&worker.log_path()),
                            tail(&self.coordinator.log_path()),
                        )));
                    }
                }
            }
        }
        let _ = conn.close().await;
        Ok(url)
    }
}
