//! `jobs dead|parked …`: dead-lettered and parked jobs, listed, retried, purged.

use std::process::ExitCode;

use clap::Subcommand;
use tenant_router::problem::FieldError;
use tenant_router::tenant::TenantId;
use tenant_router_server::config::Settings;

use super::invalid;

#[derive(Subcommand)]
pub(crate) enum JobsCommand {
    /// Jobs that used up their attempts.
    #[command(subcommand)]
    Dead(LettersCommand),
    /// Jobs that did not run because of their tenant.
    #[command(subcommand)]
    Parked(LettersCommand),
}

#[derive(Subcommand)]
pub(crate) enum LettersCommand {
    /// List them, oldest first (JSON lines).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Queue one again for its own tenant, with fresh attempts.
    Retry {
        /// The job's id.
        job_id: String,
    },
    /// Delete one, or all of a tenant's.
    Purge {
        /// The job's id.
        job_id: Option<String>,
        /// Every one of this tenant's.
        #[arg(long, conflicts_with = "job_id")]
        tenant: Option<String>,
    },
}

pub(crate) async fn run(settings: &Settings, command: JobsCommand) -> anyhow::Result<ExitCode> {
    use tenant_router::jobs::{JobQueue, Keys, Letters};
    let redis = settings.require_redis("jobs live in Redis, so this")?;
    let queue = JobQueue::new(
        redis,
        Keys::default(),
        tenant_router_server::reference_jobs::kinds_for(true),
    )?;
    let (which, command) = match command {
        JobsCommand::Dead(c) => (Letters::Dead, c),
        JobsCommand::Parked(c) => (Letters::Parked, c),
    };
    let tenant = |raw: Option<String>| -> Result<Option<TenantId>, ExitCode> {
        raw.map(|t| TenantId::parse(&t))
            .transpose()
            .map_err(|e| invalid(&[FieldError::new("--tenant", e.0)]))
    };
    match command {
        LettersCommand::List { tenant: t, limit } => {
            let t = match tenant(t) {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            if !(1..=1000).contains(&limit) {
                return Ok(invalid(&[FieldError::new("--limit", "must be 1 to 1000")]));
            }
            let (letters, _) = queue.letters(which, t.as_ref(), None, limit).await?;
            for l in letters {
                println!("{}", serde_json::to_string(&l)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        LettersCommand::Retry { job_id } => match queue.retry_letter(which, &job_id).await? {
            Some(l) => {
                println!("{}", serde_json::json!({ "retried": l }));
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error: no such job '{job_id}'");
                Ok(ExitCode::from(2))
            }
        },
        LettersCommand::Purge { job_id, tenant: t } => {
            let t = match tenant(t) {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            if job_id.is_none() && t.is_none() {
                return Ok(invalid(&[FieldError::new(
                    "job_id",
                    "give a job id or --tenant",
                )]));
            }
            let n = queue
                .delete_letters(which, job_id.as_deref(), t.as_ref())
                .await?;
            println!("{}", serde_json::json!({ "deleted": n }));
            Ok(ExitCode::SUCCESS)
        }
    }
}
