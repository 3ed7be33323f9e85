//! The tenant commands that change tenants, through the same operations as the admin API.

use std::process::ExitCode;

use tenant_router::operations::{NewTenantRequest, TenantPatchRequest};
use tenant_router::problem::FieldError;
use tenant_router::tenant::Isolation;
use tenant_router_server::admin::TenantView;
use tenant_router_server::config::Settings;

use crate::commands::{invalid, operations, parse_id, report};

pub(super) async fn add(
    settings: &Settings,
    request: NewTenantRequest,
) -> anyhow::Result<ExitCode> {
    let new = match request.validate() {
        Ok(new) => new,
        Err(errors) => return Ok(invalid(&errors)),
    };
    let result = operations(settings).await?.create(new).await;
    report(result.map(|t| TenantView::from(&t)))
}

pub(super) async fn update(
    settings: &Settings,
    id: String,
    patch: TenantPatchRequest,
    if_match: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(e) => return report::<TenantView>(Err(e)),
    };
    let result = operations(settings)
        .await?
        .update(&id, patch, if_match)
        .await;
    report(result.map(|t| TenantView::from(&t)))
}

pub(super) async fn move_tenant(
    settings: &Settings,
    id: String,
    to: String,
) -> anyhow::Result<ExitCode> {
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(e) => return report::<TenantView>(Err(e)),
    };
    let to = match to.parse::<Isolation>() {
        Ok(to) => to,
        Err(e) => return Ok(invalid(&[FieldError::new("--to", e.0)])),
    };
    let result = operations(settings).await?.move_tenant(&id, to).await;
    report(result)
}

pub(super) async fn remove(
    settings: &Settings,
    id: String,
    drop_database: bool,
) -> anyhow::Result<ExitCode> {
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(e) => return report::<TenantView>(Err(e)),
    };
    let result = operations(settings).await?.remove(&id, drop_database).await;
    report(result)
}

pub(super) async fn purge(settings: &Settings, id: String) -> anyhow::Result<ExitCode> {
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(e) => return report::<TenantView>(Err(e)),
    };
    let result = operations(settings).await?.discard_leftover(&id).await;
    report(result)
}

pub(super) async fn repair(settings: &Settings, id: String) -> anyhow::Result<ExitCode> {
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(e) => return report::<TenantView>(Err(e)),
    };
    let result = operations(settings).await?.repair(&id).await;
    report(result)
}
