//! `migrate`: the control database, the shared one, then every tenant's, with progress.

use std::process::ExitCode;

use anyhow::Context as _;
use tenant_router::control::ControlDb;
use tenant_router::provision::{self, MigrationOutcome};
use tenant_router::shared::SharedDb;
use tenant_router::tenant::Isolation;
use tenant_router_server::config::Settings;

pub(crate) async fn run(settings: &Settings, jobs: usize) -> anyhow::Result<ExitCode> {
    let control = ControlDb::connect_lazy(settings.require_database_url()?);
    control.migrate().await?;
    println!("control database: migrated");
    let (tenants, shared): (Vec<_>, Vec<_>) = control
        .load_tenants()
        .await?
        .into_iter()
        .partition(|t| t.isolation == Isolation::Dedicated);
    if !shared.is_empty() {
        let url = settings
            .shared_database()
            .context("shared tenants exist, but no shared database is configured")?;
        let prepared = SharedDb::connect_lazy(&url)
            .prepare(&tenant_router_server::schema::schema())
            .await?;
        println!(
            "shared database ({} shared tenants): migrated{}",
            shared.len(),
            if prepared.citus { ", on Citus" } else { "" }
        );
    }
    let migrator = settings.tenant_migrations.load().await?;
    let total = tenants.len();
    let started = std::time::Instant::now();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = std::time::Instant::now();
    let (mut ok, mut bad) = (0, 0);
    let outcomes =
        provision::migrate_all_with_progress(&tenants, migrator, jobs, |done, outcome| {
            if matches!(outcome, MigrationOutcome::Failed(_)) {
                bad += 1;
            } else {
                ok += 1;
            }
            if terminal {
                // A bar on a terminal, redrawn in place.
                let width = 30;
                let filled = done * width / total.max(1);
                eprint!(
                    "\r[{}{}] {done}/{total} ({bad} failed)",
                    "#".repeat(filled),
                    ".".repeat(width - filled)
                );
                if done == total {
                    eprintln!();
                }
            } else if done == total || last_line.elapsed() >= std::time::Duration::from_secs(2) {
                // Periodic lines otherwise (logs, CI).
                last_line = std::time::Instant::now();
                eprintln!(
                    "progress: {done}/{total} tenants ({ok} ok, {bad} failed, {:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
        })
        .await;
    let (mut migrated, mut current, mut failed) = (0, 0, Vec::new());
    for (id, outcome) in &outcomes {
        match outcome {
            MigrationOutcome::Migrated(n) => {
                migrated += 1;
                println!("{id}: migrated ({n} applied)");
            }
            MigrationOutcome::Current => {
                current += 1;
                println!("{id}: already current");
            }
            MigrationOutcome::Failed(e) => {
                failed.push(id.to_string());
                println!("{id}: FAILED: {e}");
            }
        }
    }
    println!(
        "summary: {migrated} migrated, {current} already current, {} failed{}",
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        }
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
