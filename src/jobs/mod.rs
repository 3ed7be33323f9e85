//! Background jobs that carry their tenant.
//!
//! A job kind is a serde type implementing [`Job`]; [`JobKinds`] maps kind names to them.
//! [`JobQueue`] submits jobs to Redis Streams (one stream per tenant, one consumer group);
//! [`Worker`] runs them, each with a fresh [`JobContext`] built from the worker's own
//! registry: the tenant, its pool, and a Redis key namespace of its own. Nothing about a
//! tenant outlives the job it was built for.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use tenant_router::jobs::{Job, JobContext, JobError, JobKinds, Once};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Welcome { email: String }
//!
//! impl Job for Welcome {
//!     const KIND: &'static str = "users.welcome";
//!     async fn run(self, ctx: JobContext) -> Result<serde_json::Value, JobError> {
//!         // `once` records the job id in the tenant's database with the effect, so a
//!         // redelivered job does not send twice.
//!         match ctx.once().await? {
//!             Once::AlreadyApplied(result) => Ok(result),
//!             Once::Fresh(mut tx) => {
//!                 sqlx::query("INSERT INTO outbox (kind, address) VALUES ('welcome', $1)")
//!                     .bind(&self.email)
//!                     .execute(tx.conn())
//!                     .await?;
//!                 tx.commit(serde_json::json!({"queued": true})).await
//!             }
//!         }
//!     }
//! }
//!
//! let kinds = JobKinds::new().with::<Welcome>();
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::registry::TenantEntry;
use crate::tenant::{Tenant, TenantId};

mod queue;
mod worker;

pub use queue::{
    DEFAULT_MAX_DEAD, DEFAULT_MAX_QUEUED_PER_TENANT, JobQueue, JobStatus, Keys, Letter, Letters,
    Purged, QueueError, purge_tenant, wake_tenant,
};
pub use worker::{DrainReport, Worker, WorkerOptions};

/// A kind of job: a serialisable payload and what to do with it, in one tenant's context.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Its name on the wire, e.g. `notes.create`.
    const KIND: &'static str;

    /// Does the work. The context is this job's tenant and nothing else.
    fn run(self, ctx: JobContext) -> impl Future<Output = Result<Value, JobError>> + Send;

    /// The rules a payload must meet beyond its shape, checked when the job is submitted (a
    /// 422 naming the field) and again before it runs (a failure no retry fixes). By default
    /// every payload that deserialises is valid.
    fn validate(&self) -> Result<(), PayloadError> {
        Ok(())
    }
}

/// Why a payload breaks its kind's rules: the field (a path within the payload, e.g.
/// `content`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PayloadError {
    /// The field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl PayloadError {
    /// `field` is wrong as `message` says.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// What went wrong (stored as the job's last error: no secrets).
    pub message: String,
    /// False for failures another attempt cannot fix: the job goes to the dead letters now.
    pub retryable: bool,
}

impl JobError {
    /// A failure worth retrying.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry can fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        Self::retry(format!("database: {e}"))
    }
}

impl From<redis::RedisError> for JobError {
    fn from(e: redis::RedisError) -> Self {
        Self::retry(format!("redis: {e}"))
    }
}

impl From<std::io::Error> for JobError {
    fn from(e: std::io::Error) -> Self {
        Self::retry(format!("io: {e}"))
    }
}

/// One job as it travels: on the stream, in retries, in the dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Random, 128 bits in hex.
    pub job_id: String,
    /// The tenant it runs for. Required: a job without one cannot be built.
    pub tenant_id: TenantId,
    /// Its kind.
    pub kind: String,
    /// Its payload, checked against the kind when submitted.
    pub payload: Value,
    /// Attempts made before this delivery.
    pub attempt: u32,
    /// When it was submitted (Unix milliseconds).
    pub enqueued_at: i64,
    /// Not before (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<i64>,
    /// The user of the tenant who submitted it, when a user did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    /// The incarnation of the tenant it was submitted for: a worker parks, never runs, a job
    /// whose tenant is now another incarnation (removed and created again). Absent only in
    /// envelopes written before incarnations existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<i64>,
}

/// Everything a job may touch: its tenant, that tenant's pool, and that tenant's Redis
/// namespace. Built fresh for every run, from the worker's registry.
pub struct JobContext {
    entry: Arc<TenantEntry>,
    envelope: Envelope,
    redis: deadpool_redis::Pool,
    namespace: String,
    worker: Arc<str>,
    files_root: Arc<std::path::Path>,
}

impl JobContext {
    pub(crate) fn new(
        entry: Arc<TenantEntry>,
        envelope: Envelope,
        redis: deadpool_redis::Pool,
        keys: &Keys,
        worker: Arc<str>,
        files_root: Arc<std::path::Path>,
    ) -> Self {
        let namespace = keys.namespace(&envelope.tenant_id, entry.tenant().incarnation);
        Self {
            entry,
            envelope,
            redis,
            namespace,
            worker,
            files_root,
        }
    }

    /// The tenant's own directory for files jobs write (`<files dir>/<tenant id>/`),
    /// created if missing.
    pub fn files_dir(&self) -> Result<std::path::PathBuf, JobError> {
        let dir = self.files_root.join(self.envelope.tenant_id.as_str());
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The tenant.
    pub fn tenant(&self) -> &Tenant {
        self.entry.tenant()
    }

    /// The tenant's own pool (for a shared tenant, the shared database's: use
    /// [`Self::db`]).
    pub fn pool(&self) -> &Arc<crate::pool::TenantPool> {
        self.entry.pool()
    }

    /// The tenant's database handle: scoped connections and the `tenant_id` to bind.
    pub fn db(&self) -> crate::shared::TenantDb<'_> {
        crate::shared::TenantDb::new(self.entry.pool(), self.entry.tenant())
    }

    /// The value of `tenant_id` in this tenant's rows.
    pub fn scope(&self) -> &str {
        self.entry.tenant().scope()
    }

    /// This job's id.
    pub fn job_id(&self) -> &str {
        &self.envelope.job_id
    }

    /// Attempts made before this one (0 on the first run).
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt
    }

    /// The submitting user, when a user submitted it.
    pub fn user_id(&self) -> Option<i64> {
        self.envelope.user_id
    }

    /// The name of the worker running it.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// A Redis key in this tenant's namespace.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.namespace)
    }

    /// A Redis connection. Use [`Self::key`] for every key.
    pub async fn redis(&self) -> Result<deadpool_redis::Connection, JobError> {
        self.redis
            .get()
            .await
            .map_err(|e| JobError::retry(format!("redis: {e}")))
    }

    /// Begins the job's transaction on the tenant's database and records the job id in it.
    /// If an earlier delivery already committed, returns what it stored instead: commit the
    /// effect in the returned transaction and it happens exactly once.
    pub async fn once(&self) -> Result<Once, JobError> {
        let mut tx = self.db().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO job_runs (tenant_id, job_id, kind) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(self.scope())
        .bind(&self.envelope.job_id)
        .bind(&self.envelope.kind)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let result: Option<Value> = sqlx::query_scalar(
                "SELECT result FROM job_runs WHERE tenant_id = $1 AND job_id = $2",
            )
            .bind(self.scope())
            .bind(&self.envelope.job_id)
            .fetch_one(&mut *tx)
            .await?;
            return Ok(Once::AlreadyApplied(result.unwrap_or(Value::Null)));
        }
        Ok(Once::Fresh(JobTx {
            tx,
            job_id: self.envelope.job_id.clone(),
            scope: self.scope().to_string(),
        }))
    }
}

/// What [`JobContext::once`] found.
pub enum Once {
    /// First time: do the work in this transaction, then commit it.
    Fresh(JobTx),
    /// An earlier delivery committed; this was its result.
    AlreadyApplied(Value),
}

/// A job's transaction on its tenant's database, with the job id recorded in it.
pub struct JobTx {
    tx: crate::shared::TenantConn,
    job_id: String,
    scope: String,
}

impl JobTx {
    /// The connection, for queries.
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }

    /// Stores `result` with the job id and commits the effect.
    pub async fn commit(mut self, result: Value) -> Result<Value, JobError> {
        sqlx::query("UPDATE job_runs SET result = $3 WHERE tenant_id = $1 AND job_id = $2")
            .bind(&self.scope)
            .bind(&self.job_id)
            .bind(&result)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(result)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

trait ErasedJob: Send + Sync {
    fn check(&self, payload: &Value) -> Result<(), PayloadError>;
    fn run(&self, payload: Value, ctx: JobContext) -> BoxFuture<Result<Value, JobError>>;
}

struct Typed<J>(PhantomData<fn() -> J>);

impl<J: Job> ErasedJob for Typed<J> {
    fn check(&self, payload: &Value) -> Result<(), PayloadError> {
        J::deserialize(payload)
            .map_err(|e| PayloadError::new("payload", e.to_string()))?
            .validate()
    }

    fn run(&self, payload: Value, ctx: JobContext) -> BoxFuture<Result<Value, JobError>> {
        Box::pin(async move {
            let job = J::deserialize(payload)
                .map_err(|e| JobError::fatal(format!("payload does not fit {}: {e}", J::KIND)))?;
            job.validate()
                .map_err(|e| JobError::fatal(format!("payload breaks {}'s rules: {e}", J::KIND)))?;
            job.run(ctx).await
        })
    }
}

/// The job kinds an app knows. Cheap to clone.
#[derive(Clone, Default)]
pub struct JobKinds {
    kinds: HashMap<&'static str, Arc<dyn ErasedJob>>,
}

impl JobKinds {
    /// No kinds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds kind `J`.
    pub fn with<J: Job>(mut self) -> Self {
        self.kinds
            .insert(J::KIND, Arc::new(Typed::<J>(PhantomData)));
        self
    }

    /// Whether `kind` is known.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// The known kinds, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.kinds.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Checks a payload against its kind, as submission does.
    pub fn check(&self, kind: &str, payload: &Value) -> Result<(), KindError> {
        let job = self.kinds.get(kind).ok_or(KindError::UnknownKind)?;
        job.check(payload).map_err(KindError::BadPayload)
    }

    pub(crate) fn run(
        &self,
        kind: &str,
        payload: Value,
        ctx: JobContext,
    ) -> Option<BoxFuture<Result<Value, JobError>>> {
        self.kinds.get(kind).map(|job| job.run(payload, ctx))
    }
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    /// No such kind.
    #[error("unknown job kind")]
    UnknownKind,
    /// The payload does not fit the kind, or breaks its rules.
    #[error("payload does not fit the kind: {0}")]
    BadPayload(PayloadError),
}
