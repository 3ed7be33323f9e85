//! The worker: reads jobs from every tenant's stream, fairly, and runs each in a context built
//! for it alone.
//!
//! Three tasks cooperate:
//! - the reader does `XREADGROUP` over the doorbell and the streams of active tenants that
//!   are below their concurrency cap, at most `per_tenant` entries per stream per read, so
//!   every round takes a little from every tenant with work (round-robin by construction);
//! - the dispatcher keeps a local queue per tenant and starts jobs round-robin across
//!   tenants, at most `per_tenant` at once for one tenant and `concurrency` in all;
//! - housekeeping moves due retries back onto their streams and reclaims entries whose
//!   worker stopped heartbeating (`XAUTOCLAIM` after the visibility timeout).
//!
//! [`Worker::run_pending`] is the same attempt at each job without those tasks: it runs
//! what is queued, one job at a time, until the queue says nothing is left (tests drain
//! the queue with it).

use std::sync::Arc;
use std::time::Duration;

use super::Envelope;
use super::queue::JobQueue;
use crate::sync::ConfigSync;

mod dispatch;
mod housekeeping;
mod pending;
mod reader;

pub use pending::DrainReport;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Consumer name; unique per process.
    pub name: String,
    /// Jobs running at once, in all.
    pub concurrency: usize,
    /// Jobs of one tenant running (or read and waiting) at once.
    pub per_tenant: usize,
    /// Attempts before a job goes to the dead letters.
    pub max_attempts: u32,
    /// How long a job may go without a heartbeat before another worker takes it over.
    pub visibility_timeout: Duration,
    /// First retry delay; it doubles per attempt (with jitter), up to five minutes.
    pub backoff: Duration,
    /// On shutdown, how long running jobs get to finish.
    pub grace: Duration,
    /// Where jobs write files, one directory per tenant.
    pub files_dir: std::path::PathBuf,
    /// Entries the dead-letter and parked streams keep, about (`MAXLEN ~`): the oldest go.
    pub dead_max_len: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            name: format!(
                "{}-{}-{:04x}",
                hostname(),
                std::process::id(),
                rand::random::<u16>()
            ),
            concurrency: 32,
            per_tenant: 8,
            max_attempts: 5,
            visibility_timeout: Duration::from_secs(30),
            backoff: Duration::from_millis(500),
            grace: Duration::from_secs(10),
            files_dir: std::path::PathBuf::from(".tenant-router/files"),
            dead_max_len: super::queue::DEFAULT_MAX_DEAD,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// One job read from a stream.
struct Delivery {
    stream_id: String,
    envelope: Envelope,
}

/// Runs jobs until shut down. See the module documentation.
pub struct Worker {
    queue: JobQueue,
    sync: Arc<ConfigSync>,
    options: WorkerOptions,
    name: Arc<str>,
    files_root: Arc<std::path::Path>,
}

impl Worker {
    /// A worker over `queue`, resolving tenants through `sync`'s registry.
    pub fn new(queue: JobQueue, sync: Arc<ConfigSync>, options: WorkerOptions) -> Self {
        let name = Arc::from(options.name.as_str());
        let files_root = Arc::from(options.files_dir.as_path());
        Self {
            queue,
            sync,
            options,
            name,
            files_root,
        }
    }

    /// Its consumer name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
