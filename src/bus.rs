//! The configuration bus: small hints on a Redis pub/sub channel telling every instance that
//! the control database has something newer. A hint is only a wake-up call; the data always
//! comes from the control database, so a hint carries no credentials and losing one loses
//! nothing (see `crate::sync`).

use std::time::Duration;

use anyhow::Context as _;
use deadpool_redis::redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};

use crate::RedisEndpoint;
use crate::tenant::TenantId;

/// The channel hints are published on unless configured otherwise.
pub const DEFAULT_CHANNEL: &str = "tenant-router:tenants";

/// How long a publish may take before it is given up (the change is committed already; the
/// others will find it by reconciling).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

/// What happened to a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HintOp {
    /// Created or changed.
    Upsert,
    /// Removed.
    Remove,
}

/// One hint: `{"op":"upsert","tenant_id":"acme","version":42}`. Never more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hint {
    /// What happened.
    pub op: HintOp,
    /// To which tenant.
    pub tenant_id: TenantId,
    /// The version the control database gave the change.
    pub version: i64,
    /// When it was published (Unix milliseconds), for the propagation-lag histogram. Set by
    /// [`Publisher::publish`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<i64>,
}

impl Hint {
    /// A hint of `op` on `tenant_id` at `version`.
    pub fn new(op: HintOp, tenant_id: TenantId, version: i64) -> Self {
        Self {
            op,
            tenant_id,
            version,
            sent_at_ms: None,
        }
    }

    /// Parses a payload; `None` (logged) for anything else, which a subscriber then treats
    /// as "something changed" and catches up anyway.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        match serde_json::from_slice(payload) {
            Ok(hint) => Some(hint),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed hint on the configuration bus");
                None
            }
        }
    }
}

/// Publishes hints, over a small connection pool.
#[derive(Clone)]
pub struct Publisher {
    pool: deadpool_redis::Pool,
    channel: String,
}

impl Publisher {
    /// A publisher for Redis at `redis` (connections are opened on first use).
    pub fn new(redis: impl Into<RedisEndpoint>, channel: &str) -> anyhow::Result<Self> {
        let pool = redis
            .into()
            .pool(4, PUBLISH_TIMEOUT)
            .context("configuring the Redis pool (check TENANT_ROUTER_REDIS_URL)")?;
        Ok(Self {
            pool,
            channel: channel.to_string(),
        })
    }

    /// Publishes a hint. Failure is logged and returned, never retried: the change is in the
    /// control database already and every instance reconciles against it.
    pub async fn publish(&self, hint: &Hint) -> anyhow::Result<()> {
        let mut hint = hint.clone();
        hint.sent_at_ms
            .get_or_insert_with(crate::telemetry::unix_ms);
        let payload = serde_json::to_string(&hint).expect("a hint serialises");
        let result = tokio::time::timeout(PUBLISH_TIMEOUT, async {
            let mut conn = self.pool.get().await.context("connecting to Redis")?;
            let _receivers: i64 = conn
                .publish(&self.channel, payload)
                .await
                .context("publishing")?;
            anyhow::Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("publishing timed out")));
        if let Err(e) = &result {
            tracing::warn!(
                tenant.id = %hint.tenant_id,
                version = hint.version,
                error = %format!("{e:#}"),
                "could not publish a configuration hint; other instances will pick the change up when they reconcile"
            );
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_is_three_fields_and_nothing_else() {
        let hint = Hint::new(HintOp::Remove, TenantId::parse("acme").unwrap(), 42);
        let json = serde_json::to_string(&hint).unwrap();
        assert_eq!(json, r#"{"op":"remove","tenant_id":"acme","version":42}"#);
        assert_eq!(Hint::parse(json.as_bytes()), Some(hint));
        assert_eq!(Hint::parse(b"{\"op\":\"upsert\"}"), None);
        assert_eq!(
            Hint::parse(br#"{"op":"upsert","tenant_id":"a","version":1,"database":"x"}"#),
            None
        );
    }
}
