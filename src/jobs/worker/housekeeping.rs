//! Housekeeping: due retries back onto their streams, entries of stopped workers
//! reclaimed, tenants with streams refreshed into the reads and pruned once idle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands as _;
use tokio::sync::{mpsc, watch};

use super::reader::Load;
use super::{Delivery, Worker};
use crate::jobs::Envelope;
use crate::jobs::queue::{GROUP, now_ms, ring};
use crate::tenant::TenantId;

/// How often a worker looks for tenants with streams it does not read yet.
const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// How often tenants without jobs are taken out of the set of tenants with streams.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

impl Worker {
    pub(super) async fn housekeeping(
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
    pub(super) async fn move_due(&self) -> anyhow::Result<()> {
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

    pub(super) async fn tenants_with_streams(&self) -> anyhow::Result<Vec<TenantId>> {
        let mut conn = self.queue.pool().get().await?;
        let tenants: Vec<String> = conn.smembers(self.queue.keys().tenants()).await?;
        Ok(tenants
            .iter()
            .filter_map(|t| TenantId::parse(t).ok())
            .collect())
    }

    /// Takes over entries idle past the visibility timeout, on every tenant's stream.
    pub(super) async fn reclaim(&self) -> anyhow::Result<(Vec<TenantId>, Vec<Delivery>)> {
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
}
