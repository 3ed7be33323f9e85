//! The admin API, on its own listener, every route behind `Authorization: Bearer <token>`
//! checked against the configured argon2 hash: tenants (list, show, create, change, remove)
//! and this instance's registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admin_token::AdminTokenHash;
use crate::app::auth::bearer_token;
use tenant_router::control::ControlDb;
use tenant_router::operations::{NewTenantRequest, TenantOps, TenantPatchRequest};
use tenant_router::problem::{ApiError, ApiJson, ApiPath, ApiQuery};
use tenant_router::registry::Registry;
use tenant_router::sync::{BusReport, ConfigSync};
use tenant_router::tenant::{Isolation, PoolSettings, Tenant, TenantId, TenantState};

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminState {
    /// This instance's registry.
    pub registry: Arc<Registry>,
    /// The control database.
    pub control: ControlDb,
    /// Tenant writes.
    pub ops: TenantOps,
    /// This instance's sync, for its bus report.
    pub sync: Option<Arc<ConfigSync>>,
    /// The token's hash; with none configured, every call is refused.
    pub token_hash: Option<Arc<AdminTokenHash>>,
    /// The shared database, for `GET /admin/shards`.
    pub shared: Option<tenant_router::shared::SharedDb>,
    /// SHA-256 of the last token argon2 accepted, so a client sending the same token again
    /// costs a hash, not another argon2 run. Compared in constant time.
    pub verified: Arc<Mutex<Option<[u8; 32]>>>,
    /// Argon2 behind its limit (shared with the app's logins).
    pub passwords: Arc<crate::app::auth::PasswordLimiter>,
    /// How argon2 checks of tokens are rationed.
    pub checking: Arc<TokenChecks>,
    /// The job queue, for dead and parked jobs; `None` without Redis.
    pub jobs: Option<tenant_router::jobs::JobQueue>,
}

/// The admin routes, with authentication.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/admin/tenants/{id}",
            get(show_tenant).patch(update_tenant).delete(remove_tenant),
        )
        .route("/admin/tenants/{id}/move", axum::routing::post(move_tenant))
        .route("/admin/leftovers", get(list_leftovers))
        .route(
            "/admin/leftovers/{id}",
            axum::routing::delete(discard_leftover),
        )
        .route("/admin/operations", get(list_operations))
        .route(
            "/admin/jobs/{which}",
            get(list_letters).delete(delete_tenant_letters),
        )
        .route(
            "/admin/jobs/{which}/{job_id}",
            axum::routing::delete(delete_letter),
        )
        .route(
            "/admin/jobs/{which}/{job_id}/retry",
            axum::routing::post(retry_letter),
        )
        .route("/admin/registry", get(registry))
        .route("/admin/shards", get(shards))
        .route("/admin/pools", get(pools))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How argon2 checks of admin tokens are rationed. A token argon2 accepted is remembered,
/// so only new tokens (the right one after a restart, and wrong ones) cost a check.
/// Each client address has its checks run one at a time (a burst of calls with a new token
/// pays it once), as its own caller in the fair password queue: a flood of wrong tokens
/// from some addresses delays the real administrator's check, from another, by one check
/// per flooding address at most, and cannot crowd out the app's logins. Each address may
/// also have [`TokenChecks::BURST`] checks at once, then one a second (a 429 beyond that).
pub struct TokenChecks {
    one_per_client: Mutex<HashMap<std::net::IpAddr, Arc<tokio::sync::Mutex<()>>>>,
    per_client: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
}

impl TokenChecks {
    /// Checks a client may make at once.
    pub const BURST: u32 = 10;
    /// Client addresses remembered before the idle ones are forgotten.
    const MAX_CLIENTS: usize = 10_000;
}

impl Default for TokenChecks {
    fn default() -> Self {
        let quota = governor::Quota::per_second(std::num::NonZeroU32::MIN).allow_burst(
            std::num::NonZeroU32::new(Self::BURST).unwrap_or(std::num::NonZeroU32::MIN),
        );
        Self {
            one_per_client: Mutex::default(),
            per_client: governor::RateLimiter::keyed(quota),
        }
    }
}

impl TokenChecks {
    /// Takes one of `client`'s checks, or tells how long until it has one.
    fn take(&self, client: std::net::IpAddr) -> Result<(), std::time::Duration> {
        use governor::clock::Clock as _;
        if self.per_client.len() > Self::MAX_CLIENTS {
            self.per_client.retain_recent();
        }
        self.per_client.check_key(&client).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::DefaultClock::default().now())
        })
    }

    /// The lock under which `client`'s checks run one at a time.
    fn lock_for(&self, client: std::net::IpAddr) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .one_per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if locks.len() > Self::MAX_CLIENTS {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        Arc::clone(locks.entry(client).or_default())
    }
}

async fn require_token(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer_token(req.headers()).map(str::to_string);
    let (Some(token), Some(hash)) = (token, state.token_hash.clone()) else {
        return Err(ApiError::Unauthorized);
    };
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let known = || {
        state
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|v| constant_time_eq(&v, &digest))
    };
    let valid = known() || {
        let client = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        if let Err(wait) = state.checking.take(client) {
            return Err(ApiError::TooManyRequests {
                detail: "too many admin token checks from this address; retry later".into(),
                retry_after: wait,
            });
        }
        let lock = state.checking.lock_for(client);
        let _one = lock.lock().await;
        known()
            || state
                .passwords
                .run(&format!("/admin/{client}"), move || hash.verify(&token))
                .await?
    };
    if valid {
        *state.verified.lock().unwrap_or_else(|e| e.into_inner()) = Some(digest);
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// A tenant as the admin API shows it: the database URL with its password masked.
#[derive(Debug, Serialize)]
pub struct TenantView {
    /// Id.
    pub id: TenantId,
    /// Hosts.
    pub hosts: Vec<String>,
    /// Database URL, password masked.
    pub database: String,
    /// Pool settings.
    pub pool: PoolSettings,
    /// State.
    pub state: TenantState,
    /// Dedicated or shared.
    pub isolation: Isolation,
    /// Version (also the `ETag`).
    pub version: i64,
    /// Incarnation: a new one each time the id is created anew.
    pub incarnation: i64,
    /// Its own request rate limit; absent: the router's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<tenant_router::tenant::RateLimit>,
    /// An operation on the tenant that has not finished: running, or interrupted (its
    /// process died; retry it or run `tenant-router tenants repair <id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<tenant_router::journal::Journaled>,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        Self {
            id: t.id.clone(),
            hosts: t.hosts.iter().map(|h| h.to_string()).collect(),
            database: t.database.redacted(),
            pool: t.pool,
            state: t.state,
            isolation: t.isolation,
            version: t.version,
            incarnation: t.incarnation,
            rate_limit: t.rate_limit,
            operation: None,
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct TenantPage {
    tenants: Vec<TenantView>,
    next_cursor: Option<TenantId>,
}

async fn list_tenants(
    State(state): State<AdminState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<TenantPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let after = q
        .cursor
        .filter(|c| !c.is_empty())
        .map(|c| TenantId::parse(&c))
        .transpose()
        .map_err(|_| ApiError::invalid("cursor", "is not a cursor this API returned"))?;
    let mut tenants = state
        .control
        .list_tenants(after.as_ref(), limit + 1)
        .await?;
    let next_cursor = if tenants.len() as i64 > limit {
        tenants.truncate(limit as usize);
        tenants.last().map(|t| t.id.clone())
    } else {
        None
    };
    Ok(Json(TenantPage {
        tenants: tenants.iter().map(TenantView::from).collect(),
        next_cursor,
    }))
}

/// A tenant with its version as the `ETag`, for `If-Match`.
fn tenant_response(status: StatusCode, tenant: &Tenant) -> Response {
    let mut response = (status, Json(TenantView::from(tenant))).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", tenant.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

fn parse_id(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(|_| ApiError::NotFound(format!("no tenant '{raw}'")))
}

async fn show_tenant(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let parsed = parse_id(&id)?;
    let tenant = state
        .control
        .get_tenant(&parsed)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no tenant '{id}'")))?;
    let mut view = TenantView::from(&tenant);
    view.operation = state.control.unfinished_operation(&parsed).await?;
    let mut response = (StatusCode::OK, Json(view)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", tenant.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

async fn list_leftovers(
    State(state): State<AdminState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let leftovers = state.control.leftovers().await?;
    Ok(Json(serde_json::json!({ "leftovers": leftovers })))
}

async fn discard_leftover(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = TenantId::parse(&id)
        .map_err(|_| ApiError::NotFound(format!("no kept data of tenant '{id}'")))?;
    let removal = state.ops.discard_leftover(&id).await?;
    Ok(Json(removal).into_response())
}

fn letters_of(which: &str) -> Result<tenant_router::jobs::Letters, ApiError> {
    match which {
        "dead" => Ok(tenant_router::jobs::Letters::Dead),
        "parked" => Ok(tenant_router::jobs::Letters::Parked),
        _ => Err(ApiError::NotFound(format!(
            "no job list '{which}' (there are 'dead' and 'parked')"
        ))),
    }
}

fn job_queue(state: &AdminState) -> Result<&tenant_router::jobs::JobQueue, ApiError> {
    state.jobs.as_ref().ok_or_else(|| {
        ApiError::Client(
            StatusCode::SERVICE_UNAVAILABLE,
            "background jobs are not configured on this server (they need Redis)".into(),
        )
    })
}

fn queue_error(e: tenant_router::jobs::QueueError) -> ApiError {
    match e {
        tenant_router::jobs::QueueError::Full(_) => {
            ApiError::Client(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        }
        tenant_router::jobs::QueueError::Kind(_) => ApiError::Conflict(e.to_string()),
        tenant_router::jobs::QueueError::Unavailable(_) => {
            ApiError::Client(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LettersQuery {
    tenant: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn tenant_filter(raw: Option<&str>) -> Result<Option<TenantId>, ApiError> {
    raw.filter(|t| !t.is_empty())
        .map(TenantId::parse)
        .transpose()
        .map_err(|e| ApiError::invalid("tenant", e.0))
}

/// `GET /admin/jobs/{dead|parked}?tenant=&limit=&cursor=`: oldest first.
async fn list_letters(
    State(state): State<AdminState>,
    ApiPath(which): ApiPath<String>,
    ApiQuery(q): ApiQuery<LettersQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let which = letters_of(&which)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let tenant = tenant_filter(q.tenant.as_deref())?;
    let cursor = q.cursor.filter(|c| !c.is_empty());
    if cursor.as_deref().is_some_and(|c| {
        !c.split_once('-')
            .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
    }) {
        return Err(ApiError::invalid(
            "cursor",
            "is not a cursor this API returned",
        ));
    }
    let (jobs, next_cursor) = job_queue(&state)?
        .letters(which, tenant.as_ref(), cursor.as_deref(), limit)
        .await
        .map_err(queue_error)?;
    Ok(Json(
        serde_json::json!({ "jobs": jobs, "next_cursor": next_cursor }),
    ))
}

/// `POST /admin/jobs/{dead|parked}/{job_id}/retry`: queued again for its own tenant.
async fn retry_letter(
    State(state): State<AdminState>,
    ApiPath((which, job_id)): ApiPath<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let which = letters_of(&which)?;
    let retried = job_queue(&state)?
        .retry_letter(which, &job_id)
        .await
        .map_err(queue_error)?
        .ok_or_else(|| ApiError::NotFound(format!("no such job '{job_id}' to retry")))?;
    Ok(Json(serde_json::json!({ "retried": retried })))
}

/// `DELETE /admin/jobs/{dead|parked}/{job_id}`.
async fn delete_letter(
    State(state): State<AdminState>,
    ApiPath((which, job_id)): ApiPath<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let which = letters_of(&which)?;
    let n = job_queue(&state)?
        .delete_letters(which, Some(&job_id), None)
        .await
        .map_err(queue_error)?;
    if n == 0 {
        return Err(ApiError::NotFound(format!("no such job '{job_id}'")));
    }
    Ok(Json(serde_json::json!({ "deleted": n })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantLettersQuery {
    tenant: String,
}

/// `DELETE /admin/jobs/{dead|parked}?tenant=`: every one of a tenant's.
async fn delete_tenant_letters(
    State(state): State<AdminState>,
    ApiPath(which): ApiPath<String>,
    ApiQuery(q): ApiQuery<TenantLettersQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let which = letters_of(&which)?;
    let tenant = tenant_filter(Some(&q.tenant))?
        .ok_or_else(|| ApiError::invalid("tenant", "is required"))?;
    let n = job_queue(&state)?
        .delete_letters(which, None, Some(&tenant))
        .await
        .map_err(queue_error)?;
    Ok(Json(serde_json::json!({ "deleted": n })))
}

#[derive(Serialize)]
struct OperationView {
    #[serde(flatten)]
    operation: tenant_router::journal::Journaled,
    running: bool,
}

async fn list_operations(
    State(state): State<AdminState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let open: Vec<OperationView> = state
        .control
        .unfinished_operations()
        .await?
        .into_iter()
        .map(|(operation, running)| OperationView { operation, running })
        .collect();
    Ok(Json(serde_json::json!({ "operations": open })))
}

async fn create_tenant(
    State(state): State<AdminState>,
    ApiJson(request): ApiJson<NewTenantRequest>,
) -> Result<Response, ApiError> {
    let new = request.validate().map_err(ApiError::Invalid)?;
    let tenant = state.ops.create(new).await?;
    let mut response = tenant_response(StatusCode::CREATED, &tenant);
    if let Ok(location) = HeaderValue::from_str(&format!("/admin/tenants/{}", tenant.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `If-Match: "7"` (or `7`, or `W/"7"`) is version 7; `*` or no header is no condition.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || ApiError::BadRequest("If-Match must be a tenant version, as in its ETag".into());
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse::<i64>().map(Some).map_err(|_| bad())
}

async fn update_tenant(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<TenantPatchRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let expected = if_match(&headers)?;
    let tenant = state.ops.update(&id, patch, expected).await?;
    Ok(tenant_response(StatusCode::OK, &tenant))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    to: String,
}

async fn move_tenant(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<MoveBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let to: Isolation = body
        .to
        .parse()
        .map_err(|e: tenant_router::tenant::InvalidValue| ApiError::invalid("to", e.0))?;
    let report = state.ops.move_tenant(&id, to).await?;
    Ok(Json(report).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    #[serde(default)]
    drop_database: bool,
}

async fn remove_tenant(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let removal = state.ops.remove(&id, q.drop_database).await?;
    Ok(Json(removal).into_response())
}

#[derive(Serialize)]
struct RegistryView {
    version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    bus: Option<BusReport>,
    tenants: Vec<RegistryTenant>,
}

#[derive(Serialize)]
struct RegistryTenant {
    id: TenantId,
    version: i64,
}

/// How many tenants `/admin/pools` and `/metrics` list one by one (the busiest).
const TOP_POOLS: usize = 20;

#[derive(Serialize)]
struct PoolsView {
    #[serde(flatten)]
    totals: tenant_router::pool::BudgetStats,
    top: Vec<tenant_router::pool::PoolStats>,
}

/// Connections per pool (the busiest [`TOP_POOLS`]) and in total, the budget, and the
/// eviction, wait and refusal counts.
async fn pools(State(state): State<AdminState>) -> Json<PoolsView> {
    let budget = state.registry.budget();
    Json(PoolsView {
        totals: budget.stats(),
        top: budget.top_pools(TOP_POOLS),
    })
}

/// The same figures in the Prometheus text format. Per-tenant series exist only for the
/// busiest [`TOP_POOLS`] pools, so the label cardinality stays bounded whatever the number
/// of tenants.
async fn metrics(State(state): State<AdminState>) -> Response {
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The shared database's topology (Citus nodes, tables, placements, tenant statistics), or
/// a plain statement that Citus is not installed.
async fn shards(State(state): State<AdminState>) -> Result<Json<serde_json::Value>, ApiError> {
    let shared = state.shared.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "no shared database is configured (TENANT_ROUTER_SHARED_DATABASE_URL)".into(),
        )
    })?;
    Ok(Json(shared.topology().await?))
}

/// This instance's applied version and each tenant's, to check convergence from outside.
async fn registry(State(state): State<AdminState>) -> Json<RegistryView> {
    let snapshot = state.registry.snapshot();
    let mut tenants: Vec<RegistryTenant> = snapshot
        .iter()
        .map(|e| RegistryTenant {
            id: e.tenant().id.clone(),
            version: e.tenant().version,
        })
        .collect();
    tenants.sort_by(|a, b| a.id.cmp(&b.id));
    Json(RegistryView {
        version: snapshot.version(),
        bus: state.sync.as_ref().map(|s| s.report()),
        tenants,
    })
}
