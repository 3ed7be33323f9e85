//! A job's status, read back from its status hash.

use std::collections::BTreeMap;

use redis::AsyncCommands as _;
use serde::Serialize;
use serde_json::Value;

use super::{JobQueue, QueueError};
use crate::tenant::TenantId;

/// A job's status, as `GET /api/jobs/{id}` shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

impl JobQueue {
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
