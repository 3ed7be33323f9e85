//! The reader: which tenants are worth reading (the active ones, the doorbell's), and one
//! `XREADGROUP` after another over their streams, handing what it reads to the dispatcher.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use redis::AsyncCommands as _;
use redis::streams::{StreamMaxlen, StreamReadOptions, StreamReadReply};
use tokio::sync::{Notify, mpsc, watch};

use super::{Delivery, Worker};
use crate::jobs::Envelope;
use crate::jobs::queue::GROUP;
use crate::tenant::TenantId;

/// How long a tenant stays in the reads after its last work, at least: longer than the
/// doorbell's quiet time (a tenant rings at most once per 200 ms).
const STAY_ACTIVE: Duration = Duration::from_secs(1);

/// Most streams named in one read.
const STREAMS_PER_READ: usize = 128;

/// What the reader and the dispatcher share.
#[derive(Default)]
pub(super) struct Load {
    /// Tenants worth reading, in rotation order.
    active: Vec<TenantId>,
    /// The same, for membership.
    pub(super) active_set: HashSet<TenantId>,
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
    pub(super) fn activate(&mut self, tenant: TenantId) {
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

    pub(super) fn add(&mut self, tenant: &TenantId, n: usize) {
        *self.per_tenant.entry(tenant.clone()).or_default() += n;
        self.total += n;
    }

    pub(super) fn done(&mut self, tenant: &TenantId) {
        if let Some(n) = self.per_tenant.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_tenant.remove(tenant);
            }
        }
        self.total = self.total.saturating_sub(1);
    }
}

impl Worker {
    pub(super) async fn ensure_doorbell(&self) -> anyhow::Result<()> {
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

    pub(super) async fn read_loop(
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

    pub(super) async fn discard_malformed(&self, tenant: &TenantId, stream_id: &str) {
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
}
