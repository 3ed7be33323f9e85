//! The admin token check: argon2 against the configured hash, rationed per client address,
//! a token already accepted remembered by its SHA-256.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use tenant_router::problem::ApiError;

use super::AdminState;
use crate::admin_token::AdminTokenHash;
use crate::app::auth::{PasswordLimiter, bearer_token};

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

/// The admin token check, whole: the SHA-256 of the last token argon2 accepted (compared in
/// constant time), then [`TokenChecks`]' rationing per client address, then argon2 through
/// the fair password queue. The admin listener and the worker's metrics listener both use it.
#[derive(Clone)]
pub struct AdminTokenGate {
    /// The token's hash; with none configured, every call is refused.
    pub hash: Option<Arc<AdminTokenHash>>,
    /// SHA-256 of the last token argon2 accepted.
    pub verified: Arc<Mutex<Option<[u8; 32]>>>,
    /// How argon2 checks of tokens are rationed.
    pub checking: Arc<TokenChecks>,
    /// Argon2 behind its limit (shared with the app's logins on the app server).
    pub passwords: Arc<PasswordLimiter>,
}

impl AdminTokenGate {
    /// A gate for `hash` with its own rationing and password queue.
    pub fn new(hash: Option<Arc<AdminTokenHash>>, passwords: Arc<PasswordLimiter>) -> Self {
        Self {
            hash,
            verified: Arc::default(),
            checking: Arc::default(),
            passwords,
        }
    }

    /// Ok when `headers` carry the admin token; 401, or 429/503 when checks are rationed.
    pub async fn check(
        &self,
        headers: &axum::http::HeaderMap,
        client: std::net::IpAddr,
    ) -> Result<(), ApiError> {
        let token = bearer_token(headers).map(str::to_string);
        let (Some(token), Some(hash)) = (token, self.hash.clone()) else {
            return Err(ApiError::Unauthorized);
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let known = || {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|v| constant_time_eq(&v, &digest))
        };
        let valid = known() || {
            if let Err(wait) = self.checking.take(client) {
                return Err(ApiError::TooManyRequests {
                    detail: "too many admin token checks from this address; retry later".into(),
                    retry_after: wait,
                });
            }
            let lock = self.checking.lock_for(client);
            let _one = lock.lock().await;
            known()
                || self
                    .passwords
                    .run(&format!("/admin/{client}"), move || hash.verify(&token))
                    .await?
        };
        if !valid {
            return Err(ApiError::Unauthorized);
        }
        *self.verified.lock().unwrap_or_else(|e| e.into_inner()) = Some(digest);
        Ok(())
    }
}

/// The client address the listener put in the request, or 0.0.0.0.
pub(crate) fn client_address(extensions: &axum::http::Extensions) -> std::net::IpAddr {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

pub(super) async fn require_token(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let client = client_address(req.extensions());
    state.token.check(req.headers(), client).await?;
    Ok(next.run(req).await)
}
