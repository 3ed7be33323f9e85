//! The reference app's job kinds (`notes.create`, `notes.export`) and, for operators and the
//! test suite, diagnostic kinds (`diag.*`) that a worker accepts only when told to.

use std::time::Duration;

use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use tenant_router::jobs::{Job, JobContext, JobError, JobKinds, Once, PayloadError};

/// The reference kinds.
pub fn kinds() -> JobKinds {
    JobKinds::new().with::<CreateNote>().with::<ExportNotes>()
}

/// The reference kinds, plus the diagnostic ones when asked for.
pub fn kinds_for(diagnostics: bool) -> JobKinds {
    if diagnostics {
        kinds_with_diagnostics()
    } else {
        kinds()
    }
}

/// The reference kinds plus the diagnostic ones.
pub fn kinds_with_diagnostics() -> JobKinds {
    kinds()
        .with::<Noop>()
        .with::<Record>()
        .with::<Sleep>()
        .with::<Flaky>()
        .with::<Fail>()
}

const MAX_CONTENT_CHARS: usize = 10_000;

fn submitter(ctx: &JobContext) -> Result<i64, JobError> {
    ctx.user_id()
        .ok_or_else(|| JobError::fatal("this job needs the user who submitted it"))
}

/// `notes.create`: a note for the submitting user, as `POST /api/notes` makes it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNote {
    /// The note's text.
    pub content: String,
}

impl Job for CreateNote {
    const KIND: &'static str = "notes.create";

    fn validate(&self) -> Result<(), PayloadError> {
        // The rule of `POST /api/notes`.
        let n = self.content.chars().count();
        if n == 0 || n > MAX_CONTENT_CHARS || self.content.contains('\0') {
            return Err(PayloadError::new(
                "content",
                format!("must be 1 to {MAX_CONTENT_CHARS} characters, without NUL"),
            ));
        }
        Ok(())
    }

    async fn run(self, ctx: JobContext) -> Result<Value, JobError> {
        let user = submitter(&ctx)?;
        match ctx.once().await? {
            Once::AlreadyApplied(result) => Ok(result),
            Once::Fresh(mut tx) => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO notes (tenant_id, user_id, content) VALUES ($1, $2, $3) RETURNING id",
                )
                .bind(ctx.scope())
                .bind(user)
                .bind(&self.content)
                .fetch_one(tx.conn())
                .await?;
                tx.commit(json!({ "note_id": id })).await
            }
        }
    }
}

/// `notes.export`: the submitting user's notes as JSON lines, in the tenant's own directory.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportNotes {}

#[derive(sqlx::FromRow, Serialize)]
struct ExportedNote {
    id: i64,
    content: String,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl Job for ExportNotes {
    const KIND: &'static str = "notes.export";

    async fn run(self, ctx: JobContext) -> Result<Value, JobError> {
        let user = submitter(&ctx)?;
        let db = ctx.db();
        let mut conn = db.conn().await?;
        let notes: Vec<ExportedNote> = sqlx::query_as(
            "SELECT id, content, created_at, updated_at FROM notes
             WHERE tenant_id = $1 AND user_id = $2 ORDER BY id",
        )
        .bind(db.scope())
        .bind(user)
        .fetch_all(&mut conn)
        .await?;
        drop(conn);
        let mut lines = String::new();
        for note in &notes {
            lines.push_str(
                &serde_json::to_string(note).map_err(|e| JobError::fatal(e.to_string()))?,
            );
            lines.push('\n');
        }
        let dir = ctx.files_dir()?;
        let name = format!("notes-{}.jsonl", ctx.job_id());
        // Written whole, then renamed: a redelivery rewrites the same file, never a torn one.
        let tmp = dir.join(format!(".{name}.tmp"));
        tokio::fs::write(&tmp, lines).await?;
        tokio::fs::rename(&tmp, dir.join(&name)).await?;
        Ok(json!({ "rows": notes.len(), "file": name }))
    }
}

/// `diag.noop`: does nothing (throughput measurements).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "diag.noop";

    async fn run(self, _ctx: JobContext) -> Result<Value, JobError> {
        Ok(Value::Null)
    }
}

/// `diag.record`: records its id in the tenant's `job_runs`, and nothing else.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {}

impl Job for Record {
    const KIND: &'static str = "diag.record";

    async fn run(self, ctx: JobContext) -> Result<Value, JobError> {
        match ctx.once().await? {
            Once::AlreadyApplied(v) => Ok(v),
            Once::Fresh(tx) => tx.commit(json!({ "worker": ctx.worker() })).await,
        }
    }
}

/// `diag.sleep`: logs its start and end in the tenant's Redis namespace (`diag:runs`), and
/// holds its transaction open for `ms` before committing, so a worker killed meanwhile
/// leaves no effect behind.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    /// How long, at most 60,000.
    pub ms: u64,
}

impl Job for Sleep {
    const KIND: &'static str = "diag.sleep";

    async fn run(self, ctx: JobContext) -> Result<Value, JobError> {
        let log = ctx.key("diag:runs");
        let mut redis = ctx.redis().await?;
        let _: () = redis
            .rpush(&log, format!("start {} {}", ctx.job_id(), ctx.worker()))
            .await?;
        let result = match ctx.once().await? {
            Once::AlreadyApplied(v) => v,
            Once::Fresh(tx) => {
                tokio::time::sleep(Duration::from_millis(self.ms.min(60_000))).await;
                tx.commit(json!({ "worker": ctx.worker() })).await?
            }
        };
        let _: () = redis
            .rpush(&log, format!("end {} {}", ctx.job_id(), ctx.worker()))
            .await?;
        Ok(result)
    }
}

/// `diag.flaky`: fails its first `failures` attempts, then records itself.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flaky {
    /// Attempts that fail.
    pub failures: u32,
}

impl Job for Flaky {
    const KIND: &'static str = "diag.flaky";

    async fn run(self, ctx: JobContext) -> Result<Value, JobError> {
        if ctx.attempt() < self.failures {
            return Err(JobError::retry(format!(
                "planned failure {} of {}",
                ctx.attempt() + 1,
                self.failures
            )));
        }
        Record {}.run(ctx).await
    }
}

/// `diag.fail`: always fails with `message`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    /// The error.
    pub message: String,
}

impl Job for Fail {
    const KIND: &'static str = "diag.fail";

    async fn run(self, _ctx: JobContext) -> Result<Value, JobError> {
        Err(JobError::retry(self.message))
    }
}
