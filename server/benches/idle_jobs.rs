//! Jobs at scale, for `scripts/bench`: 10,000 tenants that have each run a job, then
//! - a new job for an idle tenant (one that has not had a job for a while), submit to
//!   completion, against the same for one tenant that is busy all along (the baseline);
//! - the CPU an idle worker uses with those 10,000 tenants, against an idle worker that
//!   never saw more than one tenant (from `/proc/self/stat`; nothing else runs meanwhile).
//!
//! Environment: BENCH_IDLE_TENANTS (default 10000), BENCH_LATENCY_JOBS (default 500),
//! BENCH_IDLE_SECONDS (CPU sampling, default 10).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tenant_router::control::{ControlDb, TenantSpec, WriteMode};
use tenant_router::jobs::{
    Job, JobContext, JobError, JobKinds, JobQueue, Keys, Worker, WorkerOptions,
};
use tenant_router::registry::{Registry, RegistryOptions};
use tenant_router::sync::ConfigSync;
use tenant_router::tenant::{PoolSettings, TenantHost, TenantId, TenantState};
use tenant_router::testing::{LocalPostgres, LocalRedis};
use tokio::sync::{Notify, watch};

static DONE: AtomicU64 = AtomicU64::new(0);
static FINISHED: Notify = Notify::const_new();

/// A job that only counts itself.
#[derive(Serialize, Deserialize)]
struct Count {}

impl Job for Count {
    const KIND: &'static str = "bench.count";
    async fn run(self, _ctx: JobContext) -> Result<Value, JobError> {
        DONE.fetch_add(1, Ordering::Relaxed);
        FINISHED.notify_waiters();
        Ok(Value::Null)
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time this process has used (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

struct Running {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start_worker(url: &str, sync: &Arc<ConfigSync>, kinds: &JobKinds) -> anyhow::Result<Running> {
    let (stop, rx) = watch::channel(false);
    let queue = JobQueue::new(url, Keys::default(), kinds.clone())?;
    let worker = Worker::new(queue, Arc::clone(sync), WorkerOptions::default());
    let url = url.to_string();
    let handle = tokio::spawn(async move { worker.run(&url, rx).await });
    Ok(Running { stop, handle })
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.handle.await?
    }
}

/// Submits one job for `tenant` and waits for it to finish; returns the time it took.
async fn one_job(queue: &JobQueue, tenant: &TenantId) -> anyhow::Result<Duration> {
    let before = DONE.load(Ordering::Relaxed);
    let finished = FINISHED.notified();
    tokio::pin!(finished);
    finished.as_mut().enable();
    let start = Instant::now();
    queue
        .submit_raw(tenant, None, "bench.count", json!({}), None, None)
        .await?;
    while DONE.load(Ordering::Relaxed) == before {
        tokio::time::timeout(Duration::from_secs(10), finished.as_mut()).await?;
        finished.set(FINISHED.notified());
        finished.as_mut().enable();
    }
    Ok(start.elapsed())
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| {
        ms(samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1])
    };
    (p(0.5), p(0.99))
}

/// The share of one core this process uses over `seconds` of doing nothing itself.
async fn idle_cpu(seconds: u64) -> f64 {
    let before = cpu_time();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    (cpu_time() - before).as_secs_f64() / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // `RUST_LOG=tenant_router=debug` shows the worker's log.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let n = env("BENCH_IDLE_TENANTS", 10_000) as usize;
    let latency_jobs = env("BENCH_LATENCY_JOBS", 500) as usize;
    let idle_seconds = env("BENCH_IDLE_SECONDS", 10);
    let pg = LocalPostgres::start_ephemeral().await?;
    let redis = LocalRedis::start_ephemeral()?;
    let control = ControlDb::connect_lazy(&pg.create_database("control").await?);
    control.migrate().await?;
    // The jobs here never open their tenant's database; one URL serves for all.
    let db = pg.create_database("tenant_bench").await?;
    let ids: Vec<TenantId> = (0..n)
        .map(|i| TenantId::parse(&format!("t-{i}")))
        .collect::<Result<_, _>>()?;
    let written: Vec<_> = futures_util::stream::iter(ids.iter())
        .map(|id| {
            let control = control.clone();
            let db = db.clone();
            async move {
                control
                    .write(
                        &TenantSpec {
                            id: id.clone(),
                            hosts: vec![TenantHost::parse(&format!("{id}.example.org"))?],
                            database: db,
                            provisioned: false,
                            pool: PoolSettings::default(),
                            state: TenantState::Active,
                            isolation: Default::default(),
                            incarnation: None,
                            rate_limit: None,
                        },
                        WriteMode::Create,
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for w in written {
        w?;
    }
    let registry = Arc::new(Registry::new(RegistryOptions::default()));
    let sync = Arc::new(ConfigSync::new(registry, control));
    sync.full_load().await?;
    let kinds = JobKinds::new().with::<Count>();
    let url = redis.url();
    let queue = JobQueue::new(&url, Keys::default(), kinds.clone())?;

    // The baseline: a worker that only ever saw one tenant, idle, then that tenant busy.
    let worker = start_worker(&url, &sync, &kinds)?;
    one_job(&queue, &ids[0]).await?;
    let cpu_one = idle_cpu(idle_seconds).await;
    let mut busy = Vec::new();
    for i in 0..latency_jobs + 50 {
        let took = one_job(&queue, &ids[0]).await?;
        if i >= 50 {
            busy.push(took);
        }
    }
    worker.stop().await?;

    // Every tenant runs a job.
    let worker = start_worker(&url, &sync, &kinds)?;
    let base = DONE.load(Ordering::Relaxed);
    let submitted: Vec<_> = futures_util::stream::iter(ids.iter())
        .map(|id| queue.submit_raw(id, None, "bench.count", json!({}), None, None))
        .buffer_unordered(64)
        .collect()
        .await;
    for s in submitted {
        s?;
    }
    let start = Instant::now();
    while DONE.load(Ordering::Relaxed) < base + n as u64 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "the jobs did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for every tenant to count as idle (its stream read empty, and pruned).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let cpu_many = idle_cpu(idle_seconds).await;
    // A new job for an idle tenant each time, spread over all of them.
    let mut idle = Vec::new();
    for i in 0..latency_jobs + 50 {
        let tenant = &ids[(i * 7919 + 1) % n];
        let took = one_job(&queue, tenant).await?;
        if i >= 50 {
            idle.push(took);
        }
        // Let it go idle again before the next.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.stop().await?;

    let (busy50, busy99) = percentiles(busy);
    let (idle50, idle99) = percentiles(idle);
    println!(
        "== Jobs at scale: {n} tenants that have each run a job, nproc={}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  {:<58} {:>8} {:>8}",
        "submit -> completion", "p50 ms", "p99 ms"
    );
    println!(
        "  {:<58} {:>8.3} {:>8.3}",
        "one busy tenant (the baseline)", busy50, busy99
    );
    println!(
        "  {:<58} {:>8.3} {:>8.3}",
        format!("a job for an idle tenant, among {n}"),
        idle50,
        idle99
    );
    println!(
        "  targets: idle tenant p50 <= 5 ms: {}; p99 <= 50 ms: {}",
        if idle50 <= 5.0 { "met" } else { "NOT met" },
        if idle99 <= 50.0 { "met" } else { "NOT met" }
    );
    println!(
        "  idle worker CPU: {:.2} % of a core with one tenant (the baseline), {:.2} % with {n} (target < 5 %: {})",
        cpu_one * 100.0,
        cpu_many * 100.0,
        if cpu_many < 0.05 { "met" } else { "NOT met" }
    );
    Ok(())
}
