//! The connection figures: `/admin/pools` as JSON, `/metrics` for Prometheus.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AdminState;

/// How many tenants `/admin/pools` and `/metrics` list one by one (the busiest).
const TOP_POOLS: usize = 20;

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct PoolsView {
    #[serde(flatten)]
    totals: tenant_router::pool::BudgetStats,
    top: Vec<tenant_router::pool::PoolStats>,
}

#[utoipa::path(get, path = "/admin/pools", tag = "instance", security(("bearer" = [])),
    responses((status = 200, description = "Connections in total and of the busiest pools", body = PoolsView), crate::openapi::AdminProblems))]
/// Connections per pool (the busiest [`TOP_POOLS`]) and in total, the budget, and the
/// eviction, wait and refusal counts.
pub(super) async fn pools(State(state): State<AdminState>) -> Json<PoolsView> {
    let budget = state.registry.budget();
    Json(PoolsView {
        totals: budget.stats(),
        top: budget.top_pools(TOP_POOLS),
    })
}

#[utoipa::path(get, path = "/metrics", tag = "instance", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"), crate::openapi::AdminProblems))]
/// The same figures in the Prometheus text format, then the recorder's histograms. Per-tenant series exist only for the
/// busiest [`TOP_POOLS`] pools, so the label cardinality stays bounded whatever the number
/// of tenants.
pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    use std::fmt::Write as _;
    let budget = state.registry.budget();
    let s = budget.stats();
    let snapshot = state.registry.snapshot();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "tenant_router_connections_budget",
        "gauge",
        "Most tenant connections open at once.",
        s.max_total_connections.to_string(),
    );
    metric(
        "tenant_router_connections_open",
        "gauge",
        "Open tenant connections.",
        s.open.to_string(),
    );
    metric(
        "tenant_router_connections_idle",
        "gauge",
        "Idle tenant connections.",
        s.idle.to_string(),
    );
    metric(
        "tenant_router_connections_in_use",
        "gauge",
        "Tenant connections in use.",
        s.in_use.to_string(),
    );
    metric(
        "tenant_router_pools",
        "gauge",
        "Tenant pools that exist.",
        s.pools.to_string(),
    );
    metric(
        "tenant_router_connections_opened_total",
        "counter",
        "Tenant connections opened.",
        s.opened_total.to_string(),
    );
    metric(
        "tenant_router_connections_closed_total",
        "counter",
        "Tenant connections closed.",
        s.closed_total.to_string(),
    );
    metric(
        "tenant_router_pool_evictions_total",
        "counter",
        "Idle connections closed to make room for another tenant.",
        s.evictions_total.to_string(),
    );
    metric(
        "tenant_router_pool_waits_total",
        "counter",
        "Acquires that waited for a connection.",
        s.waits_total.to_string(),
    );
    metric(
        "tenant_router_pool_refusals_total",
        "counter",
        "Acquires that gave up (503).",
        s.refusals_total.to_string(),
    );
    metric(
        "tenant_router_tenants",
        "gauge",
        "Tenants in the registry.",
        snapshot.len().to_string(),
    );
    metric(
        "tenant_router_registry_version",
        "gauge",
        "The configuration version applied.",
        snapshot.version().to_string(),
    );
    let _ = writeln!(
        out,
        "# HELP tenant_router_tenant_connections_open Open connections of the busiest pools.\n# TYPE tenant_router_tenant_connections_open gauge"
    );
    for p in budget.top_pools(TOP_POOLS) {
        let _ = writeln!(
            out,
            "tenant_router_tenant_connections_open{{tenant=\"{}\"}} {}",
            p.pool, p.open
        );
    }
    // The histograms (requests, pool waits, jobs, propagation) from the metrics recorder.
    out.push_str(&crate::telemetry::prometheus().render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
