//! The job queue on Redis: one stream per tenant (`<prefix>t:<tenant>:jobs`) read by one
//! consumer group, a status hash per job in the tenant's namespace, a sorted set of delayed
//! jobs (retries and `run_at`), and the dead-letter and parked streams.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use redis::AsyncCommands as _;
use serde::Serialize;
use serde_json::Value;

use super::{Envelope, JobKinds, KindError};
use crate::tenant::TenantId;

/// The consumer group every worker joins.
pub(crate) const GROUP: &str = "workers";

/// How long a job's status is kept after its last change.
pub(crate) const STATUS_TTL_SECS: i64 = 7 * 86_400;

/// Queued and delayed jobs a tenant may have at once, by default.
pub const DEFAULT_MAX_QUEUED_PER_TENANT: u64 = 10_000;

/// Entries the dead-letter and parked streams keep at most (about: `MAXLEN ~`), by default.
pub const DEFAULT_MAX_DEAD: usize = 100_000;

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
    pub fn namespace(&self, tenant: &TenantId) -> String {
        self.redis_namespace().app_prefix(tenant)
    }

    /// The namespace these keys live in.
    pub fn redis_namespace(&self) -> crate::namespace::RedisNamespace {
        crate::namespace::RedisNamespace::new(&self.prefix)
    }

    fn rung(&self, tenant: &TenantId) -> String {
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
    /// the purge removes what it wrote (see [`purge_tenant`]).
    pub fn fence(&self, tenant: &TenantId, incarnation: i64) -> String {
        format!("{}jobs:fence:{tenant}:{incarnation}", self.prefix)
    }
}

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

/// A job's status, as `GET /api/jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobStatus {
    /// Id.
    pub job_id: String,
    /// Kind.
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed` (will retry), `dead` or `parked`.
    pub status: String,
    /// Attempts started.
    pub attempts: u32,
    /// Unix milliseconds.
    pub enqueued_at: Option<i64>,
    /// Unix milliseconds, of the latest attempt.
    pub started_at: Option<i64>,
    /// Unix milliseconds.
    pub finished_at: Option<i64>,
    /// Unix milliseconds, when a retry is scheduled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<i64>,
    /// The last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the job returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The submitting user.
    #[serde(skip)]
    pub user_id: Option<i64>,
    /// The incarnation of the tenant it was submitted for.
    #[serde(skip)]
    pub incarnation: Option<i64>,
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
    /// A queue on Redis at `url` for these kinds.
    pub fn new(url: &str, keys: Keys, kinds: JobKinds) -> anyhow::Result<Self> {
        let mut config = deadpool_redis::Config::from_url(url);
        config.pool = Some(deadpool_redis::PoolConfig {
            max_size: 16,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(Duration::from_secs(2)),
                create: Some(Duration::from_secs(2)),
                recycle: Some(Duration::from_secs(2)),
            },
            ..Default::default()
        });
        let pool = config.create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
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

    /// Submits a job for `tenant` (this incarnation of it), after checking the kind and
    /// payload. Returns its id.
    pub async fn submit(
        &self,
        tenant: &crate::tenant::Tenant,
        kind: &str,
        payload: Value,
        user_id: Option<i64>,
        run_at: Option<i64>,
    ) -> Result<String, QueueError> {
        self.submit_raw(
            &tenant.id,
            Some(tenant.incarnation),
            kind,
            payload,
            user_id,
            run_at,
        )
        .await
    }

    /// [`Self::submit`] by id, for tools and tests: without an incarnation, the job runs
    /// for whichever tenant holds the id when it runs.
    pub async fn submit_raw(
        &self,
        tenant: &TenantId,
        incarnation: Option<i64>,
        kind: &str,
        payload: Value,
        user_id: Option<i64>,
        run_at: Option<i64>,
    ) -> Result<String, QueueError> {
        self.kinds.check(kind, &payload)?;
        let envelope = Envelope {
            job_id: new_job_id(),
            tenant_id: tenant.clone(),
            incarnation,
            kind: kind.to_string(),
            payload,
            attempt: 0,
            enqueued_at: now_ms(),
            run_at,
            user_id,
        };
        self.enqueue(&envelope).await?;
        Ok(envelope.job_id)
    }

    /// Puts an envelope on its tenant's stream (or in the delayed set), with a fresh status.
    pub async fn enqueue(&self, envelope: &Envelope) -> Result<(), QueueError> {
        let tenant = &envelope.tenant_id;
        self.ensure_group(tenant).await?;
        {
            // Queued (on the stream, running ones included) plus delayed. Checked before
            // the write, so concurrent submissions may pass it by a few.
            let mut conn = self.pool.get().await?;
            let (queued, delayed): (u64, Option<u64>) = redis::pipe()
                .xlen(self.keys.stream(tenant))
                .hget(self.keys.delayed_counts(), tenant.as_str())
                .query_async(&mut *conn)
                .await?;
            let held = queued + delayed.unwrap_or(0);
            if held >= self.max_queued {
                return Err(QueueError::Full(held));
            }
        }
        let json = serde_json::to_string(envelope).expect("an envelope serialises");
        let status_key = self.keys.job(tenant, &envelope.job_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &status_key,
                &[
                    ("kind", envelope.kind.clone()),
                    ("status", "queued".to_string()),
                    ("attempts", "0".to_string()),
                    ("enqueued_at", envelope.enqueued_at.to_string()),
                    (
                        "incarnation",
                        envelope
                            .incarnation
                            .map(|i| i.to_string())
                            .unwrap_or_default(),
                    ),
                    (
                        "user_id",
                        envelope.user_id.map(|u| u.to_string()).unwrap_or_default(),
                    ),
                ],
            )
            .ignore()
            .expire(&status_key, STATUS_TTL_SECS)
            .ignore();
        let delayed = envelope.run_at.is_some_and(|t| t > now_ms());
        if delayed {
            pipe.zadd(
                self.keys.delayed(),
                format!("{tenant}\n{json}"),
                envelope.run_at.unwrap_or_default(),
            )
            .ignore()
            .hincr(self.keys.delayed_counts(), tenant.as_str(), 1)
            .ignore();
        } else {
            pipe.xadd(self.keys.stream(tenant), "*", &[("job", &json)])
                .ignore();
        }
        pipe.sadd(self.keys.tenants(), tenant.as_str()).ignore();
        pipe.cmd("SET")
            .arg(self.keys.rung(tenant))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(200);
        let mut conn = self.pool.get().await?;
        let (rung,): (Option<String>,) = pipe.query_async(&mut *conn).await?;
        if rung.is_some() && !delayed {
            ring(&mut conn, &self.keys, std::slice::from_ref(tenant)).await?;
        }
        Ok(())
    }

    /// A job's status, if `tenant` (this incarnation of it) has a job with this id.
    pub async fn status_for(
        &self,
        tenant: &crate::tenant::Tenant,
        job_id: &str,
    ) -> Result<Option<JobStatus>, QueueError> {
        Ok(self
            .status(&tenant.id, job_id)
            .await?
            .filter(|s| s.incarnation.is_none_or(|i| i == tenant.incarnation)))
    }

    /// A job's status, if a tenant with this id (any incarnation) has a job with this id.
    pub async fn status(
        &self,
        tenant: &TenantId,
        job_id: &str,
    ) -> Result<Option<JobStatus>, QueueError> {
        if job_id.is_empty() || job_id.len() > 64 || !job_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(None);
        }
        let mut conn = self.pool.get().await?;
        let fields: BTreeMap<String, String> = conn.hgetall(self.keys.job(tenant, job_id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let num = |k: &str| fields.get(k).and_then(|v| v.parse::<i64>().ok());
        Ok(Some(JobStatus {
            job_id: job_id.to_string(),
            kind: fields.get("kind").cloned().unwrap_or_default(),
            status: fields.get("status").cloned().unwrap_or_default(),
            attempts: num("attempts").unwrap_or(0) as u32,
            enqueued_at: num("enqueued_at"),
            started_at: num("started_at"),
            finished_at: num("finished_at"),
            next_attempt_at: num("next_attempt_at"),
            last_error: fields.get("last_error").filter(|e| !e.is_empty()).cloned(),
            result: fields
                .get("result")
                .and_then(|r| serde_json::from_str(r).ok()),
            user_id: num("user_id"),
            incarnation: num("incarnation"),
        }))
    }
}

/// Tells workers these tenants have new jobs (one doorbell entry each; the stream is capped).
pub(crate) async fn ring(
    conn: &mut deadpool_redis::Connection,
    keys: &Keys,
    tenants: &[TenantId],
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for t in tenants {
        pipe.cmd("XADD")
            .arg(keys.doorbell())
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("tenant")
            .arg(t.as_str())
            .ignore();
    }
    pipe.query_async(&mut **conn).await
}

/// Every member of the delayed set that belongs to `tenant` (members are `<tenant>\n<job>`).
async fn delayed_members(
    conn: &mut deadpool_redis::Connection,
    keys: &Keys,
    tenant: &TenantId,
) -> Result<Vec<String>, QueueError> {
    let member_prefix = format!("{tenant}\n");
    let mut members = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("ZSCAN")
            .arg(keys.delayed())
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{tenant}\n*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut **conn)
            .await?;
        // ZSCAN returns members and scores alternately.
        members.extend(
            found
                .into_iter()
                .step_by(2)
                .filter(|m| m.starts_with(&member_prefix)),
        );
        if next == 0 {
            return Ok(members);
        }
        cursor = next;
    }
}

/// Makes every delayed job of `tenant` due now: jobs that waited while their tenant was
/// removed with its data kept, once it is adopted.
pub async fn wake_tenant(
    pool: &deadpool_redis::Pool,
    keys: &Keys,
    tenant: &TenantId,
) -> Result<u64, QueueError> {
    let mut conn = pool.get().await?;
    let mut woken = 0;
    for member in delayed_members(&mut conn, keys, tenant).await? {
        let n: u64 = redis::cmd("ZADD")
            .arg(keys.delayed())
            .arg("XX")
            .arg("CH")
            .arg(now_ms())
            .arg(&member)
            .query_async(&mut *conn)
            .await?;
        woken += n;
    }
    Ok(woken)
}

pub use crate::namespace::Purged;

/// Removes everything of `tenant` from Redis: every key under `<prefix>t:<tenant>:` (the job
/// stream, statuses, the namespace jobs write to), its entries in the delayed set and the
/// dead and parked streams, and its membership of the set of tenants with streams.
pub async fn purge_tenant(
    pool: &deadpool_redis::Pool,
    keys: &Keys,
    tenant: &TenantId,
    incarnation: Option<i64>,
) -> Result<Purged, QueueError> {
    let mut conn = pool.get().await?;
    let mut purged = Purged::default();
    // First the fence, so a worker still running one of this incarnation's jobs removes
    // what it writes at the end (it checks the fence after writing), whether it writes
    // before or after the scans below.
    if let Some(incarnation) = incarnation {
        let _: () = redis::cmd("SET")
            .arg(keys.fence(tenant, incarnation))
            .arg(1)
            .arg("EX")
            .arg(STATUS_TTL_SECS)
            .query_async(&mut *conn)
            .await?;
    }
    purged.keys = crate::namespace::purge(&mut conn, &keys.redis_namespace(), tenant).await?;
    let members = delayed_members(&mut conn, keys, tenant).await?;
    for chunk in members.chunks(1000) {
        let n: u64 = conn.zrem(keys.delayed(), chunk).await?;
        purged.delayed += n;
    }
    let _: u64 = conn.hdel(keys.delayed_counts(), tenant.as_str()).await?;
    purged.dead = purge_stream_entries(&mut conn, &keys.dead(), tenant).await?;
    purged.parked = purge_stream_entries(&mut conn, &keys.parked(), tenant).await?;
    let _: u64 = conn.srem(keys.tenants(), tenant.as_str()).await?;
    Ok(purged)
}

/// Removes what a worker wrote for one job of a purged incarnation: its status, its delayed
/// entry, its dead or parked entries.
pub(crate) async fn forget_job(
    conn: &mut deadpool_redis::Connection,
    keys: &Keys,
    envelope: &Envelope,
    delayed_member: Option<&str>,
) -> Result<(), QueueError> {
    let _: u64 = conn
        .del(keys.job(&envelope.tenant_id, &envelope.job_id))
        .await?;
    if let Some(member) = delayed_member {
        let removed: u64 = conn.zrem(keys.delayed(), member).await?;
        if removed > 0 {
            let _: i64 = conn
                .hincr(keys.delayed_counts(), envelope.tenant_id.as_str(), -1)
                .await?;
        }
    }
    for stream in [keys.dead(), keys.parked()] {
        purge_stream_entries_where(conn, &stream, "job_id", &envelope.job_id).await?;
    }
    Ok(())
}

/// Deletes the entries of `stream` whose `tenant_id` field is `tenant`.
async fn purge_stream_entries(
    conn: &mut deadpool_redis::Connection,
    stream: &str,
    tenant: &TenantId,
) -> Result<u64, QueueError> {
    purge_stream_entries_where(conn, stream, "tenant_id", tenant.as_str()).await
}

/// Deletes the entries of `stream` whose field `field` is `value`.
async fn purge_stream_entries_where(
    conn: &mut deadpool_redis::Connection,
    stream: &str,
    field: &str,
    value: &str,
) -> Result<u64, QueueError> {
    let mut start = "-".to_string();
    let mut removed = 0;
    loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut **conn)
            .await?;
        let Some(last) = reply.ids.last() else { break };
        start = format!("({}", last.id);
        let ids: Vec<&str> = reply
            .ids
            .iter()
            .filter(|e| e.get::<String>(field).as_deref() == Some(value))
            .map(|e| e.id.as_str())
            .collect();
        if !ids.is_empty() {
            let n: u64 = conn.xdel(stream, &ids).await?;
            removed += n;
        }
        if reply.ids.len() < 1000 {
            break;
        }
    }
    Ok(removed)
}

/// The dead-letter stream or the parked one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Letters {
    /// Jobs that used up their attempts.
    Dead,
    /// Jobs that did not run because of their tenant.
    Parked,
}

impl Letters {
    fn key(self, keys: &Keys) -> String {
        match self {
            Self::Dead => keys.dead(),
            Self::Parked => keys.parked(),
        }
    }
}

/// One dead or parked job, as the admin API lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Letter {
    /// Its entry in the stream (also the listing's cursor).
    pub entry_id: String,
    /// The job's id (none for a malformed entry).
    pub job_id: Option<String>,
    /// Its tenant.
    pub tenant_id: String,
    /// Its kind.
    pub kind: Option<String>,
    /// Why it is here: the last error, or why it was parked.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it got here (Unix milliseconds).
    pub at: i64,
    /// The job as it travelled (for a retry).
    #[serde(skip)]
    pub envelope: Option<Envelope>,
}

fn letter(entry: &redis::streams::StreamId) -> Letter {
    let field = |k: &str| entry.get::<String>(k);
    let envelope = field("job").and_then(|j| serde_json::from_str::<Envelope>(&j).ok());
    Letter {
        entry_id: entry.id.clone(),
        job_id: field("job_id"),
        tenant_id: field("tenant_id").unwrap_or_default(),
        kind: envelope.as_ref().map(|e| e.kind.clone()),
        error: field("error")
            .or_else(|| field("reason"))
            .unwrap_or_default(),
        attempts: envelope.as_ref().map_or(0, |e| e.attempt + 1),
        at: entry
            .id
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0),
        envelope,
    }
}

impl JobQueue {
    /// Up to `limit` dead or parked jobs after entry `after`, oldest first, of `tenant` if
    /// given; and the cursor for the next page, if there may be one.
    pub async fn letters(
        &self,
        which: Letters,
        tenant: Option<&TenantId>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Letter>, Option<String>), QueueError> {
        let mut conn = self.pool.get().await?;
        let key = which.key(&self.keys);
        let mut start = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        let mut found = Vec::new();
        // A tenant's entries may be sparse: read on in batches, a bounded number of them.
        for _ in 0..50 {
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(500)
                .query_async(&mut *conn)
                .await?;
            let Some(last) = reply.ids.last() else {
                return Ok((found, None));
            };
            start = format!("({}", last.id);
            for entry in &reply.ids {
                let l = letter(entry);
                if tenant.is_none_or(|t| l.tenant_id == t.as_str()) {
                    found.push(l);
                    if found.len() == limit {
                        return Ok((found, Some(entry.id.clone())));
                    }
                }
            }
            if reply.ids.len() < 500 {
                return Ok((found, None));
            }
        }
        let cursor = start.trim_start_matches('(').to_string();
        Ok((found, Some(cursor)))
    }

    /// The dead or parked entry of job `job_id`, if any.
    async fn find_letter(
        &self,
        which: Letters,
        job_id: &str,
    ) -> Result<Option<Letter>, QueueError> {
        let mut after: Option<String> = None;
        loop {
            let (page, next) = self.letters(which, None, after.as_deref(), 1000).await?;
            if let Some(found) = page
                .into_iter()
                .find(|l| l.job_id.as_deref() == Some(job_id))
            {
                return Ok(Some(found));
            }
            match next {
                Some(n) => after = Some(n),
                None => return Ok(None),
            }
        }
    }

    /// Queues dead or parked job `job_id` again, for its own tenant, with fresh attempts,
    /// and takes it out of the stream. `None` when there is no such job. A job whose tenant
    /// is gone is parked again by the worker.
    pub async fn retry_letter(
        &self,
        which: Letters,
        job_id: &str,
    ) -> Result<Option<Letter>, QueueError> {
        // One retry of a job at a time: a second one, at once, finds it taken (and, once the
        // first is done, gone from the stream). The claim expires by itself.
        let claimed: Option<String> = {
            let mut conn = self.pool.get().await?;
            redis::cmd("SET")
                .arg(format!(
                    "{}jobs:retrying:{job_id}",
                    self.keys.stream_prefix()
                ))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut *conn)
                .await?
        };
        if claimed.is_none() {
            return Ok(None);
        }
        let Some(found) = self.find_letter(which, job_id).await? else {
            return Ok(None);
        };
        let Some(envelope) = &found.envelope else {
            return Ok(None);
        };
        let again = Envelope {
            attempt: 0,
            run_at: None,
            ..envelope.clone()
        };
        self.enqueue(&again).await?;
        let mut conn = self.pool.get().await?;
        let _: u64 = conn
            .xdel(which.key(&self.keys), &[found.entry_id.as_str()])
            .await?;
        Ok(Some(found))
    }

    /// Deletes dead or parked job `job_id`, or every one of `tenant`. Returns how many.
    pub async fn delete_letters(
        &self,
        which: Letters,
        job_id: Option<&str>,
        tenant: Option<&TenantId>,
    ) -> Result<u64, QueueError> {
        let key = which.key(&self.keys);
        let mut conn = self.pool.get().await?;
        match (job_id, tenant) {
            (Some(job_id), _) => match self.find_letter(which, job_id).await? {
                Some(found) => Ok(conn.xdel(&key, &[found.entry_id.as_str()]).await?),
                None => Ok(0),
            },
            (None, Some(tenant)) => purge_stream_entries(&mut conn, &key, tenant).await,
            (None, None) => Ok(0),
        }
    }
}
