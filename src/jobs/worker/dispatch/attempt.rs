//! One attempt at a job: its tenant resolved (or the job parked), the attempt counted, the
//! job run beside its heartbeat, and how it ended decided.

use std::sync::Arc;
use std::time::Duration;

use super::finish::{Ended, Finish};
use crate::jobs::queue::{GROUP, STATUS_TTL_SECS, now_ms};
use crate::jobs::worker::{Delivery, Worker};
use crate::jobs::{Envelope, JobContext, JobError};
use crate::tenant::{TenantId, TenantState};

/// How long a job of a removed tenant whose data was kept waits before it looks again.
const KEPT_WAIT: Duration = Duration::from_secs(60);

impl Worker {
    /// Runs one delivery to its end: parked, succeeded, retried or dead. Never panics.
    pub(in crate::jobs::worker) async fn run_one(&self, d: Delivery) -> Ended {
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
                return Ended::Unrecorded;
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
        if envelope.attempt == 0 {
            let due = envelope.run_at.unwrap_or(0).max(envelope.enqueued_at);
            metrics::histogram!(crate::telemetry::JOB_QUEUE_WAIT).record(
                crate::telemetry::ms_between(due, crate::telemetry::unix_ms()),
            );
        }
        let started = std::time::Instant::now();
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
                // The job's own logs carry this delivery's span (its tenant and job).
                let handle = tokio::spawn(tracing::Instrument::in_current_span(fut));
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
        let outcome = match &finish {
            Finish::Succeeded(_) => "succeeded",
            Finish::Retry(..) => "retry",
            _ => "dead",
        };
        metrics::histogram!(
            crate::telemetry::JOB_RUN,
            "kind" => envelope.kind.clone(),
            "outcome" => outcome
        )
        .record(started.elapsed());
        self.finish(&envelope, &stream_id, finish).await
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
            .expire(&key, STATUS_TTL_SECS)
            .ignore()
            .hincr(&key, "attempts", 1)
            .query_async(&mut *conn)
            .await?;
        Ok(attempts)
    }
}
