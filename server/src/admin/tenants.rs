//! `/admin/tenants`: list, show, create, change, move and remove tenants.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tenant_router::operations::{NewTenantRequest, TenantPatchRequest};
use tenant_router::problem::{ApiError, ApiJson, ApiPath, ApiQuery};
use tenant_router::tenant::{Isolation, PoolSettings, Tenant, TenantId, TenantState};

use super::AdminState;

/// A tenant as the admin API shows it: the database URL with its password masked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    /// Tenants whose id or one of whose hosts contains this (case-insensitive).
    q: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct TenantPage {
    tenants: Vec<TenantView>,
    next_cursor: Option<TenantId>,
}

/// Tenants by id, a page at a time (keyset: stable under concurrent writes).
#[utoipa::path(get, path = "/admin/tenants", tag = "tenants", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, description = "A page", body = TenantPage), (status = 422, description = "A bad limit, cursor or q", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
pub(super) async fn list_tenants(
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
    let search = q.q.map(|s| s.trim().to_ascii_lowercase());
    if let Some(s) = &search
        && (s.len() > 253 || s.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "q",
            "must be at most 253 characters, without control characters",
        ));
    }
    let mut tenants = state
        .control
        .list_tenants(after.as_ref(), limit + 1, search.as_deref())
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

/// One tenant, its version as the `ETag`, and an unfinished operation if any.
#[utoipa::path(get, path = "/admin/tenants/{id}", tag = "tenants", params(("id" = String, Path, description = "The tenant's id")), security(("bearer" = [])),
    responses((status = 200, description = "The tenant", body = TenantView), (status = 404, description = "No such tenant", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
pub(super) async fn show_tenant(
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

/// Creates a tenant: without `database`, its database is created and migrated first.
#[utoipa::path(post, path = "/admin/tenants", tag = "tenants", request_body = tenant_router::operations::NewTenantRequest, security(("bearer" = [])),
    responses((status = 201, description = "Created", body = TenantView),
        (status = 409, description = "The id or a host is taken, data is already there (adopt it), or an operation runs", body = tenant_router::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
pub(super) async fn create_tenant(
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

/// Changes a tenant; omitted fields are left alone. `If-Match: "<version>"` makes it
/// conditional.
#[utoipa::path(patch, path = "/admin/tenants/{id}", tag = "tenants", request_body = tenant_router::operations::TenantPatchRequest,
    params(("id" = String, Path, description = "The tenant's id"), ("If-Match" = Option<String>, Header, description = "The version it must still be, as in its ETag")), security(("bearer" = [])),
    responses((status = 200, description = "The tenant, changed", body = TenantView), (status = 404, description = "No such tenant", body = tenant_router::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A host is taken, or an operation runs", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 412, description = "The tenant is no longer that version", body = tenant_router::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
pub(super) async fn update_tenant(
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MoveBody {
    /// `dedicated` or `shared`.
    to: String,
}

/// Moves a tenant to its own database or to the shared one, copying its rows.
#[utoipa::path(post, path = "/admin/tenants/{id}/move", tag = "tenants", request_body = MoveBody, params(("id" = String, Path, description = "The tenant's id"), ("If-Match" = Option<String>, Header, description = "The version it must still be, as in its ETag")), security(("bearer" = [])),
    responses((status = 200, description = "Moved (or already there)", body = tenant_router::operations::MoveReport),
        (status = 404, description = "No such tenant", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 409, description = "An operation runs, or the move was refused", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 412, description = "The tenant is no longer that version", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 422, description = "A bad `to`", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
pub(super) async fn move_tenant(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MoveBody>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let expected = if_match(&headers)?;
    let to: Isolation = body
        .to
        .parse()
        .map_err(|e: tenant_router::tenant::InvalidValue| ApiError::invalid("to", e.0))?;
    let report = state.ops.move_tenant_if(&id, to, expected).await?;
    Ok(Json(report).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct RemoveQuery {
    /// Also drop its database (or delete its shared rows), Redis keys, jobs and files;
    /// without it they are kept as a leftover.
    #[serde(default)]
    drop_database: bool,
}

/// Removes a tenant; its data is kept as a leftover unless `drop_database=true`.
#[utoipa::path(delete, path = "/admin/tenants/{id}", tag = "tenants", params(("id" = String, Path, description = "The tenant's id"), RemoveQuery, ("If-Match" = Option<String>, Header, description = "The version it must still be, as in its ETag")), security(("bearer" = [])),
    responses((status = 200, description = "Removed", body = tenant_router::operations::Removal),
        (status = 404, description = "No such tenant", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 409, description = "An operation runs", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 412, description = "The tenant is no longer that version", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
pub(super) async fn remove_tenant(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let expected = if_match(&headers)?;
    let removal = state.ops.remove_if(&id, q.drop_database, expected).await?;
    Ok(Json(removal).into_response())
}
