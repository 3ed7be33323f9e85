//! The worker: reads jobs from every tenant's stream, fairly, and runs each in a context built
//! for it alone.
//!
//! Three tasks cooperate:
//! - the reader does `XREADGROUP` over the doorbell and the streams of active tenants that
//!   are below their concurrency cap, at most `per_tenant` entries per stream per read, so
//!   every round takes a little from every tenant with work (round-robin by construction);
//! - the dispatcher keeps a local queue per tenant and starts jobs round-robin across
//!   tenants, at most `per_tenant` at once for one tenant and `concurrency` in all;
//! - housekeeping moves due retries back onto their streams and reclaims entries whose
//!   worker stopped heartbeating (`XAUTOCLAIM` after the visibility timeout).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use redis::AsyncCommands as _;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use super::queue::{GROUP, JobQueue, now_ms, ring};
use redis::streams::StreamMaxlen;

use super::{Envelope, JobContext, JobError};
use crate::sync::ConfigSync;
use crate::tenant::{TenantId, TenantState};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Consumer name; unique per process.
    pub name: String,
    /// Jobs running at once, in all.
    pub concurrency: usize,
    /// Jobs of one tenant running (or read and waiting) at once.
    pub per_tenant: usize,
    /// Attempts before a job goes to the dead letters.
    pub max_attempts: u32,
    /// How long a job may go without a heartbeat before another worker takes it over.
    pub visibility_timeout: Duration,
    /// First retry delay; it doubles per attempt (with jitter), up to five minutes.
    pub backoff: Duration,
    /// On shutdown, how long running jobs get to finish.
    pub grace: Duration,
    /// Where jobs write files, one directory per tenant.
    pub files_dir: std::path::PathBuf,
    /// Entries the dead-letter and parked streams keep, about (`MAXLEN ~`): the oldest go.
    pub dead_max_len: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            name: format!(
                "{}-{}-{:04x}",
                hostname(),
                std::process::id(),
                rand::random::<u16>()
            ),
            concurrency: 32,
            per_tenant: 8,
            max_attempts: 5,
            visibility_timeout: Duration::from_secs(30),
            backoff: Duration::from_millis(500),
            grace: Duration::from_secs(10),
            files_dir: std::path::PathBuf::from(".tenant-router/files"),
            dead_max_len: super::queue::DEFAULT_MAX_DEAD,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// One job read from a stream.
struct Delivery {
    stream_id: String,
    envelope: Envelope,
}

/// What the reader and the dispatcher share.
#[derive(Default)]
struct Load {
    /// Tenants worth reading, in rotation order.
    active: Vec<TenantId>,
    /// The same, for membership.
    active_set: HashSet<TenantId>,
    /// Tenants to read first in the next read, whatever the rotation: those whose doorbell
    /// rang (a job for a tenant that was idle) or that just appeared.
    urgent: VecDeque<TenantId>,
    idle_rounds: HashMap<TenantId, u32>,
    /// When each active tenant last had work (activated, or a read returned jobs).
    last_work: HashMap<TenantId, tokio::time::Instant>,
    /// Jobs read and not finished, per tenant and in all.
    per_tenant: HashMap<TenantId, usize>,
    total: usize,
    rotate: usize,
}

impl Load {
    fn activate(&mut self, tenant: TenantId) {
        self.idle_rounds.insert(tenant.clone(), 0);
        self.last_work
            .insert(tenant.clone(), tokio::time::Instant::now());
        if self.active_set.insert(tenant.clone()) {
            self.active.push(tenant);
        }
    }

    /// Activates `tenant` and reads it in the next read.
    fn activate_now(&mut self, tenant: TenantId) {
        self.activate(tenant.clone());
        if !self.urgent.contains(&tenant) {
            self.urgent.push_back(tenant);
        }
    }

    /// Stops reading these tenants until they have work again.
    fn deactivate(&mut self, gone: &HashSet<TenantId>) {
        if gone.is_empty() {
            return;
        }
        self.active.retain(|a| !gone.contains(a));
        for t in gone {
            self.active_set.remove(t);
            self.idle_rounds.remove(t);
            self.last_work.remove(t);
        }
    }

    fn add(&mut self, tenant: &TenantId, n: usize) {
        *self.per_tenant.entry(tenant.clone()).or_default() += n;
        self.total += n;
    }

    fn done(&mut self, tenant: &TenantId) {
        if let Some(n) = self.per_tenant.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_tenant.remove(tenant);
            }
        }
        self.total = self.total.saturating_sub(1);
    }
}

/// Runs jobs until shut down. See the module documentation.
pub struct Worker {
    queue: JobQueue,
    sync: Arc<ConfigSync>,
    options: WorkerOptions,
    name: Arc<str>,
    files_root: Arc<std::path::Path>,
}

/// How often a worker looks for tenants with streams it does not read yet.
const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// How often tenants without jobs are taken out of the set of tenants with streams.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// How long a tenant stays in the reads after its last work, at least: longer than the
/// doorbell's quiet time (a tenant rings at most once per 200 ms).
const STAY_ACTIVE: Duration = Duration::from_secs(1);

/// Most streams named in one read.
const STREAMS_PER_READ: usize = 128;

impl Worker {
    /// A worker over `queue`, resolving tenants through `sync`'s registry.
    pub fn new(queue: JobQueue, sync: Arc<ConfigSync>, options: WorkerOptions) -> Self {
        let name = Arc::from(options.name.as_str());
        let files_root = Arc::from(options.files_dir.as_path());
        Self {
            queue,
            sync,
            options,
            name,
            files_root,
        }
    }

    /// Its consumer name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs until `shutdown` turns true, then stops reading, puts back what it had read but
    /// not started, and gives running jobs `grace` to finish. What does not finish stays
    /// pending and is reclaimed by another worker.
    pub async fn run(
        self,
        redis_url: &str,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let client = redis::Client::open(redis_url).context("the Redis URL")?;
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
        let reader_conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context("connecting to Redis")?;
        let this = Arc::new(self);
        this.ensure_doorbell().await?;

        let load = Arc::new(Mutex::new(Load::default()));
        // Every tenant that has a stream is worth one look at start-up.
        {
            let mut conn = this.queue.pool().get().await?;
            let tenants: Vec<String> = conn.smembers(this.queue.keys().tenants()).await?;
            let mut l = load.lock().unwrap_or_else(|e| e.into_inner());
            for t in tenants.iter().filter_map(|t| TenantId::parse(t).ok()) {
                l.activate(t);
            }
        }
        let capacity = Arc::new(Notify::new());
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Delivery>>();
        let (stop_tx, stop_rx) = watch::channel(false);

        let reader = tokio::spawn(Arc::clone(&this).read_loop(
            reader_conn,
            Arc::clone(&load),
            Arc::clone(&capacity),
            tx.clone(),
            stop_rx.clone(),
        ));
        let housekeeping =
            tokio::spawn(Arc::clone(&this).housekeeping(Arc::clone(&load), tx, stop_rx));
        tracing::info!(worker = %this.name, "worker started");

        let mut local: HashMap<TenantId, VecDeque<Delivery>> = HashMap::new();
        let mut order: VecDeque<TenantId> = VecDeque::new();
        // Entries held, by tenant and entry id: entry ids are per stream, and two tenants'
        // streams often have entries with the same id (the same millisecond).
        let mut known: HashSet<(TenantId, String)> = HashSet::new();
        let mut running_per_tenant: HashMap<TenantId, usize> = HashMap::new();
        let mut running: JoinSet<(TenantId, String)> = JoinSet::new();
        // Entries read but not started yet are this worker's too: their idle time is reset
        // as a running job's is, so no other worker reclaims a job that is only waiting.
        let every = (this.options.visibility_timeout / 3).max(Duration::from_millis(50));
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let held: Vec<(TenantId, Vec<String>)> = local
                        .iter()
                        .filter(|(_, q)| !q.is_empty())
                        .map(|(t, q)| (t.clone(), q.iter().map(|d| d.stream_id.clone()).collect()))
                        .collect();
                    if !held.is_empty() {
                        let worker = Arc::clone(&this);
                        tokio::spawn(async move { worker.touch(held).await });
                    }
                }
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    for d in batch {
                        // A reclaim can hand back an entry this worker already holds.
                        if !known.insert((d.envelope.tenant_id.clone(), d.stream_id.clone())) {
                            load.lock().unwrap_or_else(|e| e.into_inner()).done(&d.envelope.tenant_id);
                            continue;
                        }
                        let t = d.envelope.tenant_id.clone();
                        if !order.contains(&t) {
                            order.push_back(t.clone());
                        }
                        local.entry(t).or_default().push_back(d);
                    }
                }
                Some(done) = running.join_next() => {
                    if let Ok((tenant, stream_id)) = done {
                        known.remove(&(tenant.clone(), stream_id));
                        if let Some(n) = running_per_tenant.get_mut(&tenant) {
                            *n -= 1;
                        }
                        load.lock().unwrap_or_else(|e| e.into_inner()).done(&tenant);
                        capacity.notify_one();
                    }
                }
                _ = shutdown.wait_for(|s| *s) => break,
            }
            // Start what may start, one job per tenant per turn.
            let mut idle_turns = 0;
            while running.len() < this.options.concurrency && idle_turns < order.len() {
                let Some(tenant) = order.pop_front() else {
                    break;
                };
                let busy = running_per_tenant.get(&tenant).copied().unwrap_or(0);
                let queue = local.get_mut(&tenant);
                match queue {
                    Some(q) if !q.is_empty() && busy < this.options.per_tenant => {
                        let d = q.pop_front().expect("not empty");
                        *running_per_tenant.entry(tenant.clone()).or_default() += 1;
                        let worker = Arc::clone(&this);
                        running.spawn(async move {
                            let stream_id = d.stream_id.clone();
                            let tenant = d.envelope.tenant_id.clone();
                            worker.run_one(d).await;
                            (tenant, stream_id)
                        });
                        idle_turns = 0;
                        order.push_back(tenant);
                    }
                    Some(q) if q.is_empty() && busy == 0 => {
                        local.remove(&tenant);
                        running_per_tenant.remove(&tenant);
                    }
                    _ => {
                        idle_turns += 1;
                        order.push_back(tenant);
                    }
                }
            }
        }

        // Shutdown: stop reading, hand back what never started, let running jobs finish.
        let _ = stop_tx.send(true);
        let _ = reader.await;
        let _ = housekeeping.await;
        while let Ok(batch) = rx.try_recv() {
            for d in batch {
                local
                    .entry(d.envelope.tenant_id.clone())
                    .or_default()
                    .push_back(d);
            }
        }
        let unstarted: Vec<Delivery> = local.into_values().flatten().collect();
        let handed_back = unstarted.len();
        for d in unstarted {
            if let Err(e) = this.requeue(&d).await {
                tracing::warn!(job_id = %d.envelope.job_id, error = %e,
                    "could not hand a job back; it will be reclaimed after the visibility timeout");
            }
        }
        let in_flight = running.len();
        let finished = tokio::time::timeout(this.options.grace, async {
            while running.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !finished {
            running.abort_all();
        }
        tracing::info!(worker = %this.name, handed_back, in_flight, finished_in_grace = finished, "worker stopped");
        Ok(())
    }

    async fn ensure_doorbell(&self) -> anyhow::Result<()> {
        let mut conn = self.queue.pool().get().await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.queue.keys().doorbell())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut *conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => {
                Err(e).context("creating the doorbell group")
            }
            _ => Ok(()),
        }
    }

    async fn read_loop(
        self: Arc<Self>,
        mut conn: redis::aio::MultiplexedConnection,
        load: Arc<Mutex<Load>>,
        capacity: Arc<Notify>,
        tx: mpsc::UnboundedSender<Vec<Delivery>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let keys = self.queue.keys().clone();
        let doorbell = keys.doorbell();
        let per_tenant = self.options.per_tenant;
        loop {
            if *stop.borrow() {
                return;
            }
            // Which streams to read: active tenants below their cap, a window at a time.
            let (streams, capped, full) = {
                let mut l = load.lock().unwrap_or_else(|e| e.into_inner());
                let full = l.total >= self.options.concurrency;
                let eligible: Vec<TenantId> = l
                    .active
                    .iter()
                    .filter(|t| l.per_tenant.get(*t).copied().unwrap_or(0) < per_tenant)
                    .cloned()
                    .collect();
                let capped = l.active.len() - eligible.len();
                // Tenants just rung first (a job for an idle tenant waits for no rotation),
                // then the rotation fills the window.
                let mut window: Vec<TenantId> = Vec::new();
                let mut in_window: HashSet<TenantId> = HashSet::new();
                let mut later = VecDeque::new();
                while let Some(t) = l.urgent.pop_front() {
                    if window.len() >= STREAMS_PER_READ {
                        later.push_back(t);
                    } else if l.per_tenant.get(&t).copied().unwrap_or(0) < per_tenant
                        && in_window.insert(t.clone())
                    {
                        window.push(t);
                    }
                }
                l.urgent = later;
                let n = eligible.len();
                let start = if n == 0 { 0 } else { l.rotate % n };
                let room = STREAMS_PER_READ - window.len();
                l.rotate = l.rotate.wrapping_add(room);
                for i in 0..n.min(room) {
                    let t = &eligible[(start + i) % n];
                    if in_window.insert(t.clone()) {
                        window.push(t.clone());
                    }
                }
                (window, capped, full)
            };
            if full {
                tokio::select! {
                    () = capacity.notified() => {},
                    () = tokio::time::sleep(Duration::from_millis(100)) => {},
                    _ = stop.changed() => {},
                }
                continue;
            }
            // Block only when no tenant is held back by its cap: a capped tenant with a
            // backlog must be read again as soon as one of its jobs finishes.
            let blocking = capped == 0;
            let mut opts = StreamReadOptions::default()
                .group(GROUP, &*self.name)
                .count(per_tenant);
            if blocking {
                opts = opts.block(250);
            }
            let mut keys_arg: Vec<String> = Vec::with_capacity(streams.len() + 1);
            keys_arg.push(doorbell.clone());
            keys_arg.extend(streams.iter().map(|t| keys.stream(t)));
            let ids: Vec<&str> = vec![">"; keys_arg.len()];
            let reply: redis::RedisResult<Option<StreamReadReply>> =
                conn.xread_options(&keys_arg, &ids, &opts).await;
            let reply = match reply {
                Ok(r) => r.unwrap_or_default(),
                Err(e) => {
                    if e.code() == Some("NOGROUP") {
                        for t in &streams {
                            self.queue.forget_group(t);
                            let _ = self.queue.ensure_group_if_stream(t).await;
                        }
                        let _ = self.ensure_doorbell().await;
                    } else {
                        tracing::warn!(error = %e, "reading jobs failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    continue;
                }
            };

            let mut rung: Vec<TenantId> = Vec::new();
            let mut doorbell_ids: Vec<String> = Vec::new();
            let mut batch: Vec<Delivery> = Vec::new();
            let mut returned: HashSet<TenantId> = HashSet::new();
            for stream in reply.keys {
                if stream.key == doorbell {
                    for entry in stream.ids {
                        if let Some(t) = entry
                            .get::<String>("tenant")
                            .and_then(|t| TenantId::parse(&t).ok())
                        {
                            rung.push(t);
                        }
                        doorbell_ids.push(entry.id);
                    }
                    continue;
                }
                let Some(tenant) = keys.tenant_of_stream(&stream.key) else {
                    continue;
                };
                returned.insert(tenant.clone());
                for entry in stream.ids {
                    match entry
                        .get::<String>("job")
                        .and_then(|j| serde_json::from_str::<Envelope>(&j).ok())
                    {
                        // The stream decides the tenant, never the payload: an envelope
                        // naming another tenant is refused.
                        Some(envelope) if envelope.tenant_id == tenant => batch.push(Delivery {
                            stream_id: entry.id,
                            envelope,
                        }),
                        _ => self.discard_malformed(&tenant, &entry.id).await,
                    }
                }
            }
            if !doorbell_ids.is_empty() {
                let _: redis::RedisResult<()> = redis::pipe()
                    .xack(&doorbell, GROUP, &doorbell_ids)
                    .ignore()
                    .xdel(&doorbell, &doorbell_ids)
                    .ignore()
                    .query_async(&mut conn)
                    .await;
            }
            for t in &rung {
                let _ = self.queue.ensure_group_if_stream(t).await;
            }
            let got_jobs = !batch.is_empty();
            {
                let mut l = load.lock().unwrap_or_else(|e| e.into_inner());
                for t in rung {
                    l.activate_now(t);
                }
                for d in &batch {
                    l.add(&d.envelope.tenant_id, 1);
                }
                let mut gone = HashSet::new();
                for t in &streams {
                    if returned.contains(t) {
                        l.idle_rounds.insert(t.clone(), 0);
                        l.last_work.insert(t.clone(), tokio::time::Instant::now());
                    } else {
                        let idle = l.idle_rounds.entry(t.clone()).or_default();
                        *idle += 1;
                        let idle = *idle;
                        // Idle for some reads and for a while: a submission within the
                        // doorbell's quiet time after the last one (which rings nothing)
                        // still finds its tenant read.
                        let quiet = l
                            .last_work
                            .get(t)
                            .is_none_or(|at| at.elapsed() >= STAY_ACTIVE);
                        if idle > 3 && quiet && !l.per_tenant.contains_key(t) {
                            gone.insert(t.clone());
                        }
                    }
                }
                l.deactivate(&gone);
            }
            if got_jobs && tx.send(batch).is_err() {
                return;
            }
            if !got_jobs && !blocking {
                tokio::select! {
                    () = capacity.notified() => {},
                    () = tokio::time::sleep(Duration::from_millis(20)) => {},
                    _ = stop.changed() => {},
                }
            }
        }
    }

    async fn discard_malformed(&self, tenant: &TenantId, stream_id: &str) {
        tracing::error!(tenant.id = %tenant, stream_id, "dropping a stream entry that is not a job of this tenant");
        if let Ok(mut conn) = self.queue.pool().get().await {
            let stream = self.queue.keys().stream(tenant);
            let _: redis::RedisResult<()> = redis::pipe()
                .atomic()
                .xadd_maxlen(
                    self.queue.keys().dead(),
                    StreamMaxlen::Approx(self.options.dead_max_len),
                    "*",
                    &[
                        ("tenant_id", tenant.as_str()),
                        ("error", "malformed entry"),
                        ("stream_id", stream_id),
                    ],
                )
                .ignore()
                .xack(&stream, GROUP, &[stream_id])
                .ignore()
                .xdel(&stream, &[stream_id])
                .ignore()
                .query_async(&mut *conn)
                .await;
        }
    }

    async fn housekeeping(
        self: Arc<Self>,
        load: Arc<Mutex<Load>>,
        tx: mpsc::UnboundedSender<Vec<Delivery>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reclaim_every = (self.options.visibility_timeout / 2).max(Duration::from_millis(200));
        let mut last_reclaim = tokio::time::Instant::now();
        let mut last_refresh = tokio::time::Instant::now();
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {},
                _ = stop.changed() => return,
            }
            if let Err(e) = self.move_due().await {
                tracing::warn!(error = %e, "moving due retries failed");
            }
            // The set of tenants with streams keeps only those with work, so the refresh and
            // the reclaim below scale with them, not with every tenant that ever had a job.
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                match self.prune_idle_tenants().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(tenants = n, "pruned tenants without jobs"),
                    Err(e) => tracing::warn!(error = %e, "pruning idle tenants failed"),
                }
            }
            // A doorbell entry reaches one worker; the others learn of a busy tenant here.
            if last_refresh.elapsed() >= REFRESH_EVERY {
                last_refresh = tokio::time::Instant::now();
                if let Ok(tenants) = self.tenants_with_streams().await {
                    let mut l = load.lock().unwrap_or_else(|e| e.into_inner());
                    for t in tenants {
                        if !l.active_set.contains(&t) {
                            l.activate(t);
                        }
                    }
                }
            }
            if last_reclaim.elapsed() >= reclaim_every {
                last_reclaim = tokio::time::Instant::now();
                match self.reclaim().await {
                    Ok((tenants, batch)) => {
                        {
                            let mut l = load.lock().unwrap_or_else(|e| e.into_inner());
                            for t in tenants {
                                l.activate(t);
                            }
                            for d in &batch {
                                l.add(&d.envelope.tenant_id, 1);
                            }
                        }
                        if !batch.is_empty() {
                            tracing::info!(
                                jobs = batch.len(),
                                "reclaimed jobs of a worker that stopped"
                            );
                            if tx.send(batch).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reclaiming failed"),
                }
            }
        }
    }

    /// Takes tenants whose stream is empty (no job queued or held) out of the set of tenants
    /// with streams, atomically against a submission (whose MULTI adds the tenant back).
    async fn prune_idle_tenants(&self) -> anyhow::Result<u64> {
        const PRUNE: &str = "
            local removed = 0
            for _, t in ipairs(redis.call('SMEMBERS', KEYS[1])) do
              if redis.call('XLEN', ARGV[1] .. 't:' .. t .. ':jobs') == 0 then
                redis.call('SREM', KEYS[1], t)
                removed = removed + 1
              end
            end
            return removed";
        let keys = self.queue.keys();
        let mut conn = self.queue.pool().get().await?;
        Ok(redis::cmd("EVAL")
            .arg(PRUNE)
            .arg(1)
            .arg(keys.tenants())
            .arg(keys.stream_prefix())
            .query_async(&mut *conn)
            .await?)
    }

    /// Moves retries and scheduled jobs whose time has come onto their streams, atomically.
    async fn move_due(&self) -> anyhow::Result<()> {
        const MOVE: &str = r"
            local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 200)
            local moved = {}
            for _, m in ipairs(due) do
              local nl = string.find(m, '\n', 1, true)
              if nl then
                local t = string.sub(m, 1, nl - 1)
                redis.call('XADD', ARGV[2] .. 't:' .. t .. ':jobs', '*', 'job', string.sub(m, nl + 1))
                table.insert(moved, t)
                if redis.call('HINCRBY', KEYS[2], t, -1) <= 0 then
                  redis.call('HDEL', KEYS[2], t)
                end
                redis.call('SADD', KEYS[3], t)
              end
              redis.call('ZREM', KEYS[1], m)
            end
            return moved";
        let keys = self.queue.keys();
        let mut conn = self.queue.pool().get().await?;
        let moved: Vec<String> = redis::cmd("EVAL")
            .arg(MOVE)
            .arg(3)
            .arg(keys.delayed())
            .arg(keys.delayed_counts())
            .arg(keys.tenants())
            .arg(now_ms())
            .arg(keys.stream_prefix())
            .query_async(&mut *conn)
            .await?;
        if !moved.is_empty() {
            let mut tenants: Vec<TenantId> = moved
                .iter()
                .filter_map(|t| TenantId::parse(t).ok())
                .collect();
            tenants.sort();
            tenants.dedup();
            ring(&mut conn, keys, &tenants).await?;
        }
        Ok(())
    }

    async fn tenants_with_streams(&self) -> anyhow::Result<Vec<TenantId>> {
        let mut conn = self.queue.pool().get().await?;
        let tenants: Vec<String> = conn.smembers(self.queue.keys().tenants()).await?;
        Ok(tenants
            .iter()
            .filter_map(|t| TenantId::parse(t).ok())
            .collect())
    }

    /// Takes over entries idle past the visibility timeout, on every tenant's stream.
    async fn reclaim(&self) -> anyhow::Result<(Vec<TenantId>, Vec<Delivery>)> {
        let keys = self.queue.keys();
        let mut conn = self.queue.pool().get().await?;
        let tenants: Vec<String> = conn.smembers(keys.tenants()).await?;
        let tenants: Vec<TenantId> = tenants
            .iter()
            .filter_map(|t| TenantId::parse(t).ok())
            .collect();
        let min_idle = self.options.visibility_timeout.as_millis() as u64;
        let mut batch = Vec::new();
        for tenant in &tenants {
            let stream = keys.stream(tenant);
            let reply: redis::RedisResult<redis::streams::StreamAutoClaimReply> =
                redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&*self.name)
                    .arg(min_idle)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(self.options.per_tenant)
                    .query_async(&mut *conn)
                    .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) if e.code() == Some("NOGROUP") => {
                    self.queue.forget_group(tenant);
                    let _ = self.queue.ensure_group_if_stream(tenant).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for entry in reply.claimed {
                match entry
                    .get::<String>("job")
                    .and_then(|j| serde_json::from_str::<Envelope>(&j).ok())
                {
                    Some(envelope) if &envelope.tenant_id == tenant => batch.push(Delivery {
                        stream_id: entry.id,
                        envelope,
                    }),
                    _ => self.discard_malformed(tenant, &entry.id).await,
                }
            }
        }
        Ok((tenants, batch))
    }

    async fn requeue(&self, d: &Delivery) -> anyhow::Result<()> {
        let keys = self.queue.keys();
        let stream = keys.stream(&d.envelope.tenant_id);
        let json = serde_json::to_string(&d.envelope)?;
        let mut conn = self.queue.pool().get().await?;
        let _: () = redis::pipe()
            .atomic()
            .xadd(&stream, "*", &[("job", &json)])
            .ignore()
            .xack(&stream, GROUP, &[&d.stream_id])
            .ignore()
            .xdel(&stream, &[&d.stream_id])
            .ignore()
            .sadd(keys.tenants(), d.envelope.tenant_id.as_str())
            .ignore()
            .query_async(&mut *conn)
            .await?;
        Ok(())
    }

    /// Runs one delivery to its end: parked, succeeded, retried or dead. Never panics.
    async fn run_one(self: Arc<Self>, d: Delivery) {
        let Delivery {
            stream_id,
            envelope,
        } = d;
        let tenant = envelope.tenant_id.clone();
        // Fail closed: the tenant comes from this worker's registry or the job does not run.
        let wanted = envelope.incarnation;
        let current = |entry: &Option<Arc<crate::registry::TenantEntry>>| {
            entry
                .as_ref()
                .is_some_and(|e| wanted.is_none_or(|i| i == e.tenant().incarnation))
        };
        let mut entry = self.sync.registry().snapshot().get(&tenant).cloned();
        if !current(&entry) {
            // Maybe this worker is a moment behind: ask the control database once.
            let _ = self.sync.catch_up().await;
            entry = self.sync.registry().snapshot().get(&tenant).cloned();
        }
        let entry = match entry {
            None => {
                // Removed with its data kept: the job is part of that data. It waits for an
                // adopt (which brings the incarnation back) or a purge (which deletes it).
                let kept = self.sync.control().leftover(&tenant).await.ok().flatten();
                if kept.is_some_and(|l| wanted.is_none_or(|i| i == l.incarnation)) {
                    return self
                        .finish(
                            &envelope,
                            &stream_id,
                            Finish::Wait(
                                "its tenant was removed with its data kept: it runs if the \
                                 tenant is adopted, and goes with a purge"
                                    .into(),
                                KEPT_WAIT,
                            ),
                        )
                        .await;
                }
                return self
                    .finish(
                        &envelope,
                        &stream_id,
                        Finish::Parked("the tenant is unknown or was deleted".into()),
                    )
                    .await;
            }
            Some(e) if wanted.is_some_and(|i| i != e.tenant().incarnation) => {
                return self
                    .finish(
                        &envelope,
                        &stream_id,
                        Finish::Parked(
                            "the tenant it was submitted for was removed; this id is now \
                             another tenant"
                                .into(),
                        ),
                    )
                    .await;
            }
            Some(e) if e.tenant().state == TenantState::Suspended => {
                return self
                    .finish(
                        &envelope,
                        &stream_id,
                        Finish::Parked("the tenant is suspended".into()),
                    )
                    .await;
            }
            Some(e) => e,
        };
        let attempts = match self.mark_running(&envelope).await {
            Ok(n) => n,
            Err(e) => {
                // Leave it pending: it is reclaimed after the visibility timeout.
                tracing::warn!(job_id = %envelope.job_id, error = %e, "could not mark a job running");
                return;
            }
        };
        if attempts > self.options.max_attempts {
            // Started that often without ever finishing: its workers died each time.
            let error = format!(
                "started {attempts} times without finishing (its worker stopped each time)"
            );
            return self
                .finish(&envelope, &stream_id, Finish::Dead(error))
                .await;
        }
        let ctx = JobContext::new(
            entry,
            envelope.clone(),
            self.queue.pool().clone(),
            self.queue.keys(),
            Arc::clone(&self.name),
            Arc::clone(&self.files_root),
        );
        let outcome = match self
            .queue
            .kinds()
            .run(&envelope.kind, envelope.payload.clone(), ctx)
        {
            None => Err(JobError::fatal(format!(
                "this worker has no job kind '{}'",
                envelope.kind
            ))),
            Some(fut) => {
                let handle = tokio::spawn(fut);
                let heartbeat = self.heartbeat(&tenant, &stream_id);
                tokio::pin!(heartbeat);
                tokio::pin!(handle);
                let joined = tokio::select! {
                    joined = &mut handle => joined,
                    () = &mut heartbeat => unreachable!("the heartbeat never ends"),
                };
                match joined {
                    Ok(result) => result,
                    Err(e) if e.is_panic() => Err(JobError::retry("the job panicked")),
                    Err(_) => Err(JobError::retry("the job was cancelled")),
                }
            }
        };
        if outcome.as_ref().is_err_and(|e| e.retryable) {
            // The tenant may have moved under this worker (a guard refused the write): the
            // retry should find it where the control database says it is now.
            let _ = self.sync.catch_up().await;
        }
        let finish = match outcome {
            Ok(result) => Finish::Succeeded(result),
            Err(e) if e.retryable && attempts < self.options.max_attempts => {
                Finish::Retry(e.message, self.backoff(attempts))
            }
            Err(e) => Finish::Dead(e.message),
        };
        self.finish(&envelope, &stream_id, finish).await;
    }

    /// Resets the idle time of entries this worker holds but has not started.
    async fn touch(&self, held: Vec<(TenantId, Vec<String>)>) {
        let Ok(mut conn) = self.queue.pool().get().await else {
            return;
        };
        for (tenant, ids) in held {
            for chunk in ids.chunks(500) {
                let _: redis::RedisResult<redis::Value> = redis::cmd("XCLAIM")
                    .arg(self.queue.keys().stream(&tenant))
                    .arg(GROUP)
                    .arg(&*self.name)
                    .arg(0)
                    .arg(chunk)
                    .arg("JUSTID")
                    .query_async(&mut *conn)
                    .await;
            }
        }
    }

    /// Keeps the entry ours while the job runs: resets its idle time every third of the
    /// visibility timeout, so no other worker reclaims a job that is still running.
    async fn heartbeat(&self, tenant: &TenantId, stream_id: &str) {
        let every = (self.options.visibility_timeout / 3).max(Duration::from_millis(50));
        let stream = self.queue.keys().stream(tenant);
        loop {
            tokio::time::sleep(every).await;
            if let Ok(mut conn) = self.queue.pool().get().await {
                let _: redis::RedisResult<redis::Value> = redis::cmd("XCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&*self.name)
                    .arg(0)
                    .arg(stream_id)
                    .arg("JUSTID")
                    .query_async(&mut *conn)
                    .await;
            }
        }
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let base = self.options.backoff.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
        let capped = exp.min(300_000);
        // Equal jitter: half fixed, half random, so retries of a burst spread out.
        let jitter = rand::random::<u64>() % (capped / 2 + 1);
        Duration::from_millis(capped / 2 + jitter)
    }

    async fn mark_running(&self, envelope: &Envelope) -> anyhow::Result<u32> {
        let key = self.queue.keys().job(&envelope.tenant_id, &envelope.job_id);
        let mut conn = self.queue.pool().get().await?;
        let (attempts,): (u32,) = redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("status", "running".to_string()),
                    ("started_at", now_ms().to_string()),
                ],
            )
            .ignore()
            // A status past its TTL is made again: with the TTL again.
            .expire(&key, super::queue::STATUS_TTL_SECS)
            .ignore()
            .hincr(&key, "attempts", 1)
            .query_async(&mut *conn)
            .await?;
        Ok(attempts)
    }

    async fn finish(&self, envelope: &Envelope, stream_id: &str, finish: Finish) {
        let keys = self.queue.keys();
        let stream = keys.stream(&envelope.tenant_id);
        let status_key = keys.job(&envelope.tenant_id, &envelope.job_id);
        let now = now_ms().to_string();
        let fence = envelope
            .incarnation
            .map(|i| keys.fence(&envelope.tenant_id, i));
        if let Some(fence) = &fence {
            // The tenant's incarnation was purged: nothing of the job is kept.
            let fenced: bool = match self.queue.pool().get().await {
                Ok(mut conn) => conn.exists(fence).await.unwrap_or(false),
                Err(_) => false,
            };
            if fenced {
                if let Ok(mut conn) = self.queue.pool().get().await {
                    let _: redis::RedisResult<()> = redis::pipe()
                        .xack(&stream, GROUP, &[stream_id])
                        .ignore()
                        .xdel(&stream, &[stream_id])
                        .ignore()
                        .query_async(&mut *conn)
                        .await;
                    let _ = super::queue::forget_job(&mut conn, keys, envelope, None).await;
                }
                return;
            }
        }
        let mut delayed_member = None;
        let mut pipe = redis::pipe();
        pipe.atomic();
        match &finish {
            Finish::Wait(reason, delay) => {
                let run_at = now_ms() + delay.as_millis() as i64;
                let next = Envelope {
                    run_at: Some(run_at),
                    ..envelope.clone()
                };
                let json = serde_json::to_string(&next).expect("an envelope serialises");
                let member = format!("{}\n{json}", envelope.tenant_id);
                pipe.zadd(keys.delayed(), &member, run_at)
                    .ignore()
                    .hincr(keys.delayed_counts(), envelope.tenant_id.as_str(), 1)
                    .ignore()
                    .hset_multiple(
                        &status_key,
                        &[
                            ("status", "waiting".to_string()),
                            ("last_error", reason.clone()),
                            ("next_attempt_at", run_at.to_string()),
                        ],
                    )
                    .ignore();
                delayed_member = Some(member);
            }
            Finish::Succeeded(result) => {
                pipe.hset_multiple(
                    &status_key,
                    &[
                        ("status", "succeeded".to_string()),
                        ("finished_at", now),
                        ("result", result.to_string()),
                    ],
                )
                .ignore();
            }
            Finish::Retry(error, delay) => {
                let run_at = now_ms() + delay.as_millis() as i64;
                let next = Envelope {
                    attempt: envelope.attempt + 1,
                    run_at: Some(run_at),
                    ..envelope.clone()
                };
                let json = serde_json::to_string(&next).expect("an envelope serialises");
                let member = format!("{}\n{json}", envelope.tenant_id);
                pipe.zadd(keys.delayed(), &member, run_at)
                    .ignore()
                    .hincr(keys.delayed_counts(), envelope.tenant_id.as_str(), 1)
                    .ignore()
                    .hset_multiple(
                        &status_key,
                        &[
                            ("status", "failed".to_string()),
                            ("last_error", error.clone()),
                            ("next_attempt_at", run_at.to_string()),
                        ],
                    )
                    .ignore();
            }
            Finish::Dead(error) => {
                let json = serde_json::to_string(envelope).expect("an envelope serialises");
                pipe.xadd_maxlen(
                    keys.dead(),
                    StreamMaxlen::Approx(self.options.dead_max_len),
                    "*",
                    &[
                        ("tenant_id", envelope.tenant_id.as_str()),
                        ("job_id", envelope.job_id.as_str()),
                        ("error", error.as_str()),
                        ("job", json.as_str()),
                    ],
                )
                .ignore()
                .hset_multiple(
                    &status_key,
                    &[
                        ("status", "dead".to_string()),
                        ("last_error", error.clone()),
                        ("finished_at", now),
                    ],
                )
                .ignore()
                .hdel(&status_key, "next_attempt_at")
                .ignore();
            }
            Finish::Parked(reason) => {
                let json = serde_json::to_string(envelope).expect("an envelope serialises");
                pipe.xadd_maxlen(
                    keys.parked(),
                    StreamMaxlen::Approx(self.options.dead_max_len),
                    "*",
                    &[
                        ("tenant_id", envelope.tenant_id.as_str()),
                        ("job_id", envelope.job_id.as_str()),
                        ("reason", reason.as_str()),
                        ("job", json.as_str()),
                    ],
                )
                .ignore()
                .hset_multiple(
                    &status_key,
                    &[
                        ("status", "parked".to_string()),
                        ("last_error", reason.clone()),
                    ],
                )
                .ignore();
            }
        }
        pipe.expire(&status_key, super::queue::STATUS_TTL_SECS)
            .ignore()
            .xack(&stream, GROUP, &[stream_id])
            .ignore()
            .xdel(&stream, &[stream_id])
            .ignore();
        let result: anyhow::Result<()> = async {
            let mut conn = self.queue.pool().get().await?;
            pipe.query_async::<()>(&mut *conn).await?;
            // A purge that set its fence while this was being written: remove it again.
            if let Some(fence) = &fence {
                if conn.exists::<_, bool>(fence).await? {
                    super::queue::forget_job(&mut conn, keys, envelope, delayed_member.as_deref())
                        .await?;
                }
            }
            Ok(())
        }
        .await;
        match (&finish, result) {
            (_, Err(e)) => tracing::warn!(job_id = %envelope.job_id, error = %e,
                "could not record a job's end; it will be redelivered (its effect is recorded once)"),
            (Finish::Parked(reason), Ok(())) => tracing::warn!(tenant.id = %envelope.tenant_id,
                job_id = %envelope.job_id, reason = %reason, "job parked"),
            (Finish::Dead(error), Ok(())) => tracing::warn!(tenant.id = %envelope.tenant_id,
                job_id = %envelope.job_id, error = %error, "job dead"),
            _ => {}
        }
    }
}

/// How long a job of a removed tenant whose data was kept waits before it looks again.
const KEPT_WAIT: Duration = Duration::from_secs(60);

enum Finish {
    Succeeded(serde_json::Value),
    Retry(String, Duration),
    /// Not run, not an attempt: delayed again, for the reason given.
    Wait(String, Duration),
    Dead(String),
    Parked(String),
}
