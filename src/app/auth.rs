//! Passwords (argon2id) and bearer tokens (random, stored as SHA-256, expiring).

use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, password_hash::rand_core::OsRng};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::middleware::CurrentTenant;
use crate::problem::ApiError;

/// Argon2 behind a limit: `concurrency` threads of its own run it (each run holds about
/// 19 MiB and tens of milliseconds of CPU), a short queue feeds them, and beyond the queue
/// the answer is a 503 with `Retry-After`. A flood of logins then costs bounded memory (a
/// few threads' worth, where the blocking pool would spread runs over many threads, each
/// keeping its allocator's memory), and every other request keeps its share of the CPU.
/// Shared by registration, login, the apex login and the admin token check.
pub struct PasswordLimiter {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

impl PasswordLimiter {
    /// `concurrency` threads, and four times as many runs waiting.
    pub fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(concurrency * 4);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..concurrency {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take the next job.
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            // The limiter is gone.
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-hashing thread");
            }
        }
        Self { jobs }
    }

    /// Runs `work` on the hashing threads; [`ApiError::Overloaded`] when the queue is full.
    /// Work whose request is gone before it starts is skipped.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if !tx.is_closed() {
                let _ = tx.send(work());
            }
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => return Err(overloaded()),
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "no password-hashing thread is running"
                )));
            }
        }
        rx.await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("a password-hashing thread stopped")))
    }

    /// Hashes a password with argon2id.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || hash_password(&password)).await?
    }

    /// Verifies a password against a PHC hash. With no hash (unknown email), it verifies
    /// against a dummy hash, so both cases take the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        self.run(move || verify_password(&password, hash)).await?
    }
}

impl Default for PasswordLimiter {
    fn default() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
    }
}

fn overloaded() -> ApiError {
    ApiError::Overloaded("too many password checks at once; retry in a moment".into())
}

fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    crate::argon::Argon2Reusing
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing a password: {e}")))
}

fn verify_password(password: &str, hash: Option<String>) -> Result<bool, ApiError> {
    {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
        let parsed = PasswordHash::new(&hash)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored hash is invalid: {e}")))?;
        let matches = crate::argon::Argon2Reusing
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(known && matches)
    }
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
