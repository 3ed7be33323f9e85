//! `tenants isolate`: a shared tenant's own shard, under the tenant's operation lock.

use std::process::ExitCode;

use anyhow::Context as _;
use tenant_router::control::ControlDb;
use tenant_router::operations::OpError;
use tenant_router::shared::SharedDb;
use tenant_router::tenant::{Isolation, TenantId};
use tenant_router_server::admin::TenantView;
use tenant_router_server::config::Settings;

use crate::commands::report;

pub(super) async fn isolate(settings: &Settings, id: String) -> anyhow::Result<ExitCode> {
    let control = ControlDb::connect_lazy(settings.require_database_url()?);
    let found = match TenantId::parse(&id) {
        Ok(parsed) => control.get_tenant(&parsed).await?,
        Err(_) => None,
    };
    let Some(tenant) = found else {
        return report::<TenantView>(Err(OpError::NotFound(id)));
    };
    if tenant.isolation != Isolation::Shared {
        eprintln!(
            "error: tenant '{id}' has a database of its own; only shared tenants have shards"
        );
        return Ok(ExitCode::from(2));
    }
    let url = settings
        .shared_database()
        .context("no shared database is configured")?;
    let lock = match control.lock_tenant(&tenant.id).await {
        Ok(lock) => lock,
        Err(e) => return report::<TenantView>(Err(OpError::from(e))),
    };
    let shard = SharedDb::connect_lazy(&url)
        .isolate(&tenant.id, &tenant_router_server::schema::schema())
        .await;
    lock.finish("").await;
    let shard = shard?;
    println!(
        "{}",
        serde_json::json!({ "tenant": tenant.id, "shard": shard })
    );
    Ok(ExitCode::SUCCESS)
}
