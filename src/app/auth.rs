//! Passwords (argon2id) and bearer tokens (random, stored as SHA-256, expiring).

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, password_hash::rand_core::OsRng};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::middleware::CurrentTenant;
use crate::problem::ApiError;

/// Hashes a password with argon2id on the blocking pool: it takes tens of milliseconds of
/// CPU by design, which must not stall the async workers.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
}

/// Verifies a password against a PHC hash, on the blocking pool. With no hash (unknown
/// email), it verifies against a dummy hash, so both cases take the same time.
pub async fn verify_password(password: String, hash: Option<String>) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
        let parsed = PasswordHash::new(&hash)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored hash is invalid: {e}")))?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(known && matches)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
}

fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"no user has this password", &salt)
            .expect("hashing a constant")
            .to_string()
    })
}

/// A new random token (256 bits, hex) and the SHA-256 under which it is stored.
pub fn new_token() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = token_hash(&token);
    (token, hash)
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A request's logged-in user, within its tenant. Extracting it answers 401 for a missing,
/// unknown or expired token, and for a token of another tenant (it is not in this tenant's
/// database).
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    /// The user's id in the tenant's database.
    pub user_id: i64,
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let tenant = CurrentTenant::from_request_parts(parts, state).await?;
        let token = BearerToken::from_request_parts(parts, state).await?;
        let db = tenant.db();
        let mut conn = db.conn().await?;
        let user_id: Option<i64> = sqlx::query_scalar(
            "SELECT user_id FROM sessions
             WHERE tenant_id = $1 AND token_hash = $2 AND expires_at > now()",
        )
        .bind(db.scope())
        .bind(token.hash())
        .fetch_optional(&mut *conn)
        .await?;
        user_id
            .map(|user_id| Self { user_id })
            .ok_or(ApiError::Unauthorized)
    }
}

/// The bearer token of a request, not yet checked against the database: for handlers that
/// check it in the same query as their own work, saving a round trip (see `notes::list`).
/// Extracting it answers 401 when the header is missing or not `Bearer`.
pub struct BearerToken(String);

impl BearerToken {
    /// The token's stored form, to compare with `sessions.token_hash`.
    pub fn hash(&self) -> Vec<u8> {
        token_hash(&self.0)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        bearer_token(&parts.headers)
            .map(|t| Self(t.to_string()))
            .ok_or(ApiError::Unauthorized)
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is a non-empty one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
