//! Login on the apex host (`test.com`): finds a shared tenant's user by email, without a
//! tenant name, and answers with that tenant's host and a token for it.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tower::ServiceExt as _;

use super::users::issue_token;
use tenant_router::host;
use tenant_router::problem::{ApiError, ApiJson, problem_response};
use tenant_router::registry::Registry;
use tenant_router::shared::TenantDb;
use tenant_router::tenant::{Isolation, TenantId, TenantState};

/// At most this many tenants are tried for one email (each costs an argon2 check).
const MAX_CANDIDATES: usize = 10;

/// The apex login's name in the password limiter's queue (no tenant id has a `/`).
const APEX: &str = "/apex";

/// What the apex routes need.
#[derive(Clone)]
pub struct ApexState {
    /// The apex host, canonical.
    pub host: Arc<str>,
    /// The tenants.
    pub registry: Arc<Registry>,
    /// The shared database (searched as the `tenant_router_apex` role).
    pub shared: PgPool,
    /// Token lifetime.
    pub session_ttl: Duration,
    /// Argon2 behind its limit.
    pub passwords: Arc<super::auth::PasswordLimiter>,
}

/// Sends requests for the apex host to the apex routes; everything else goes on.
pub async fn dispatch(State(apex): State<ApexState>, req: Request, next: Next) -> Response {
    let raw = req
        .headers()
        .get(axum::http::header::HOST)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let is_apex = host::normalize(raw).is_ok_and(|h| *h == *apex.host);
    if !is_apex || !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let router = Router::new()
        .route("/api/login", post(login))
        .fallback(|| async {
            problem_response(
                StatusCode::NOT_FOUND,
                "the apex host serves POST /api/login only; use your tenant's host",
            )
        })
        .with_state(apex);
    match router.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct LoginBody {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct Choice {
    tenant: TenantId,
    host: String,
}

#[derive(Serialize)]
struct LoggedIn {
    tenant: TenantId,
    host: String,
    token: String,
    expires_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct Choose {
    detail: &'static str,
    tenants: Vec<Choice>,
}

/// Every user with this email, in any shared tenant: read as the apex role, whose only grant
/// is this lookup.
async fn lookup(shared: &PgPool, email: &str) -> Result<Vec<(String, i64, String)>, sqlx::Error> {
    let mut tx = shared.begin().await?;
    // On Citus the workers are queried as this role too (it may log in there; see
    // `shared::ROLES`).
    sqlx::query("SET LOCAL ROLE tenant_router_apex")
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query_as(
        "SELECT tenant_id, id, password_hash FROM users WHERE lower(email) = lower($1)
         ORDER BY tenant_id LIMIT $2",
    )
    .bind(email)
    .bind(MAX_CANDIDATES as i64)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

async fn login(
    State(apex): State<ApexState>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    // An email too long, or with a NUL (PostgreSQL's text cannot hold one): nobody has it.
    if body.password.chars().count() > 128 || body.email.len() > 254 || body.email.contains('\0') {
        return Err(ApiError::Unauthorized);
    }
    // A place for the first password check before the lookup: a login refused for a full
    // queue costs no database work.
    let first = apex.passwords.admit(APEX)?;
    let rows = match lookup(&apex.shared, &body.email).await {
        Ok(rows) => rows,
        // No shared schema yet (no shared tenant was ever made): nobody to find.
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("42P01" | "42704" | "22023")) =>
        {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };

    // Only tenants this instance serves, shared and active, count.
    let snapshot = apex.registry.snapshot();
    let candidates: Vec<_> = rows
        .into_iter()
        .filter_map(|(tenant, user_id, hash)| {
            let id = TenantId::parse(&tenant).ok()?;
            let entry = snapshot.get(&id)?.clone();
            let t = entry.tenant();
            (t.isolation == Isolation::Shared && t.state == TenantState::Active)
                .then_some((entry, user_id, hash))
        })
        .collect();
    if candidates.is_empty() {
        // The same work as a wrong password, so timing tells nothing.
        first.verify(body.password, None).await?;
        return Err(ApiError::Unauthorized);
    }
    let mut matching = Vec::new();
    let mut first = Some(first);
    for (entry, user_id, hash) in candidates {
        let check = match first.take() {
            Some(place) => place,
            None => apex.passwords.admit(APEX)?,
        };
        if check.verify(body.password.clone(), Some(hash)).await? {
            matching.push((entry, user_id));
        }
    }
    match matching.len() {
        0 => Err(ApiError::Unauthorized),
        1 => {
            let (entry, user_id) = matching.remove(0);
            let db = TenantDb::new(entry.pool(), entry.tenant());
            let (token, expires_at) = issue_token(&db, user_id, apex.session_ttl).await?;
            Ok(Json(LoggedIn {
                tenant: entry.tenant().id.clone(),
                host: entry.tenant().hosts[0].to_string(),
                token,
                expires_at,
            })
            .into_response())
        }
        // Never pick one: the client chooses, then logs in on that tenant's host.
        _ => Ok((
            StatusCode::MULTIPLE_CHOICES,
            Json(Choose {
                detail: "this email and password belong to several tenants; log in on one of their hosts",
                tenants: matching
                    .iter()
                    .map(|(e, _)| Choice {
                        tenant: e.tenant().id.clone(),
                        host: e.tenant().hosts[0].to_string(),
                    })
                    .collect(),
            }),
        )
            .into_response()),
    }
}
