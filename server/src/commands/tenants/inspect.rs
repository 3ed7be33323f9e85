//! The tenant commands that only look: tenants, leftovers, unfinished operations.

use std::process::ExitCode;

use tenant_router::control::ControlDb;
use tenant_router_server::config::Settings;

use crate::commands::operations;

pub(super) async fn list(settings: &Settings) -> anyhow::Result<ExitCode> {
    let control = ControlDb::connect_lazy(settings.require_database_url()?);
    for t in control.load_tenants().await? {
        let hosts: Vec<&str> = t.hosts.iter().map(|h| h.as_str()).collect();
        println!(
            "{}\t{}\t{}\tv{}\t{}\t{}",
            t.id,
            t.state.as_str(),
            t.isolation.as_str(),
            t.version,
            hosts.join(","),
            t.database.redacted()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn leftovers(settings: &Settings) -> anyhow::Result<ExitCode> {
    let ops = operations(settings).await?;
    for l in ops.control().leftovers().await? {
        println!(
            "{}\tincarnation {}\t{}\tremoved at v{}\t{}",
            l.tenant_id,
            l.incarnation,
            l.isolation.as_str(),
            l.removed_version,
            l.database.redacted()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn doctor(settings: &Settings) -> anyhow::Result<ExitCode> {
    let ops = operations(settings).await?;
    let open = ops.control().unfinished_operations().await?;
    if open.is_empty() {
        println!("no unfinished operations");
    }
    let mut interrupted = 0;
    for (op, running) in &open {
        if !running {
            interrupted += 1;
        }
        println!(
            "{}\t{}\t{}\tstep {}\tsince {}{}",
            op.tenant_id,
            if *running { "running" } else { "INTERRUPTED" },
            op.kind,
            op.step,
            op.started_at,
            if *running {
                String::new()
            } else {
                format!("\t(tenant-router tenants repair {})", op.tenant_id)
            }
        );
    }
    Ok(if interrupted > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
