//! The one error type of the HTTP API, rendered as `application/problem+json` (RFC 9457).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One invalid field of a request body, named so a client can show it next to the input.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name, as in the request.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400, with what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 401; the same answer whatever the cause, so it reveals nothing.
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409, with what it conflicts with.
    #[error("{0}")]
    Conflict(String),
    /// 422, naming each invalid field.
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    /// Any other client error whose status a rejection already chose (413, 415, ...).
    #[error("{1}")]
    Client(StatusCode, String),
    /// 503 for one tenant whose database cannot be reached right now.
    #[error("the tenant's database is unavailable")]
    TenantUnavailable,
    /// 503 for one tenant that is moving, or has moved away from where this instance sent
    /// the request; the instance refreshes its routing (see [`StaleRouting`]).
    #[error("the tenant is moving; retry")]
    TenantMoved,
    /// 503 for a suspended tenant.
    #[error("this tenant is suspended")]
    Suspended,
    /// 429: the client is over a rate limit; retry after the given time.
    #[error("{detail}")]
    TooManyRequests {
        /// What was limited.
        detail: String,
        /// When to come back (sent as whole seconds, at least 1).
        retry_after: std::time::Duration,
    },
    /// 503: a shared resource (password hashing, say) is at its limit; retry shortly.
    #[error("{0}")]
    Overloaded(String),
    /// 500. The cause is logged once, here, and never shown to the client.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 422 for one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    /// The status code this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Client(status, _) => *status,
            Self::TenantUnavailable | Self::TenantMoved | Self::Suspended | Self::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_moved(&e) {
            tracing::info!(error = %e, "tenant moved away from where it was routed");
            Self::TenantMoved
        } else if is_unavailable(&e) {
            tracing::warn!(error = %e, "tenant database unavailable");
            Self::TenantUnavailable
        } else {
            Self::Internal(e.into())
        }
    }
}

/// Marks a response whose tenant was found moved away from where the request was routed:
/// the tenant layer then asks the registry's sync to catch up
/// ([`crate::registry::Registry::suspect_stale`]).
#[derive(Debug, Clone, Copy)]
pub struct StaleRouting;

/// True for the errors that mean the tenant's rows are no longer served from here: a move's
/// guard (57P03 with its message; see `crate::moving`), or a database that no longer exists.
pub fn is_moved(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("57P03") => {
                db.message().contains("has moved") || db.message().contains("moved or removed")
            }
            // The database is gone: the tenant was removed (and purged) or moved.
            Some("3D000") => true,
            _ => false,
        },
        _ => false,
    }
}

/// True for errors that mean "the database cannot be reached", as opposed to a bad query.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => true,
        // 57P01..57P03: admin shutdown, crash shutdown, cannot connect now (also what a
        // database a tenant moved out of answers to writes); 3D000: no database; 23503: a
        // row referenced a moment ago is gone (a tenant moving, a user deleted): retryable;
        // 57014: a statement cancelled by its `statement_timeout`; 25P03: a transaction
        // ended by `idle_in_transaction_session_timeout`.
        E::Database(db) => matches!(
            db.code().as_deref(),
            Some("57P01" | "57P02" | "57P03" | "3D000" | "53300" | "23503" | "57014" | "25P03")
        ),
        _ => false,
    }
}

/// The body of every error response, as `application/problem+json` (RFC 9457).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// With 422: each invalid field and what is wrong with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// Builds a problem response with any status; for middleware that has no `ApiError`.
pub fn problem_response(status: StatusCode, detail: impl Into<String>) -> Response {
    render(status, detail.into(), None)
}

fn render(status: StatusCode, detail: String, errors: Option<&[FieldError]>) -> Response {
    let body = Problem {
        problem_type: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").into(),
        status: status.as_u16(),
        detail,
        errors: errors.map(<[FieldError]>::to_vec),
    };
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                render(status, "an internal error occurred".into(), None)
            }
            Self::Invalid(errors) => render(status, self.to_string(), Some(errors)),
            Self::Suspended => {
                let mut response = render(status, self.to_string(), None);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("300"));
                response
            }
            Self::TooManyRequests { retry_after, .. } => {
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                let mut response = render(status, self.to_string(), None);
                if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            Self::Overloaded(_) => {
                let mut response = render(status, self.to_string(), None);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Self::TenantMoved => {
                let mut response = render(status, self.to_string(), None);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response.extensions_mut().insert(StaleRouting);
                response
            }
            Self::TenantUnavailable => {
                let mut response = render(status, self.to_string(), None);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
            _ => render(status, self.to_string(), None),
        }
    }
}

/// `axum::Json`, but a body it cannot read is a problem response: 400 for broken JSON, 415
/// without a JSON content type, 413 past the body limit, 422 when fields do not fit.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Invalid(vec![FieldError::new(
                "body",
                e.body_text(),
            )])),
            Err(e) => Err(ApiError::Client(e.status(), e.body_text())),
        }
    }
}

/// `axum::extract::Query` with problem responses (400).
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}

/// `axum::extract::Path` with problem responses (400 for a segment of the wrong type).
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e: PathRejection| ApiError::Client(e.status(), e.body_text()))
    }
}
