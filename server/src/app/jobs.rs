//! `/api/jobs`: submit a background job for the current tenant and user, and follow it.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppConfig;
use super::auth::AuthUser;
use tenant_router::jobs::{JobQueue, JobStatus, KindError, QueueError};
use tenant_router::middleware::CurrentTenant;
use tenant_router::problem::{ApiError, ApiJson, ApiPath, FieldError};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SubmitBody {
    kind: String,
    #[serde(default = "empty_object")]
    payload: Value,
    /// Not before this time (RFC 3339), at most 7 days ahead.
    run_at: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Submitted {
    job_id: String,
    status_url: String,
}

pub(super) fn queue(config: &AppConfig) -> Result<&JobQueue, ApiError> {
    config.jobs.as_ref().ok_or_else(|| {
        ApiError::Client(
            StatusCode::SERVICE_UNAVAILABLE,
            "background jobs are not configured on this server (they need Redis)".into(),
        )
    })
}

/// Submits `kind` for the tenant and user; 202 with where to follow it.
pub(super) async fn submit_as(
    queue: &JobQueue,
    tenant: &CurrentTenant,
    user: AuthUser,
    kind: &str,
    payload: Value,
    run_at: Option<i64>,
) -> Result<Response, ApiError> {
    let job_id = match queue
        .submit(tenant.tenant(), kind, payload, Some(user.user_id), run_at)
        .await
    {
        Ok(id) => id,
        Err(QueueError::Kind(KindError::UnknownKind)) => {
            return Err(ApiError::Invalid(vec![FieldError::new(
                "kind",
                format!(
                    "unknown job kind; known: {}",
                    queue.kinds().names().join(", ")
                ),
            )]));
        }
        Err(QueueError::Kind(KindError::BadPayload(e))) => {
            let field = if e.field == "payload" {
                e.field
            } else {
                format!("payload.{}", e.field)
            };
            return Err(ApiError::invalid(&field, e.message));
        }
        Err(QueueError::Full(n)) => {
            let mut response = tenant_router::problem::problem_response(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this tenant has {n} jobs queued or delayed, its most; retry once some have run"
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return Ok(response);
        }
        Err(QueueError::Unavailable(msg)) => {
            tracing::warn!(error = %msg, "job queue unavailable");
            return Err(ApiError::Client(
                StatusCode::SERVICE_UNAVAILABLE,
                "the job queue is unavailable; retry later".into(),
            ));
        }
    };
    let status_url = format!("/api/jobs/{job_id}");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Submitted {
            job_id,
            status_url: status_url.clone(),
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// Submits a job for this tenant, run by a worker in this tenant's context.
#[utoipa::path(post, path = "/api/jobs", tag = "jobs", request_body = SubmitBody, security(("bearer" = [])),
    responses((status = 202, description = "Queued; `Location` is its status", body = Submitted), (status = 401, description = "No valid bearer token", body = tenant_router::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "No such job kind", body = tenant_router::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = tenant_router::problem::Problem, content_type = "application/problem+json"), crate::openapi::TenantProblems))]
pub(super) async fn submit(
    State(config): State<std::sync::Arc<AppConfig>>,
    tenant: CurrentTenant,
    user: AuthUser,
    ApiJson(body): ApiJson<SubmitBody>,
) -> Result<Response, ApiError> {
    let run_at = body.run_at.as_deref().map(parse_run_at).transpose()?;
    submit_as(
        queue(&config)?,
        &tenant,
        user,
        &body.kind,
        body.payload,
        run_at,
    )
    .await
}

fn parse_run_at(text: &str) -> Result<i64, ApiError> {
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|_| {
            ApiError::invalid(
                "run_at",
                "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z",
            )
        })?
        .timestamp_millis();
    let latest = chrono::Utc::now().timestamp_millis() + 7 * 86_400_000;
    if at > latest {
        return Err(ApiError::invalid("run_at", "must be at most 7 days ahead"));
    }
    Ok(at)
}

#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "The job's id")), security(("bearer" = [])),
    responses((status = 200, description = "The job's status", body = tenant_router::jobs::JobStatus), (status = 401, description = "No valid bearer token", body = tenant_router::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job of this user", body = tenant_router::problem::Problem, content_type = "application/problem+json"),
        crate::openapi::TenantProblems))]
/// A job's status; 404 for a job of another tenant (it is not in this tenant's namespace)
/// or of another user.
pub(super) async fn status(
    State(config): State<std::sync::Arc<AppConfig>>,
    tenant: CurrentTenant,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobStatus>, ApiError> {
    let found = queue(&config)?
        .status_for(tenant.tenant(), &id)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "job queue unavailable");
            ApiError::Client(
                StatusCode::SERVICE_UNAVAILABLE,
                "the job queue is unavailable; retry later".into(),
            )
        })?;
    match found {
        Some(status) if status.user_id == Some(user.user_id) => Ok(Json(status)),
        _ => Err(ApiError::NotFound("no such job".into())),
    }
}
