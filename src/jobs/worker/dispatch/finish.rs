//! How a job's end is recorded: status, retry or letter, and the stream entry acknowledged,
//! in one transaction; nothing kept of a job whose tenant's incarnation was purged.

use std::time::Duration;

use redis::AsyncCommands as _;
use redis::streams::StreamMaxlen;

use crate::jobs::Envelope;
use crate::jobs::queue::{GROUP, STATUS_TTL_SECS, forget_job, now_ms};
use crate::jobs::worker::Worker;

/// How one delivery ended, as far as the queue recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::jobs::worker) enum Ended {
    Succeeded,
    /// Failed, and delayed for another attempt.
    Retried,
    /// Not run, delayed again ([`Finish::Wait`]).
    Waiting,
    Dead,
    Parked,
    /// Its tenant's incarnation was purged: nothing of it was kept.
    Discarded,
    /// Nothing was recorded (Redis failed): the entry stays pending and is delivered again.
    Unrecorded,
}

pub(super) enum Finish {
    Succeeded(serde_json::Value),
    Retry(String, Duration),
    /// Not run, not an attempt: delayed again, for the reason given.
    Wait(String, Duration),
    Dead(String),
    Parked(String),
}

impl Worker {
    pub(super) async fn finish(
        &self,
        envelope: &Envelope,
        stream_id: &str,
        finish: Finish,
    ) -> Ended {
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
                    let _ = forget_job(&mut conn, keys, envelope, None).await;
                }
                return Ended::Discarded;
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
        pipe.expire(&status_key, STATUS_TTL_SECS)
            .ignore()
            .xack(&stream, GROUP, &[stream_id])
            .ignore()
            .xdel(&stream, &[stream_id])
            .ignore();
        let result: anyhow::Result<()> = async {
            let mut conn = self.queue.pool().get().await?;
            pipe.query_async::<()>(&mut *conn).await?;
            // A purge that set its fence while this was being written: remove it again.
            if let Some(fence) = &fence
                && conn.exists::<_, bool>(fence).await?
            {
                forget_job(&mut conn, keys, envelope, delayed_member.as_deref()).await?;
            }
            Ok(())
        }
        .await;
        match (&finish, result) {
            (_, Err(e)) => {
                tracing::warn!(job_id = %envelope.job_id, error = %e,
                    "could not record a job's end; it will be redelivered (its effect is recorded once)");
                Ended::Unrecorded
            }
            (Finish::Parked(reason), Ok(())) => {
                // The delivery's span names the tenant and the job.
                tracing::warn!(reason = %reason, "job parked");
                Ended::Parked
            }
            (Finish::Dead(error), Ok(())) => {
                tracing::warn!(error = %error, "job dead");
                Ended::Dead
            }
            (Finish::Succeeded(_), Ok(())) => Ended::Succeeded,
            (Finish::Retry(..), Ok(())) => Ended::Retried,
            (Finish::Wait(..), Ok(())) => Ended::Waiting,
        }
    }
}
