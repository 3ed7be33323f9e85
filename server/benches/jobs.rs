//! Job throughput and latency, for `scripts/bench`: the whole path (submit through
//! `JobQueue`, run by in-process `Worker`s with their own Redis connections, acknowledged),
//! against the raw rate of XADD + XREADGROUP + XACK on the same Redis in the same run.
//!
//! Environment: BENCH_JOBS (jobs per throughput run, default 20000), BENCH_LATENCY_JOBS
//! (default 1000).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tenant_router::control::{ControlDb, TenantSpec, WriteMode};
use tenant_router::jobs::{
    Job, JobContext, JobError, JobKinds, JobQueue, Keys, Worker, WorkerOptions,
};
use tenant_router::provision;
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

async fn raw_rate(url: &str, n: u64) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let mut producer = client.get_multiplexed_async_connection().await?;
    let mut consumer = client.get_multiplexed_async_connection().await?;
    let stream = "bench:raw";
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut consumer)
        .await?;
    let start = Instant::now();
    let produce = tokio::spawn(async move {
        let mut sent = 0;
        while sent < n {
            let mut pipe = redis::pipe();
            for _ in 0..50.min(n - sent) {
                pipe.xadd(stream, "*", &[("job", "{}")]).ignore();
                sent += 1;
            }
            let _: () = pipe.query_async(&mut producer).await?;
        }
        anyhow::Ok(())
    });
    let mut acked = 0;
    while acked < n {
        let opts = redis::streams::StreamReadOptions::default()
            .group("g", "c")
            .count(100)
            .block(50);
        let reply: Option<redis::streams::StreamReadReply> =
            consumer.xread_options(&[stream], &[">"], &opts).await?;
        let ids: Vec<String> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|e| e.id)
            .collect();
        if !ids.is_empty() {
            let _: () = consumer.xack(stream, "g", &ids).await?;
            acked += ids.len() as u64;
        }
    }
    produce.await??;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The same three commands one message per round trip (producer and consumer concurrent):
/// what a queue that tracks each job individually starts from.
async fn raw_rate_per_message(url: &str, n: u64) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let mut producer = client.get_multiplexed_async_connection().await?;
    let mut consumer = client.get_multiplexed_async_connection().await?;
    let stream = "bench:raw1";
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut consumer)
        .await?;
    let start = Instant::now();
    let produce = tokio::spawn(async move {
        for _ in 0..n {
            let _: String = producer.xadd(stream, "*", &[("job", "{}")]).await?;
        }
        anyhow::Ok(())
    });
    let mut acked = 0;
    while acked < n {
        let opts = redis::streams::StreamReadOptions::default()
            .group("g", "c")
            .count(1)
            .block(50);
        let reply: Option<redis::streams::StreamReadReply> =
            consumer.xread_options(&[stream], &[">"], &opts).await?;
        for id in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            let _: () = consumer.xack(stream, "g", &[id.id]).await?;
            acked += 1;
        }
    }
    produce.await??;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

type WorkerTask = tokio::task::JoinHandle<anyhow::Result<()>>;

struct Setup {
    redis_url: String,
    sync: Arc<ConfigSync>,
    tenant: TenantId,
    user_id: i64,
    tenant_pool: sqlx::PgPool,
}

fn start_workers(
    setup: &Setup,
    kinds: &JobKinds,
    n: usize,
) -> anyhow::Result<(watch::Sender<bool>, Vec<WorkerTask>)> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = Vec::new();
    for i in 0..n {
        let queue = JobQueue::new(&setup.redis_url, Keys::default(), kinds.clone())?;
        let options = WorkerOptions {
            name: format!("bench-{i}"),
            concurrency: 64,
            per_tenant: 64,
            ..WorkerOptions::default()
        };
        let worker = Worker::new(queue, Arc::clone(&setup.sync), options);
        let url = setup.redis_url.clone();
        let rx = stop_rx.clone();
        handles.push(tokio::spawn(async move { worker.run(&url, rx).await }));
    }
    Ok((stop_tx, handles))
}

async fn stop(stop_tx: watch::Sender<bool>, handles: Vec<WorkerTask>) -> anyhow::Result<()> {
    let _ = stop_tx.send(true);
    for h in handles {
        h.await??;
    }
    Ok(())
}

/// Submits `n` jobs, 64 at a time, with `workers` running; returns jobs per second from the
/// first submit until `done()` reaches `n`.
async fn throughput(
    setup: &Setup,
    kinds: &JobKinds,
    workers: usize,
    kind: &str,
    payload: Value,
    n: u64,
    done: impl AsyncCount,
) -> anyhow::Result<f64> {
    let (stop_tx, handles) = start_workers(setup, kinds, workers)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queue = JobQueue::new(&setup.redis_url, Keys::default(), kinds.clone())?;
    let base = done.count().await?;
    let start = Instant::now();
    let submitted: Vec<_> = futures_util::stream::iter(0..n)
        .map(|_| {
            queue.submit_raw(
                &setup.tenant,
                None,
                kind,
                payload.clone(),
                Some(setup.user_id),
                None,
            )
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for s in submitted {
        s?;
    }
    while done.count().await? < base + n {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "jobs did not finish"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop(stop_tx, handles).await?;
    Ok(rate)
}

trait AsyncCount {
    async fn count(&self) -> anyhow::Result<u64>;
}

struct Counter;
impl AsyncCount for Counter {
    async fn count(&self) -> anyhow::Result<u64> {
        Ok(DONE.load(Ordering::Relaxed))
    }
}

struct Notes(sqlx::PgPool);
impl AsyncCount for Notes {
    async fn count(&self) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
            .fetch_one(&self.0)
            .await?;
        Ok(n as u64)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n = env("BENCH_JOBS", 20_000);
    let latency_jobs = env("BENCH_LATENCY_JOBS", 1000);
    let pg = LocalPostgres::start_ephemeral().await?;
    let redis = LocalRedis::start_ephemeral()?;
    let control = ControlDb::connect_lazy(&pg.create_database("control").await?);
    control.migrate().await?;
    let db = pg.create_database("tenant_bench").await?;
    if let provision::MigrationOutcome::Failed(e) =
        provision::migrate_tenant_with(&db, &tenant_router_server::schema::TENANT_MIGRATOR).await
    {
        anyhow::bail!("{e}");
    }
    let tenant = TenantId::parse("bench")?;
    control
        .write(
            &TenantSpec {
                id: tenant.clone(),
                hosts: vec![TenantHost::parse("bench.example.org")?],
                database: db.clone(),
                provisioned: false,
                pool: PoolSettings {
                    max_connections: 16,
                    idle_timeout_secs: 300,
                    ..PoolSettings::default()
                },
                state: TenantState::Active,
                isolation: Default::default(),
                incarnation: None,
                rate_limit: None,
            },
            WriteMode::Create,
        )
        .await?;
    let tenant_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.connect_options())
        .await?;
    let user_id: i64 = sqlx::query_scalar("INSERT INTO users (username, email, password_hash) VALUES ('bench', 'bench@example.com', 'x') RETURNING id")
        .fetch_one(&tenant_pool)
        .await?;
    let registry = Arc::new(Registry::new(RegistryOptions::default()));
    let sync = Arc::new(ConfigSync::new(registry, control));
    sync.full_load().await?;
    let setup = Setup {
        redis_url: redis.url(),
        sync,
        tenant,
        user_id,
        tenant_pool,
    };
    let kinds = tenant_router_server::reference_jobs::kinds().with::<Count>();

    let raw = raw_rate(&setup.redis_url, n).await?;
    let raw1 = raw_rate_per_message(&setup.redis_url, n).await?;
    let noop1 = throughput(&setup, &kinds, 1, "bench.count", json!({}), n, Counter).await?;
    let noop2 = throughput(&setup, &kinds, 2, "bench.count", json!({}), n, Counter).await?;
    let notes_n = n / 4;
    let notes1 = throughput(
        &setup,
        &kinds,
        1,
        "notes.create",
        json!({"content": "from a job"}),
        notes_n,
        Notes(setup.tenant_pool.clone()),
    )
    .await?;
    let notes2 = throughput(
        &setup,
        &kinds,
        2,
        "notes.create",
        json!({"content": "from a job"}),
        notes_n,
        Notes(setup.tenant_pool.clone()),
    )
    .await?;

    // Latency: one job at a time, submit to completion, one worker.
    let (stop_tx, handles) = start_workers(&setup, &kinds, 1)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queue = JobQueue::new(&setup.redis_url, Keys::default(), kinds.clone())?;
    let mut samples = Vec::new();
    for i in 0..latency_jobs + 50 {
        let before = DONE.load(Ordering::Relaxed);
        let finished = FINISHED.notified();
        tokio::pin!(finished);
        finished.as_mut().enable();
        let start = Instant::now();
        queue
            .submit_raw(&setup.tenant, None, "bench.count", json!({}), None, None)
            .await?;
        while DONE.load(Ordering::Relaxed) == before {
            tokio::time::timeout(Duration::from_secs(5), finished.as_mut()).await?;
            finished.set(FINISHED.notified());
            finished.as_mut().enable();
        }
        if i >= 50 {
            samples.push(start.elapsed());
        }
    }
    stop(stop_tx, handles).await?;
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| {
        ms(samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1])
    };

    println!(
        "== Jobs: {n} per throughput run ({} for notes.create), nproc={}",
        notes_n,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  {:<52} {:>10}", "", "jobs/s");
    println!(
        "  {:<52} {:>10.0}",
        "baseline: raw XADD + XREADGROUP + XACK, batched", raw
    );
    println!(
        "  {:<52} {:>10.0}",
        "baseline: raw XADD + XREADGROUP + XACK, per message", raw1
    );
    println!(
        "  {:<52} {:>10.0}   ({:.2}x per-message raw, {:.3}x batched raw)",
        "no-op job, 1 worker (submit, run, ack, status)",
        noop1,
        noop1 / raw1,
        noop1 / raw
    );
    println!(
        "  {:<52} {:>10.0}   ({:.2}x per-message raw, {:.3}x batched raw)",
        "no-op job, 2 workers",
        noop2,
        noop2 / raw1,
        noop2 / raw
    );
    println!("  {:<52} {:>10.0}", "notes.create, 1 worker", notes1);
    println!("  {:<52} {:>10.0}", "notes.create, 2 workers", notes2);
    println!(
        "  submit -> completion, one at a time ({latency_jobs} jobs): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        p(0.5),
        p(0.99),
        ms(*samples.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "  targets: >= 4700 no-op jobs/s with 1 worker: {}; >= 0.3x raw: {} per message, {} batched; p50 <= 1 ms: {}; p99 <= 3 ms: {}",
        if noop1 >= 4700.0 { "met" } else { "NOT met" },
        if noop1 / raw1 >= 0.3 {
            "met"
        } else {
            "NOT met"
        },
        if noop1 / raw >= 0.3 { "met" } else { "NOT met" },
        if p(0.5) <= 1.0 { "met" } else { "NOT met" },
        if p(0.99) <= 3.0 { "met" } else { "NOT met" },
    );
    Ok(())
}
