//! The dead-letter and parked streams: listed, retried, deleted.

use redis::AsyncCommands as _;
use serde::Serialize;

use super::purge::purge_stream_entries;
use super::{JobQueue, Keys, QueueError};
use crate::jobs::Envelope;
use crate::tenant::TenantId;

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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
