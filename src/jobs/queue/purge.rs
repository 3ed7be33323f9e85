//! Taking a tenant's jobs out of Redis (a purge, fenced against workers still running its
//! jobs) and waking its delayed ones (an adopt).

use redis::AsyncCommands as _;

use super::{Keys, Purged, QueueError, STATUS_TTL_SECS, now_ms};
use crate::jobs::Envelope;
use crate::tenant::TenantId;

/// Every member of the delayed set that belongs to `tenant` (members are `<tenant>\n<job>`).
async fn delayed_members(
    conn: &mut deadpool_redis::Connection,
    keys: &Keys,
    tenant: &TenantId,
) -> Result<Vec<String>, QueueError> {
    let member_prefix = format!("{tenant}\n");
    let mut members = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("ZSCAN")
            .arg(keys.delayed())
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{tenant}\n*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut **conn)
            .await?;
        // ZSCAN returns members and scores alternately.
        members.extend(
            found
                .into_iter()
                .step_by(2)
                .filter(|m| m.starts_with(&member_prefix)),
        );
        if next == 0 {
            return Ok(members);
        }
        cursor = next;
    }
}

/// Makes every delayed job of `tenant` due now: jobs that waited while their tenant was
/// removed with its data kept, once it is adopted.
pub async fn wake_tenant(
    pool: &deadpool_redis::Pool,
    keys: &Keys,
    tenant: &TenantId,
) -> Result<u64, QueueError> {
    let mut conn = pool.get().await?;
    let mut woken = 0;
    for member in delayed_members(&mut conn, keys, tenant).await? {
        let n: u64 = redis::cmd("ZADD")
            .arg(keys.delayed())
            .arg("XX")
            .arg("CH")
            .arg(now_ms())
            .arg(&member)
            .query_async(&mut *conn)
            .await?;
        woken += n;
    }
    Ok(woken)
}

/// Removes everything of `tenant` from Redis: every key under `<prefix>t:<tenant>:` (the job
/// stream, statuses, the namespace jobs write to), its entries in the delayed set and the
/// dead and parked streams, and its membership of the set of tenants with streams.
pub async fn purge_tenant(
    pool: &deadpool_redis::Pool,
    keys: &Keys,
    tenant: &TenantId,
    incarnation: Option<i64>,
) -> Result<Purged, QueueError> {
    let mut conn = pool.get().await?;
    let mut purged = Purged::default();
    // First the fence, so a worker still running one of this incarnation's jobs removes
    // what it writes at the end (it checks the fence after writing), whether it writes
    // before or after the scans below.
    if let Some(incarnation) = incarnation {
        let _: () = redis::cmd("SET")
            .arg(keys.fence(tenant, incarnation))
            .arg(1)
            .arg("EX")
            .arg(STATUS_TTL_SECS)
            .query_async(&mut *conn)
            .await?;
    }
    purged.keys = crate::namespace::purge(&mut conn, &keys.redis_namespace(), tenant).await?;
    let members = delayed_members(&mut conn, keys, tenant).await?;
    for chunk in members.chunks(1000) {
        let n: u64 = conn.zrem(keys.delayed(), chunk).await?;
        purged.delayed += n;
    }
    let _: u64 = conn.hdel(keys.delayed_counts(), tenant.as_str()).await?;
    purged.dead = purge_stream_entries(&mut conn, &keys.dead(), tenant).await?;
    purged.parked = purge_stream_entries(&mut conn, &keys.parked(), tenant).await?;
    let _: u64 = conn.srem(keys.tenants(), tenant.as_str()).await?;
    Ok(purged)
}

/// Removes what a worker wrote for one job of a purged incarnation: its status, its delayed
/// entry, its dead or parked entries.
pub(crate) async fn forget_job(
    conn: &mut deadpool_redis::Connection,
    keys: &Keys,
    envelope: &Envelope,
    delayed_member: Option<&str>,
) -> Result<(), QueueError> {
    let _: u64 = conn
        .del(keys.job(&envelope.tenant_id, &envelope.job_id))
        .await?;
    if let Some(member) = delayed_member {
        let removed: u64 = conn.zrem(keys.delayed(), member).await?;
        if removed > 0 {
            let _: i64 = conn
                .hincr(keys.delayed_counts(), envelope.tenant_id.as_str(), -1)
                .await?;
        }
    }
    for stream in [keys.dead(), keys.parked()] {
        purge_stream_entries_where(conn, &stream, "job_id", &envelope.job_id).await?;
    }
    Ok(())
}

/// Deletes the entries of `stream` whose `tenant_id` field is `tenant`.
pub(super) async fn purge_stream_entries(
    conn: &mut deadpool_redis::Connection,
    stream: &str,
    tenant: &TenantId,
) -> Result<u64, QueueError> {
    purge_stream_entries_where(conn, stream, "tenant_id", tenant.as_str()).await
}

/// Deletes the entries of `stream` whose field `field` is `value`.
async fn purge_stream_entries_where(
    conn: &mut deadpool_redis::Connection,
    stream: &str,
    field: &str,
    value: &str,
) -> Result<u64, QueueError> {
    let mut start = "-".to_string();
    let mut removed = 0;
    loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut **conn)
            .await?;
        let Some(last) = reply.ids.last() else { break };
        start = format!("({}", last.id);
        let ids: Vec<&str> = reply
            .ids
            .iter()
            .filter(|e| e.get::<String>(field).as_deref() == Some(value))
            .map(|e| e.id.as_str())
            .collect();
        if !ids.is_empty() {
            let n: u64 = conn.xdel(stream, &ids).await?;
            removed += n;
        }
        if reply.ids.len() < 1000 {
            break;
        }
    }
    Ok(removed)
}
