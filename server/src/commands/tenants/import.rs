//! `tenants import`: a declarative tenants file, applied or compared.

use std::process::ExitCode;

use tenant_router_server::config::Settings;
use tenant_router_server::tenants_file::{self, ImportOutcome, TenantsFile};

use crate::commands::operations;

pub(in crate::commands) async fn import(
    settings: &Settings,
    path: &std::path::Path,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let file = TenantsFile::load(path)?;
    let ops = operations(settings).await?;
    let lines = tenants_file::import(&ops, &file, force).await?;
    let mut refused = 0;
    for line in &lines {
        match &line.outcome {
            ImportOutcome::Created => println!("{}: created", line.id),
            ImportOutcome::Unchanged => println!("{}: unchanged", line.id),
            ImportOutcome::Updated(what) => {
                println!("{}: updated: {}", line.id, what.join("; "))
            }
            ImportOutcome::Drift(what) => {
                println!(
                    "{}: differs from the file, left alone (--force applies it): {}",
                    line.id,
                    what.join("; ")
                )
            }
            ImportOutcome::Refused(why) => {
                refused += 1;
                eprintln!("{}: refused: {why}", line.id)
            }
        }
    }
    Ok(if refused > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
