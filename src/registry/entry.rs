//! A registered tenant: its configuration, its pool and its rate limiter.

use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::lazy_pool::LazyPool;
use crate::pool::TenantPool;
use crate::tenant::{RateLimit, Tenant};

/// A registered tenant and its (lazily opened) pool.
pub struct TenantEntry {
    pub(super) tenant: Tenant,
    pub(super) pool: Arc<LazyPool>,
    /// Its request rate limit (its own, or the router's default), if any.
    pub(super) limit: Option<RateLimit>,
    /// The limiter, made on the first request (a change of the tenant starts a new one).
    pub(super) limiter: OnceLock<governor::DefaultDirectRateLimiter>,
}

impl TenantEntry {
    /// The tenant's configuration.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// The tenant's pool, created on first use. Creating it opens no connection: the first
    /// acquire does, within the registry's connection budget.
    pub fn pool(&self) -> &Arc<TenantPool> {
        self.pool.get()
    }

    /// True once the pool has been created.
    pub fn pool_is_open(&self) -> bool {
        self.pool.cell.get().is_some()
    }

    /// Counts one request against the tenant's rate limit: `None` when it may go ahead,
    /// else how long until it could.
    pub fn throttled(&self) -> Option<Duration> {
        let limit = self.limit?;
        let limiter = self.limiter.get_or_init(|| {
            let per_second = NonZeroU32::new(limit.requests_per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::direct(
                governor::Quota::per_second(per_second).allow_burst(burst),
            )
        });
        limiter.check().err().map(|not_until| {
            use governor::clock::Clock as _;
            not_until.wait_time_from(limiter.clock().now())
        })
    }
}
