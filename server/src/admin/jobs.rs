//! `/admin/jobs/{dead|parked}`: dead and parked jobs, listed, retried, deleted.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use tenant_router::problem::{ApiError, ApiPath, ApiQuery};
use tenant_router::tenant::TenantId;

use super::AdminState;

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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LettersQuery {
    tenant: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// A page of dead or parked jobs.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct LetterPage {
    jobs: Vec<tenant_router::jobs::Letter>,
    /// Pass as `cursor` for the next page; absent on the last.
    next_cursor: Option<String>,
}

/// A retried job.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Retried {
    retried: tenant_router::jobs::Letter,
}

/// How many entries were deleted.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Deleted {
    deleted: u64,
}

fn tenant_filter(raw: Option<&str>) -> Result<Option<TenantId>, ApiError> {
    raw.filter(|t| !t.is_empty())
        .map(TenantId::parse)
        .transpose()
        .map_err(|e| ApiError::invalid("tenant", e.0))
}

#[utoipa::path(get, path = "/admin/jobs/{which}", tag = "jobs", params(("which" = String, Path, description = "`dead` or `parked`"), LettersQuery), security(("bearer" = [])),
    responses((status = 200, description = "Oldest first", body = LetterPage), (status = 404, description = "No such list", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 422, description = "A bad tenant, limit or cursor", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
/// `GET /admin/jobs/{dead|parked}?tenant=&limit=&cursor=`: oldest first.
pub(super) async fn list_letters(
    State(state): State<AdminState>,
    ApiPath(which): ApiPath<String>,
    ApiQuery(q): ApiQuery<LettersQuery>,
) -> Result<Json<LetterPage>, ApiError> {
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
    Ok(Json(LetterPage { jobs, next_cursor }))
}

#[utoipa::path(post, path = "/admin/jobs/{which}/{job_id}/retry", tag = "jobs", params(("which" = String, Path, description = "`dead` or `parked`"), ("job_id" = String, Path, description = "The job's id")), security(("bearer" = [])),
    responses((status = 200, description = "Queued again for its own tenant", body = Retried), (status = 404, description = "No such job (or one being retried)", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 409, description = "Its kind is not known here", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
/// `POST /admin/jobs/{dead|parked}/{job_id}/retry`: queued again for its own tenant.
pub(super) async fn retry_letter(
    State(state): State<AdminState>,
    ApiPath((which, job_id)): ApiPath<(String, String)>,
) -> Result<Json<Retried>, ApiError> {
    let which = letters_of(&which)?;
    let retried = job_queue(&state)?
        .retry_letter(which, &job_id)
        .await
        .map_err(queue_error)?
        .ok_or_else(|| ApiError::NotFound(format!("no such job '{job_id}' to retry")))?;
    Ok(Json(Retried { retried }))
}

#[utoipa::path(delete, path = "/admin/jobs/{which}/{job_id}", tag = "jobs", params(("which" = String, Path, description = "`dead` or `parked`"), ("job_id" = String, Path, description = "The job's id")), security(("bearer" = [])),
    responses((status = 200, description = "Deleted", body = Deleted), (status = 404, description = "No such job", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
/// `DELETE /admin/jobs/{dead|parked}/{job_id}`.
pub(super) async fn delete_letter(
    State(state): State<AdminState>,
    ApiPath((which, job_id)): ApiPath<(String, String)>,
) -> Result<Json<Deleted>, ApiError> {
    let which = letters_of(&which)?;
    let n = job_queue(&state)?
        .delete_letters(which, Some(&job_id), None)
        .await
        .map_err(queue_error)?;
    if n == 0 {
        return Err(ApiError::NotFound(format!("no such job '{job_id}'")));
    }
    Ok(Json(Deleted { deleted: n as u64 }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantLettersQuery {
    tenant: String,
}

#[utoipa::path(delete, path = "/admin/jobs/{which}", tag = "jobs", params(("which" = String, Path, description = "`dead` or `parked`"), TenantLettersQuery), security(("bearer" = [])),
    responses((status = 200, description = "Deleted", body = Deleted), (status = 404, description = "No such list", body = tenant_router::problem::Problem, content_type = "application/problem+json"), (status = 422, description = "A bad tenant", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::AdminProblems))]
/// `DELETE /admin/jobs/{dead|parked}?tenant=`: every one of a tenant's.
pub(super) async fn delete_tenant_letters(
    State(state): State<AdminState>,
    ApiPath(which): ApiPath<String>,
    ApiQuery(q): ApiQuery<TenantLettersQuery>,
) -> Result<Json<Deleted>, ApiError> {
    let which = letters_of(&which)?;
    let tenant = tenant_filter(Some(&q.tenant))?
        .ok_or_else(|| ApiError::invalid("tenant", "is required"))?;
    let n = job_queue(&state)?
        .delete_letters(which, None, Some(&tenant))
        .await
        .map_err(queue_error)?;
    Ok(Json(Deleted { deleted: n as u64 }))
}
