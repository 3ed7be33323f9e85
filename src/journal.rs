//! One operation at a time per tenant, and a journal of the operations that take more than
//! one transaction (create, move, remove), so one killed half-way is found and finished.
//!
//! An [`Operation`] holds a session-level advisory lock on the control database, keyed by
//! the tenant, on a connection of its own: a second operation on the tenant, from any
//! instance or CLI, is refused at once ([`Refused::Busy`]). If the process dies, PostgreSQL
//! ends its session and the lock goes with it; the journal row (`tenant_operations`, no
//! `finished_at`) stays behind, and the next operation of the same kind on the tenant
//! *resumes* it (it learns what was done from [`Operation::resumed`]), while another kind is
//! refused until it is finished or repaired ([`Refused::Interrupted`]).

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use sqlx::{Connection as _, PgConnection, Row as _};

use crate::control::ControlDb;
use crate::tenant::{DatabaseUrl, TenantId};

/// A journal row.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Journaled {
    /// Its id.
    pub id: i64,
    /// The tenant.
    pub tenant_id: String,
    /// `create`, `move` or `remove`.
    pub kind: String,
    /// The last step reached.
    pub step: String,
    /// What the operation works on (names, never credentials).
    pub detail: Value,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it finished, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// How it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// A database the operation must find again (credentials: never serialised).
    #[serde(skip)]
    pub database: Option<DatabaseUrl>,
}

/// Why an operation could not start.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Another operation on the tenant is running.
    #[error("another operation on tenant '{tenant}' is running{}; retry when it is done",
        .running.as_ref().map(|r| format!(" ({} since {}, at step '{}')", r.kind, r.started_at, r.step)).unwrap_or_default())]
    Busy {
        /// The tenant.
        tenant: String,
        /// What runs, when it is journaled.
        running: Option<Box<Journaled>>,
    },
    /// An operation of another kind was interrupted and must be finished first.
    #[error("a {} of tenant '{}' was interrupted at step '{}' (started {}); retry it, or run \
             `tenant-router tenants repair {}`", .0.kind, .0.tenant_id, .0.step, .0.started_at, .0.tenant_id)]
    Interrupted(Box<Journaled>),
    /// The control database failed.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A running operation: the tenant's lock, and its journal row when it has one.
pub struct Operation {
    conn: PgConnection,
    id: Option<i64>,
    kind: &'static str,
    resumed: Option<Journaled>,
    dirty: bool,
}

const SELECT_JOURNAL: &str = "SELECT id, tenant_id, kind, step, detail, database_url,
        to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS started_at,
        to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS finished_at,
        outcome
    FROM tenant_operations";

fn lock_key_sql() -> &'static str {
    "hashtextextended('tenant-router:operation:' || $1, 0)"
}

impl ControlDb {
    /// Takes the tenant's operation lock, without a journal row: for changes made in one
    /// transaction (updates), which must not run in the middle of a move, nor after one
    /// was interrupted and before it is completed.
    pub async fn lock_tenant(&self, tenant: &TenantId) -> Result<Operation, Refused> {
        let mut conn = self.try_lock(tenant).await?;
        if let Some(open) = open_operation(&mut conn, tenant).await? {
            let _ = conn.close().await;
            return Err(Refused::Interrupted(Box::new(open)));
        }
        Ok(Operation {
            conn,
            id: None,
            kind: "",
            resumed: None,
            dirty: false,
        })
    }

    /// Starts (or resumes) a journaled operation of `kind` on `tenant`.
    pub async fn begin_operation(
        &self,
        tenant: &TenantId,
        kind: &'static str,
        detail: Value,
    ) -> Result<Operation, Refused> {
        let mut conn = self.try_lock(tenant).await?;
        // We hold the lock: an open row is one whose process died.
        if let Some(open) = open_operation(&mut conn, tenant).await? {
            if open.kind != kind {
                return Err(Refused::Interrupted(Box::new(open)));
            }
            tracing::warn!(tenant.id = %tenant, operation = %open.kind, step = %open.step,
                started_at = %open.started_at, "resuming an interrupted operation");
            return Ok(Operation {
                conn,
                id: Some(open.id),
                kind,
                resumed: Some(open),
                // What the interrupted run did is not known to be undone.
                dirty: true,
            });
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO tenant_operations (tenant_id, kind, step, detail)
             VALUES ($1, $2, 'started', $3) RETURNING id",
        )
        .bind(tenant.as_str())
        .bind(kind)
        .bind(&detail)
        .fetch_one(&mut conn)
        .await
        .context("journaling the operation")?;
        Ok(Operation {
            conn,
            id: Some(id),
            kind,
            resumed: None,
            dirty: false,
        })
    }

    async fn try_lock(&self, tenant: &TenantId) -> Result<PgConnection, Refused> {
        let mut conn = self.dedicated_connection().await?;
        let got: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT pg_try_advisory_lock({})",
            lock_key_sql()
        )))
        .bind(tenant.as_str())
        .fetch_one(&mut conn)
        .await
        .context("taking the tenant's operation lock")?;
        if got {
            return Ok(conn);
        }
        let running = open_operation(&mut conn, tenant).await?.map(Box::new);
        let _ = conn.close().await;
        Err(Refused::Busy {
            tenant: tenant.to_string(),
            running,
        })
    }

    /// Journaled operations that did not finish, with whether each is still running (its
    /// tenant's lock is held) or was interrupted.
    pub async fn unfinished_operations(&self) -> anyhow::Result<Vec<(Journaled, bool)>> {
        let mut conn = self.dedicated_connection().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_JOURNAL} WHERE finished_at IS NULL ORDER BY id"
        )))
        .fetch_all(&mut conn)
        .await
        .context("reading the operations journal")?;
        let mut out = Vec::new();
        for row in &rows {
            let op = parse(row)?;
            let free: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT pg_try_advisory_lock({})",
                lock_key_sql()
            )))
            .bind(&op.tenant_id)
            .fetch_one(&mut conn)
            .await?;
            if free {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT pg_advisory_unlock({})",
                    lock_key_sql()
                )))
                .bind(&op.tenant_id)
                .execute(&mut conn)
                .await?;
            }
            out.push((op, !free));
        }
        let _ = conn.close().await;
        Ok(out)
    }

    /// The tenant's unfinished operation, if any (running or interrupted).
    pub async fn unfinished_operation(
        &self,
        tenant: &TenantId,
    ) -> anyhow::Result<Option<Journaled>> {
        let mut conn = self.pool().acquire().await?;
        open_operation(&mut conn, tenant).await
    }
}

async fn open_operation(
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> anyhow::Result<Option<Journaled>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{SELECT_JOURNAL} WHERE tenant_id = $1 AND finished_at IS NULL"
    )))
    .bind(tenant.as_str())
    .fetch_optional(conn)
    .await
    .context("reading the operations journal")?;
    row.as_ref().map(parse).transpose()
}

fn parse(row: &sqlx::postgres::PgRow) -> anyhow::Result<Journaled> {
    Ok(Journaled {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        kind: row.try_get("kind")?,
        step: row.try_get("step")?,
        detail: row.try_get("detail")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        outcome: row.try_get("outcome")?,
        database: row
            .try_get::<Option<String>, _>("database_url")?
            .map(|u| DatabaseUrl::parse(&u))
            .transpose()?,
    })
}

impl Operation {
    /// The interrupted run this operation resumes, if any.
    pub fn resumed(&self) -> Option<&Journaled> {
        self.resumed.as_ref()
    }

    /// Marks that something was done that a failure must not leave unreported: the journal
    /// row then stays open when the operation ends in an error.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether nothing half-done would be left by ending here.
    pub fn is_clean(&self) -> bool {
        !self.dirty
    }

    /// Leaves the journal row open (an operation that stopped half-way and must be retried)
    /// and releases the lock.
    pub async fn abandon(mut self) {
        release(&mut self.conn).await;
        let _ = self.conn.close().await;
    }

    /// Records that `step` is reached, merging `detail` into the row's detail, and the
    /// database to find again, when given.
    pub async fn step(
        &mut self,
        step: &str,
        detail: Value,
        database: Option<&DatabaseUrl>,
    ) -> anyhow::Result<()> {
        let Some(id) = self.id else { return Ok(()) };
        sqlx::query(
            "UPDATE tenant_operations SET step = $2, detail = detail || $3,
                 database_url = coalesce($4, database_url), updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(step)
        .bind(&detail)
        .bind(database.map(DatabaseUrl::expose))
        .execute(&mut self.conn)
        .await
        .with_context(|| format!("journaling step '{step}'"))?;
        failpoint(&format!("{}:{step}", self.kind));
        Ok(())
    }

    /// Ends the operation with `outcome`, releasing the lock.
    pub async fn finish(mut self, outcome: &str) {
        if let Some(id) = self.id
            && let Err(e) = sqlx::query(
                "UPDATE tenant_operations SET finished_at = now(), outcome = $2, updated_at = now()
                 WHERE id = $1",
            )
            .bind(id)
            .bind(outcome)
            .execute(&mut self.conn)
            .await
        {
            tracing::error!(error = %e, operation = id, "could not close a journaled operation");
        }
        release(&mut self.conn).await;
        let _ = self.conn.close().await;
    }
}

/// For tests of crash safety: when `TENANT_ROUTER_FAILPOINT` names `step`, the process says
/// so on stderr and stops there for good, to be killed with SIGKILL at a known point.
pub fn failpoint(step: &str) {
    if std::env::var("TENANT_ROUTER_FAILPOINT").is_ok_and(|f| f == step) {
        eprintln!("failpoint reached: {step}");
        loop {
            std::thread::park();
        }
    }
}

/// Releases the tenant's lock before the connection goes: closing only sends Terminate, and
/// the server may hold the lock a moment longer, long enough for the caller's next operation
/// on the tenant to be refused.
async fn release(conn: &mut PgConnection) {
    let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(conn)
        .await;
}
