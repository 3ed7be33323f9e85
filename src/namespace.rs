//! Each tenant's own Redis keys.
//!
//! Everything of a tenant in Redis lives under `<prefix>t:<tenant id>:`; an app's own keys
//! (cache entries, counters) under `<prefix>t:<tenant id>:<incarnation>:ns:`. The incarnation
//! is new each time the id is created again, so a key written late for a removed tenant (by
//! a job or a request still running during its purge) is never the next tenant's. Handlers and jobs get a
//! [`TenantRedis`] that builds keys only there, so an app's keys cannot cross tenants, and
//! [`purge`] (run when a tenant is removed with purge) deletes them all.

use crate::tenant::TenantId;

/// The prefix all of the router's Redis keys share (default `tr:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisNamespace {
    prefix: String,
}

impl Default for RedisNamespace {
    fn default() -> Self {
        Self::new("tr:")
    }
}

impl RedisNamespace {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix of every key of `tenant`.
    pub fn tenant_prefix(&self, tenant: &TenantId) -> String {
        format!("{}t:{tenant}:", self.prefix)
    }

    /// The prefix of the keys an app writes for incarnation `incarnation` of `tenant` (see
    /// [`TenantRedis::key`]).
    pub fn app_prefix(&self, tenant: &TenantId, incarnation: i64) -> String {
        format!("{}t:{tenant}:{incarnation}:ns:", self.prefix)
    }

    /// A handle on `tenant`'s app keys.
    pub fn tenant(
        &self,
        pool: deadpool_redis::Pool,
        tenant: &crate::tenant::Tenant,
    ) -> TenantRedis {
        TenantRedis {
            pool,
            prefix: self.app_prefix(&tenant.id, tenant.incarnation),
        }
    }
}

/// One tenant's Redis keys, as a handler or a job sees them: every key it builds is under
/// the tenant's own prefix.
#[derive(Clone)]
pub struct TenantRedis {
    pool: deadpool_redis::Pool,
    prefix: String,
}

impl std::fmt::Debug for TenantRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRedis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl TenantRedis {
    /// The key `name` in this tenant's namespace. Use it for every key.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The namespace's prefix (for `SCAN MATCH`, escape it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection from the shared Redis pool.
    pub async fn conn(&self) -> Result<deadpool_redis::Connection, deadpool_redis::PoolError> {
        self.pool.get().await
    }
}

/// Deletes every key under `tenant`'s prefix; returns how many.
pub async fn purge(
    conn: &mut deadpool_redis::Connection,
    namespace: &RedisNamespace,
    tenant: &TenantId,
) -> redis::RedisResult<u64> {
    // Tenant ids are `[a-z0-9-]`: no glob character; the prefix is escaped.
    let pattern = format!("{}*", escape_glob(&namespace.tenant_prefix(tenant)));
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut **conn)
            .await?;
        if !found.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(&found)
                .query_async(&mut **conn)
                .await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// What a tenant's purge removed from Redis.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct Purged {
    /// Keys of the tenant's namespace: its stream, job statuses and app keys.
    pub keys: u64,
    /// Its delayed jobs (retries and `run_at`).
    pub delayed: u64,
    /// Its dead-lettered jobs.
    pub dead: u64,
    /// Its parked jobs.
    pub parked: u64,
}

pub(crate) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_keys_stay_under_the_tenant_prefix() {
        let ns = RedisNamespace::new("app*:");
        let a = TenantId::parse("tenant-1").unwrap();
        let b = TenantId::parse("tenant-10").unwrap();
        assert_eq!(ns.app_prefix(&a, 3), "app*:t:tenant-1:3:ns:");
        // Every incarnation's keys are under the tenant's prefix, which its purge deletes.
        assert!(ns.app_prefix(&a, 4).starts_with(&ns.tenant_prefix(&a)));
        assert_ne!(ns.app_prefix(&a, 3), ns.app_prefix(&a, 4));
        // The trailing `:` keeps tenant-1's purge pattern off tenant-10's keys.
        assert!(!ns.app_prefix(&b, 3).starts_with(&ns.tenant_prefix(&a)));
        assert_eq!(escape_glob(&ns.tenant_prefix(&a)), "app\\*:t:tenant-1:");
    }
}
