//! The job queue on Redis: one stream per tenant (`<prefix>t:<tenant>:jobs`) read by one
//! consumer group, a status hash per job in the tenant's namespace, a sorted set of delayed
//! jobs (retries and `run_at`), and the dead-letter and parked streams.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{JobKinds, KindError};
use crate::tenant::TenantId;

mod keys;
mod letters;
mod purge;
mod status;
mod submit;

pub use crate::namespace::Purged;
pub use keys::Keys;
pub use letters::{Letter, Letters};
pub(crate) use purge::forget_job;
pub use purge::{purge_tenant, wake_tenant};
pub use status::JobStatus;
pub(crate) use submit::ring;

/// The consumer group every worker joins.
pub(crate) const GROUP: &str = "workers";

/// How long a job's status is kept after its last change.
pub(crate) const STATUS_TTL_SECS: i64 = 7 * 86_400;

/// Queued and delayed jobs a tenant may have at once, by default.
pub const DEFAULT_MAX_QUEUED_PER_TENANT: u64 = 10_000;

/// Entries the dead-letter and parked streams keep at most (about: `MAXLEN ~`), by default.
pub const DEFAULT_MAX_DEAD: usize = 100_000;

/// Why the queue could not take or report a job.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The kind or payload was refused.
    #[error(transparent)]
    Kind(#[from] KindError),
    /// The tenant has as many queued and delayed jobs as it may.
    #[error("the tenant has {0} jobs queued or delayed, its most; retry once some have run")]
    Full(u64),
    /// Redis failed.
    #[error("the job queue is unavailable: {0}")]
    Unavailable(String),
}

impl From<redis::RedisError> for QueueError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<deadpool_redis::PoolError> for QueueError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn new_job_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// Submits jobs and reads their status. Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    pool: deadpool_redis::Pool,
    keys: Keys,
    kinds: JobKinds,
    /// Tenants whose stream and group this process has made sure of.
    groups: Arc<Mutex<HashSet<TenantId>>>,
    /// Queued and delayed jobs a tenant may have at once.
    max_queued: u64,
}

impl JobQueue {
    /// A queue on Redis at `redis` for these kinds.
    pub fn new(
        redis: impl Into<crate::RedisEndpoint>,
        keys: Keys,
        kinds: JobKinds,
    ) -> anyhow::Result<Self> {
        let pool = redis.into().pool(16, Duration::from_secs(2))?;
        Ok(Self {
            pool,
            keys,
            kinds,
            groups: Arc::default(),
            max_queued: DEFAULT_MAX_QUEUED_PER_TENANT,
        })
    }

    /// At most `n` queued and delayed jobs per tenant; more are [`QueueError::Full`].
    pub fn with_max_queued(mut self, n: u64) -> Self {
        self.max_queued = n.max(1);
        self
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The kinds it accepts.
    pub fn kinds(&self) -> &JobKinds {
        &self.kinds
    }

    pub(crate) fn pool(&self) -> &deadpool_redis::Pool {
        &self.pool
    }

    /// Makes sure the tenant's stream and the workers' group on it exist.
    pub(crate) async fn ensure_group(&self, tenant: &TenantId) -> Result<(), QueueError> {
        if self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tenant)
        {
            return Ok(());
        }
        let mut conn = self.pool.get().await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.stream(tenant))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut *conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.clone());
        Ok(())
    }

    /// The workers' group on the tenant's stream, if the stream exists; a stream that is
    /// gone (its tenant purged) is not made again, so a purge stays a purge.
    pub(crate) async fn ensure_group_if_stream(&self, tenant: &TenantId) -> Result<(), QueueError> {
        let mut conn = self.pool.get().await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.stream(tenant))
            .arg(GROUP)
            .arg("0")
            .query_async(&mut *conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            // "requires the key to exist": nothing to read.
            Err(e) if e.to_string().contains("key to exist") => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.clone());
        Ok(())
    }

    pub(crate) fn forget_group(&self, tenant: &TenantId) {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
    }
}
