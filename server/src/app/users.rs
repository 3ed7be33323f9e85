//! `POST /api/register` and `POST /api/login`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppConfig;
use super::auth::new_token;
use tenant_router::middleware::CurrentTenant;
use tenant_router::problem::{ApiError, ApiJson, FieldError};
use tenant_router::shared::violates;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(default)]
pub(super) struct RegisterBody {
    username: String,
    email: String,
    password: String,
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(super) struct UserBody {
    id: i64,
    username: String,
    email: String,
    created_at: DateTime<Utc>,
}

impl RegisterBody {
    /// Every invalid field at once, so a client can fix them in one go.
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        let u = &self.username;
        if !(3..=32).contains(&u.chars().count())
            || !u
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            errors.push(FieldError::new(
                "username",
                "must be 3 to 32 characters of letters, digits, '_', '-' and '.'",
            ));
        }
        if !is_email(&self.email) {
            errors.push(FieldError::new("email", "must be an email address"));
        }
        if !(8..=128).contains(&self.password.chars().count()) {
            errors.push(FieldError::new("password", "must be 8 to 128 characters"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(errors))
        }
    }
}

fn is_email(s: &str) -> bool {
    s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && s.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
}

/// Registers a user of this tenant (username 3–32 of `[A-Za-z0-9_.-]`, an email, a
/// password of 8 to 1024 characters).
#[utoipa::path(post, path = "/api/register", tag = "users", request_body = RegisterBody,
    responses(
        (status = 201, description = "Registered", body = UserBody),
        (status = 409, description = "The username or email is taken", body = tenant_router::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = tenant_router::problem::Problem, content_type = "application/problem+json"),
        crate::openapi::TenantProblems))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant.id = %tenant.id()))]
pub(super) async fn register(
    State(config): State<std::sync::Arc<AppConfig>>,
    tenant: CurrentTenant,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<(StatusCode, Json<UserBody>), ApiError> {
    body.validate()?;
    let password_hash = config
        .passwords
        .hash(tenant.id().as_str(), body.password)
        .await?;
    let db = tenant.db();
    let mut conn = db.conn().await?;
    let user: UserBody = sqlx::query_as(
        "INSERT INTO users (tenant_id, username, email, password_hash)
         VALUES ($1, $2, lower($3), $4)
         RETURNING id, username, email, created_at",
    )
    .bind(db.scope())
    .bind(&body.username)
    .bind(&body.email)
    .bind(password_hash)
    .fetch_one(&mut conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if violates(db.as_ref(), "users_username_key") => {
            ApiError::Conflict("this username is taken".into())
        }
        sqlx::Error::Database(db) if violates(db.as_ref(), "users_email_key") => {
            ApiError::Conflict("this email is already registered".into())
        }
        _ => e.into(),
    })?;
    conn.commit().await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(default)]
pub(super) struct LoginBody {
    email: String,
    password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct TokenBody {
    token: String,
    expires_at: DateTime<Utc>,
}

/// Logs a user in: a bearer token for this tenant's API.
#[utoipa::path(post, path = "/api/login", tag = "users", request_body = LoginBody,
    responses(
        (status = 200, description = "A token", body = TokenBody),
        (status = 401, description = "Wrong email or password", body = tenant_router::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each named", body = tenant_router::problem::Problem, content_type = "application/problem+json"),
        crate::openapi::TenantProblems))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant.id = %tenant.id()))]
pub(super) async fn login(
    State(config): State<std::sync::Arc<AppConfig>>,
    tenant: CurrentTenant,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<TokenBody>, ApiError> {
    if body.password.chars().count() > 128 {
        return Err(ApiError::Unauthorized);
    }
    // A place for the password check first: a login refused for a full queue costs no
    // database work.
    let check = config.passwords.admit(tenant.id().as_str())?;
    let db = tenant.db();
    // PostgreSQL's text cannot hold NUL, so no user has such an email: not looked up (the
    // query would fail), and refused like any unknown email, after the same check.
    let user: Option<(i64, String)> = if body.email.contains('\0') {
        None
    } else {
        let mut conn = db.read().await?;
        sqlx::query_as(
            "SELECT id, password_hash FROM users WHERE tenant_id = $1 AND lower(email) = lower($2)",
        )
        .bind(db.scope())
        .bind(&body.email)
        .fetch_optional(&mut conn)
        .await?
    };
    let (id, hash) = user.unzip();
    if !check.verify(body.password, hash).await? {
        return Err(ApiError::Unauthorized);
    }
    let user_id = id.ok_or(ApiError::Unauthorized)?;
    let (token, expires_at) = issue_token(&db, user_id, config.session_ttl).await?;
    Ok(Json(TokenBody { token, expires_at }))
}

/// Opens a session for `user_id` and returns its token (shown once; stored hashed).
pub(super) async fn issue_token(
    db: &tenant_router::shared::TenantDb<'_>,
    user_id: i64,
    ttl: std::time::Duration,
) -> Result<(String, DateTime<Utc>), ApiError> {
    let (token, token_hash) = new_token();
    let ttl = chrono::Duration::from_std(ttl).map_err(|e| ApiError::Internal(e.into()))?;
    let mut conn = db.conn().await?;
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO sessions (tenant_id, token_hash, user_id, expires_at)
         VALUES ($1, $2, $3, now() + $4)
         RETURNING expires_at",
    )
    .bind(db.scope())
    .bind(token_hash)
    .bind(user_id)
    .bind(ttl)
    .fetch_one(&mut conn)
    .await?;
    conn.commit().await?;
    Ok((token, expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(is_email("a@b.co"));
        for bad in [
            "", "a", "a@", "@b.co", "a@b", "a b@c.d", "a@b@c.d", "a@.b", "a@b.",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn every_invalid_field_is_named() {
        let body = RegisterBody {
            username: "x".into(),
            email: "nope".into(),
            password: "short".into(),
        };
        let Err(ApiError::Invalid(errors)) = body.validate() else {
            panic!("expected 422");
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["username", "email", "password"]);
    }
}
