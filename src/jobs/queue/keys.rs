//! Where everything of the queue lives in Redis: every key name, under one prefix.

use crate::tenant::TenantId;

/// Redis key names, all under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new("tr:")
    }
}

impl From<&crate::namespace::RedisNamespace> for Keys {
    fn from(ns: &crate::namespace::RedisNamespace) -> Self {
        Self::new(ns.prefix())
    }
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The prefix itself (scripts build stream keys from it).
    pub(crate) fn stream_prefix(&self) -> &str {
        &self.prefix
    }

    /// A tenant's job stream.
    pub fn stream(&self, tenant: &TenantId) -> String {
        format!("{}t:{tenant}:jobs", self.prefix)
    }

    /// The tenant of a stream key.
    pub fn tenant_of_stream(&self, key: &str) -> Option<TenantId> {
        let id = key
            .strip_prefix(&self.prefix)?
            .strip_prefix("t:")?
            .strip_suffix(":jobs")?;
        TenantId::parse(id).ok()
    }

    /// A job's status hash, in its tenant's namespace.
    pub fn job(&self, tenant: &TenantId, job_id: &str) -> String {
        format!("{}t:{tenant}:job:{job_id}", self.prefix)
    }

    /// The prefix of keys a tenant's jobs may use: the tenant's app namespace, the same
    /// one its requests get (see [`crate::namespace`]).
    pub fn namespace(&self, tenant: &TenantId, incarnation: i64) -> String {
        self.redis_namespace().app_prefix(tenant, incarnation)
    }

    /// The namespace these keys live in.
    pub fn redis_namespace(&self) -> crate::namespace::RedisNamespace {
        crate::namespace::RedisNamespace::new(&self.prefix)
    }

    pub(super) fn rung(&self, tenant: &TenantId) -> String {
        format!("{}t:{tenant}:rung", self.prefix)
    }

    /// The stream that tells workers a tenant has new jobs.
    pub fn doorbell(&self) -> String {
        format!("{}jobs:doorbell", self.prefix)
    }

    /// Every tenant that ever had a job stream.
    pub fn tenants(&self) -> String {
        format!("{}jobs:tenants", self.prefix)
    }

    /// Jobs waiting for their time (retries, `run_at`).
    pub fn delayed(&self) -> String {
        format!("{}jobs:delayed", self.prefix)
    }

    /// Delayed jobs per tenant (a hash), for the per-tenant cap.
    pub fn delayed_counts(&self) -> String {
        format!("{}jobs:delayed_counts", self.prefix)
    }

    /// Jobs that used up their attempts, with their last error.
    pub fn dead(&self) -> String {
        format!("{}jobs:dead", self.prefix)
    }

    /// Jobs that did not run because of their tenant, with the reason.
    pub fn parked(&self) -> String {
        format!("{}jobs:parked", self.prefix)
    }

    /// Set by a purge of a tenant's incarnation: a worker finishing one of its jobs after
    /// the purge removes what it wrote (see [`purge_tenant`](super::purge_tenant)).
    pub fn fence(&self, tenant: &TenantId, incarnation: i64) -> String {
        format!("{}jobs:fence:{tenant}:{incarnation}", self.prefix)
    }
}
