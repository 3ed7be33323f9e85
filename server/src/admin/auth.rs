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
use crate::app::auth::bearer_token;

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
    pub(crate) fn take(&self, client: std::net::IpAddr) -> Result<(), std::time::Duration> {
        use governor::clock::Clock as _;
        if self.per_client.len() > Self::MAX_CLIENTS {
            self.per_client.retain_recent();
        }
        self.per_client.check_key(&client).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::DefaultClock::default().now())
        })
    }

    /// The lock under which `client`'s checks run one at a time.
    pub(crate) fn lock_for(&self, client: std::net::IpAddr) -> Arc<tokio::sync::Mutex<()>> {
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

pub(super) async fn require_token(
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
