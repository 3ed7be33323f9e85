//! Submitting: a job checked against its kind, put on its tenant's stream (or in the
//! delayed set) with a fresh status, within the tenant's cap, and the doorbell rung.

use serde_json::Value;

use super::{JobQueue, Keys, QueueError, STATUS_TTL_SECS, new_job_id, now_ms};
use crate::jobs::Envelope;
use crate::tenant::TenantId;

impl JobQueue {
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
