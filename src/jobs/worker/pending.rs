//! Running what is queued, here and now, until nothing is: [`Worker::run_pending`], for tests
//! (the `testing` feature's `drain`) and one-off tools. Each job takes the very attempt
//! [`Worker::run`] gives it (tenant resolution, parking, retries, dead letters); what this
//! leaves out is the reader, the dispatcher and their timers, so nothing runs in the
//! background and a call returns only once the queue says it is done.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use redis::AsyncCommands as _;
use redis::streams::{StreamReadOptions, StreamReadReply};

use super::dispatch::Ended;
use super::{Delivery, Worker};
use crate::jobs::Envelope;
use crate::jobs::queue::{GROUP, now_ms};
use crate::tenant::TenantId;

/// How often the queue is looked at again while another worker holds jobs.
const OTHERS_POLL: Duration = Duration::from_millis(10);

/// What [`Worker::run_pending`] did: one count per delivery, by how it ended, and what it
/// left for later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Deliveries that succeeded.
    pub succeeded: usize,
    /// Failed attempts that were delayed for another (each retry that then ran is counted
    /// again, by how it ended).
    pub retried: usize,
    /// Jobs that used up their attempts, or failed in a way no retry fixes.
    pub dead: usize,
    /// Jobs that did not run because of their tenant (unknown, suspended, another
    /// incarnation).
    pub parked: usize,
    /// Jobs that did not run because their tenant was removed with its data kept: delayed
    /// again, to run if the tenant is adopted.
    pub waiting: usize,
    /// Jobs whose tenant's incarnation was purged: dropped, nothing kept.
    pub discarded: usize,
    /// Jobs left in the delayed set when it returned: scheduled for later (`run_at`),
    /// waiting, or retries not due yet.
    pub delayed: usize,
}

impl DrainReport {
    fn count(&mut self, ended: Ended) {
        match ended {
            Ended::Succeeded => self.succeeded += 1,
            Ended::Retried => self.retried += 1,
            Ended::Waiting => self.waiting += 1,
            Ended::Dead => self.dead += 1,
            Ended::Parked => self.parked += 1,
            Ended::Discarded => self.discarded += 1,
            // Still pending: it is read again and counted by how that ends.
            Ended::Unrecorded => {}
        }
    }
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} succeeded, {} retried, {} dead, {} parked, {} waiting, {} discarded; {} delayed",
            self.succeeded,
            self.retried,
            self.dead,
            self.parked,
            self.waiting,
            self.discarded,
            self.delayed
        )
    }
}

/// The queue as one script saw it, at one instant.
struct Left {
    /// Entries on every tenant's stream: waiting to be read, or read and not finished.
    queued: u64,
    /// Delayed jobs whose time has come.
    due: u64,
    /// Delayed jobs, due or not.
    delayed: u64,
}

impl Worker {
    /// Runs every job that is queued, and every retry or scheduled job as it falls due, one
    /// at a time, until none is queued, running or due; returns what happened.
    ///
    /// Order: each round moves due jobs onto their streams, reads what this worker left
    /// pending and then new entries (up to `per_tenant` of each tenant, tenants by id), and
    /// runs them one tenant after another. Retries are delayed by the options' `backoff`
    /// as usual; a retry runs in this call if it falls due before the queue is otherwise
    /// done, so with a zero backoff every retry runs here, up to `max_attempts`. Jobs
    /// scheduled later (`run_at`) and jobs waiting for their tenant to be adopted are never
    /// run early: they are left delayed, and counted in [`DrainReport::delayed`].
    ///
    /// Done is decided by the queue alone, in one atomic look: no entry on any tenant's
    /// stream (an entry leaves its stream only in the same transaction that records its
    /// end) and no delayed job due. A job another worker is running keeps its entry there,
    /// so it is waited for; a job whose worker stopped is taken over after the visibility
    /// timeout, as [`Worker::run`] would. Fails when that takes longer than `within`
    /// (checked between jobs: a running job is not cut short) or Redis fails.
    pub async fn run_pending(&self, within: Duration) -> anyhow::Result<DrainReport> {
        let deadline = tokio::time::Instant::now() + within;
        let mut report = DrainReport::default();
        loop {
            self.move_due()
                .await
                .context("moving due jobs onto their streams")?;
            let mut tenants = self.tenants_with_streams().await?;
            tenants.sort();
            let mut batch = self.read_ready(&tenants).await?;
            if batch.is_empty() {
                batch = self.reclaim().await.context("taking over stale jobs")?.1;
            }
            if batch.is_empty() {
                let left = self.left().await?;
                if left.queued == 0 && left.due == 0 {
                    report.delayed = usize::try_from(left.delayed).unwrap_or(usize::MAX);
                    return Ok(report);
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{} jobs still queued or running and {} due after {within:?} ({report})",
                    left.queued,
                    left.due
                );
                // Held by another worker: its transaction ends them.
                tokio::time::sleep(OTHERS_POLL).await;
                continue;
            }
            for delivery in interleave(batch) {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "jobs still queued after {within:?} ({report})"
                );
                report.count(self.run_one(delivery).await);
            }
        }
    }

    /// What this worker left pending (its end not recorded), else new entries, of each of
    /// `tenants`.
    async fn read_ready(&self, tenants: &[TenantId]) -> anyhow::Result<Vec<Delivery>> {
        let mut batch = Vec::new();
        for tenant in tenants {
            let mine = self.read_stream(tenant, "0").await?;
            if mine.is_empty() {
                batch.extend(self.read_stream(tenant, ">").await?);
            } else {
                batch.extend(mine);
            }
        }
        Ok(batch)
    }

    /// One `XREADGROUP` of a tenant's stream from `id` (`0`: this consumer's pending
    /// entries; `>`: new ones), without blocking.
    async fn read_stream(&self, tenant: &TenantId, id: &str) -> anyhow::Result<Vec<Delivery>> {
        let stream = self.queue.keys().stream(tenant);
        let opts = StreamReadOptions::default()
            .group(GROUP, &*self.name)
            .count(self.options.per_tenant.max(1));
        let mut conn = self.queue.pool().get().await?;
        let reply: redis::RedisResult<Option<StreamReadReply>> =
            conn.xread_options(&[stream.as_str()], &[id], &opts).await;
        drop(conn);
        let reply = match reply {
            Ok(r) => r.unwrap_or_default(),
            Err(e) if e.code() == Some("NOGROUP") => {
                // A stream made by hand, or a group lost with a Redis restart: make it and
                // read again next round.
                self.queue.forget_group(tenant);
                self.queue.ensure_group_if_stream(tenant).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e).with_context(|| format!("reading {stream}")),
        };
        let mut batch = Vec::new();
        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
            match entry
                .get::<String>("job")
                .and_then(|j| serde_json::from_str::<Envelope>(&j).ok())
            {
                // As in the reader: the stream decides the tenant, never the payload.
                Some(envelope) if &envelope.tenant_id == tenant => batch.push(Delivery {
                    stream_id: entry.id,
                    envelope,
                }),
                _ => self.discard_malformed(tenant, &entry.id).await,
            }
        }
        Ok(batch)
    }

    /// Entries on every stream, due and delayed jobs: one script, so one instant.
    async fn left(&self) -> anyhow::Result<Left> {
        const LEFT: &str = "
            local queued = 0
            for _, t in ipairs(redis.call('SMEMBERS', KEYS[1])) do
              queued = queued + redis.call('XLEN', ARGV[1] .. 't:' .. t .. ':jobs')
            end
            return {queued, redis.call('ZCOUNT', KEYS[2], '-inf', ARGV[2]),
                    redis.call('ZCARD', KEYS[2])}";
        let keys = self.queue.keys();
        let mut conn = self.queue.pool().get().await?;
        let (queued, due, delayed): (u64, u64, u64) = redis::cmd("EVAL")
            .arg(LEFT)
            .arg(2)
            .arg(keys.tenants())
            .arg(keys.delayed())
            .arg(keys.stream_prefix())
            .arg(now_ms())
            .query_async(&mut *conn)
            .await
            .context("looking at what is left in the queue")?;
        Ok(Left {
            queued,
            due,
            delayed,
        })
    }
}

/// One delivery of each tenant in turn, each tenant's in stream order, as the dispatcher
/// takes them: the order is the queue's, whatever the timing.
fn interleave(batch: Vec<Delivery>) -> Vec<Delivery> {
    let mut queues: Vec<(TenantId, VecDeque<Delivery>)> = Vec::new();
    for d in batch {
        match queues.iter_mut().find(|(t, _)| *t == d.envelope.tenant_id) {
            Some((_, q)) => q.push_back(d),
            None => queues.push((d.envelope.tenant_id.clone(), VecDeque::from([d]))),
        }
    }
    let mut order = Vec::new();
    while queues.iter().any(|(_, q)| !q.is_empty()) {
        for (_, q) in &mut queues {
            order.extend(q.pop_front());
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(tenant: &str, stream_id: &str) -> Delivery {
        Delivery {
            stream_id: stream_id.into(),
            envelope: Envelope {
                job_id: format!("{tenant}-{stream_id}"),
                tenant_id: TenantId::parse(tenant).unwrap(),
                kind: "k".into(),
                payload: serde_json::Value::Null,
                attempt: 0,
                enqueued_at: 0,
                run_at: None,
                user_id: None,
                incarnation: None,
            },
        }
    }

    #[test]
    fn tenants_take_turns_and_keep_their_own_order() {
        let batch = vec![
            delivery("a", "1"),
            delivery("a", "2"),
            delivery("a", "3"),
            delivery("b", "1"),
            delivery("c", "1"),
            delivery("c", "2"),
        ];
        let order: Vec<String> = interleave(batch)
            .into_iter()
            .map(|d| d.envelope.job_id)
            .collect();
        assert_eq!(order, ["a-1", "b-1", "c-1", "a-2", "c-2", "a-3"]);
    }

    #[test]
    fn every_ending_but_an_unrecorded_one_is_counted_once() {
        let mut report = DrainReport::default();
        for ended in [
            Ended::Succeeded,
            Ended::Succeeded,
            Ended::Retried,
            Ended::Waiting,
            Ended::Dead,
            Ended::Parked,
            Ended::Discarded,
            Ended::Unrecorded,
        ] {
            report.count(ended);
        }
        assert_eq!(
            report.to_string(),
            "2 succeeded, 1 retried, 1 dead, 1 parked, 1 waiting, 1 discarded; 0 delayed"
        );
    }
}
