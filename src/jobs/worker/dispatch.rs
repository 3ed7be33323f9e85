//! The dispatcher: a local queue per tenant, jobs started round-robin across tenants within
//! the concurrency caps, held entries kept ours, and what never started handed back on
//! shutdown.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use redis::AsyncCommands as _;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use super::reader::Load;
use super::{Delivery, Worker};
use crate::jobs::queue::GROUP;
use crate::tenant::TenantId;

mod attempt;
mod finish;

pub(super) use finish::Ended;

impl Worker {
    /// Runs until `shutdown` turns true, then stops reading, puts back what it had read but
    /// not started, and gives running jobs `grace` to finish. What does not finish stays
    /// pending and is reclaimed by another worker.
    pub async fn run(
        self,
        redis: impl Into<crate::RedisEndpoint>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let client = redis.into().client().context("the Redis URL")?;
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
                            // Every log line of the delivery, warnings and errors included,
                            // carries its tenant.
                            let span = tracing::info_span!(
                                "job",
                                tenant.id = %tenant,
                                job.id = %d.envelope.job_id,
                                job.kind = %d.envelope.kind,
                            );
                            tracing::Instrument::instrument(worker.run_one(d), span).await;
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
}
