//! Propagation latency, for `scripts/bench`: 1,000 tenant changes committed by instance A,
//! and for each, the time from A's commit to the moment instances B and C have applied it.
//! B and C are full subscribers (`ConfigSync::run`: own Redis connection, own control
//! database pool, own registry) in this process; A commits through `ControlDb::write` and
//! announces through `Publisher`, as `TenantOps` does.
//!
//! Baseline in the same run: a raw Redis PUBLISH to a subscriber, one message at a time.
//! Environment: BENCH_CHANGES (default 1000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use redis::AsyncCommands as _;
use tenant_router::bus::{Hint, HintOp, Publisher};
use tenant_router::control::{ControlDb, TenantSpec, WriteMode};
use tenant_router::registry::{Registry, RegistryOptions};
use tenant_router::sync::{BusConfig, ConfigSync};
use tenant_router::tenant::{PoolSettings, TenantHost, TenantId, TenantState};
use tenant_router::testing::{LocalPostgres, LocalRedis};
use tokio::sync::watch;

const CHANNEL: &str = "tenant-router:bench";

fn summary(name: &str, mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| {
        ms(samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1])
    };
    let (p50, p99, max) = (at(0.50), at(0.99), ms(*samples.last().unwrap()));
    println!("  {name:<40} {p50:>8.3} {p99:>8.3} {max:>8.3}");
    (p50, p99, max)
}

async fn wait_for(rx: &mut watch::Receiver<i64>, version: i64) -> Instant {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v >= version))
        .await
        .expect("an instance did not apply a change within 10 s")
        .expect("the registry is gone");
    Instant::now()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let changes: usize = std::env::var("BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let pg = LocalPostgres::start_ephemeral().await?;
    let redis = LocalRedis::start_ephemeral()?;
    let control_url = pg.create_database("control").await?;
    let tenant_db = pg.create_database("tenant").await?;
    let control = ControlDb::connect_lazy(&control_url);
    control.migrate().await?;

    // Baseline: raw pub/sub round trip, one message at a time.
    let client = redis::Client::open(redis.url())?;
    let mut subscriber = client.get_async_pubsub().await?;
    subscriber.subscribe("baseline").await?;
    let mut messages = subscriber.into_on_message();
    let mut publisher = client.get_multiplexed_async_connection().await?;
    let mut raw = Vec::with_capacity(changes);
    for i in 0..changes + 50 {
        let start = Instant::now();
        let _: i64 = publisher.publish("baseline", i).await?;
        messages.next().await.expect("a message");
        if i >= 50 {
            raw.push(start.elapsed());
        }
    }
    drop(messages);

    // Instances B and C.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = Vec::new();
    for _ in 0..2 {
        let registry = Arc::new(Registry::new(RegistryOptions::default()));
        let sync = Arc::new(ConfigSync::new(
            Arc::clone(&registry),
            ControlDb::connect_lazy(&control_url),
        ));
        sync.full_load().await?;
        receivers.push(registry.watch_version());
        tokio::spawn(Arc::clone(&sync).run(
            Some(BusConfig {
                redis: redis.url().into(),
                channel: CHANNEL.into(),
            }),
            Duration::from_secs(3600),
            stop_rx.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while sync.report().state != tenant_router::sync::BusState::Connected {
            anyhow::ensure!(Instant::now() < deadline, "a subscriber did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // Instance A: commit, then announce.
    let bus = Publisher::new(redis.url(), CHANNEL)?;
    let tenants = 50;
    let spec = |n: usize, round: usize| TenantSpec {
        id: TenantId::parse(&format!("t-{n}")).expect("id"),
        hosts: vec![TenantHost::parse(&format!("t-{n}.example.org")).expect("host")],
        database: tenant_db.clone(),
        provisioned: false,
        pool: PoolSettings {
            max_connections: 1 + (round % 20) as u32,
            idle_timeout_secs: 300,
            ..PoolSettings::default()
        },
        state: TenantState::Active,
        isolation: Default::default(),
        incarnation: None,
        rate_limit: None,
    };
    let (mut to_b, mut to_c, mut commits) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..changes + 50 {
        let n = i % tenants;
        let round = i / tenants;
        let write_started = Instant::now();
        // Every 10th change of a tenant removes it; the next one creates it again.
        let (op, version) = if round % 10 == 9 {
            let removed = control.delete(&spec(n, round).id).await?.expect("present");
            (HintOp::Remove, removed.version)
        } else {
            let written = control.write(&spec(n, round), WriteMode::Upsert).await?;
            (HintOp::Upsert, written.tenant.version)
        };
        let committed = Instant::now();
        let _ = bus
            .publish(&Hint::new(op, spec(n, round).id, version))
            .await;
        let (rx_b, rx_c) = receivers.split_at_mut(1);
        let (b, c) = tokio::join!(
            wait_for(&mut rx_b[0], version),
            wait_for(&mut rx_c[0], version)
        );
        if i >= 50 {
            commits.push(committed - write_started);
            to_b.push(b - committed);
            to_c.push(c - committed);
        }
    }
    let _ = stop_tx.send(true);

    println!(
        "== Propagation: {changes} changes committed by A, until B and C applied each (nproc={})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  {:<40} {:>8} {:>8} {:>8}",
        "", "p50 ms", "p99 ms", "max ms"
    );
    let (raw50, raw99, _) = summary("baseline: raw Redis PUBLISH -> subscriber", raw);
    summary("A: the commit itself (for reference)", commits);
    let (b50, b99, _) = summary("A commit -> applied on B", to_b.clone());
    let (c50, c99, _) = summary("A commit -> applied on C", to_c.clone());
    let both: Vec<Duration> = to_b.into_iter().chain(to_c).collect();
    let (p50, p99, _) = summary("A commit -> applied (B and C together)", both);
    println!(
        "  ratio to raw pub/sub: p50 {:.2}x, p99 {:.2}x   (B p50 {b50:.3}/C p50 {c50:.3}, B p99 {b99:.3}/C p99 {c99:.3})",
        p50 / raw50,
        p99 / raw99
    );
    println!(
        "  target p50 <= 1 ms: {}; p99 <= 5 ms: {}",
        if p50 <= 1.0 { "met" } else { "NOT met" },
        if p99 <= 5.0 { "met" } else { "NOT met" }
    );
    Ok(())
}
