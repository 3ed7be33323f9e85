//! Running the queued jobs of a test to completion, deterministically: [`drain`], the
//! counterpart of crates.io's `run_pending_background_jobs`, on the real jobs runtime
//! ([`Worker::run_pending`]).

use std::sync::Arc;
use std::time::Duration;

use crate::jobs::{DrainReport, JobQueue, Worker, WorkerOptions};
use crate::sync::ConfigSync;

/// How [`drain`] runs jobs.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// The worker's options. By default [`WorkerOptions::default`]'s, except: a zero
    /// `backoff`, so a failed attempt's retry is due at once and runs in the same drain
    /// (up to `max_attempts`), and `files_dir` under the system's temporary directory
    /// rather than the working directory.
    pub worker: WorkerOptions,
    /// How long one drain may take before it fails (default 30 s).
    pub within: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        Self {
            worker: WorkerOptions {
                backoff: Duration::ZERO,
                files_dir: std::env::temp_dir().join("tenant-router-test-files"),
                ..WorkerOptions::default()
            },
            within: Duration::from_secs(30),
        }
    }
}

/// Runs every job queued in `queue` (all tenants'), and every retry as it falls due, to
/// completion, one at a time in the queue's order, resolving tenants through `sync`'s
/// registry (caught up with the control database when a tenant is missing, as a worker
/// does). Returns when no job is queued, running or due, with what happened; jobs
/// scheduled for later are left alone and counted in [`DrainReport::delayed`]. See
/// [`Worker::run_pending`] for how it decides it is done.
///
/// A job another worker is running is waited for, so a drain beside a running
/// [`Worker`] still returns only once the queue is empty.
pub async fn drain(
    queue: &JobQueue,
    sync: &Arc<ConfigSync>,
    options: &DrainOptions,
) -> anyhow::Result<DrainReport> {
    Worker::new(queue.clone(), Arc::clone(sync), options.worker.clone())
        .run_pending(options.within)
        .await
}
