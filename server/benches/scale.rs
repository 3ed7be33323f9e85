//! Scale figures for `scripts/bench`: 100,000 registered tenants.
//! - memory: resident memory added by registering them, divided by the count, against the
//!   bytes of their ids, hosts and database URLs alone (the baseline);
//! - registry update: one tenant changed at 100,000, against a lookup at the same size;
//! - startup: loading them from the control database and building the registry, against
//!   reading the same rows with `SELECT id FROM tenants` (the baseline).
//!
//! Environment: BENCH_TENANTS (default 100000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenant_router::control::ControlDb;
use tenant_router::registry::{Registry, RegistryOptions};
use tenant_router::tenant::{
    DatabaseUrl, Isolation, PoolSettings, Tenant, TenantHost, TenantId, TenantState,
};
use tenant_router::testing::LocalPostgres;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn tenant(i: usize, version: i64) -> Tenant {
    Tenant {
        id: TenantId::parse(&format!("tenant-{i}")).expect("id"),
        hosts: vec![TenantHost::parse(&format!("tenant-{i}.example.org")).expect("host")],
        database: DatabaseUrl::parse(&format!(
            "postgres://app:secret@db-{}.internal:5432/tenant_{i}",
            i % 16
        ))
        .expect("url"),
        pool: PoolSettings::default(),
        state: TenantState::Active,
        isolation: Isolation::Dedicated,
        version,
        incarnation: 1,
        rate_limit: None,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);

    // Memory.
    let tenants: Vec<Tenant> = (0..n).map(|i| tenant(i, i as i64 + 1)).collect();
    let raw: usize = tenants
        .iter()
        .map(|t| t.id.as_str().len() + t.hosts[0].as_str().len() + t.database.expose().len())
        .sum();
    let registry = Registry::new(RegistryOptions::default());
    let before = rss_bytes();
    registry.replace_all(tenants, n as i64);
    let after = rss_bytes();
    let per_tenant = (after.saturating_sub(before)) as f64 / n as f64;

    // One update at this size, against one lookup.
    let mut updates = Vec::new();
    for k in 0..200 {
        let t = tenant(k * 37 % n, n as i64 + 1 + k as i64);
        let start = Instant::now();
        registry.upsert(t);
        updates.push(start.elapsed());
    }
    let mut lookups = Vec::new();
    for k in 0..2000 {
        let host = format!("tenant-{}.example.org", k * 31 % n);
        let start = Instant::now();
        std::hint::black_box(registry.resolve(&host));
        lookups.push(start.elapsed());
    }
    let update = median(updates);
    let lookup = median(lookups);
    drop(registry);

    // Startup: the control database with n tenants.
    let pg = LocalPostgres::start_ephemeral().await?;
    let control = ControlDb::connect_lazy(&pg.create_database("control").await?);
    control.migrate().await?;
    sqlx::query(
        "INSERT INTO tenants (id, database_url)
         SELECT 'tenant-' || g, 'postgres://app:secret@db.internal:5432/tenant_' || g
         FROM generate_series(0, $1 - 1) g",
    )
    .bind(n as i64)
    .execute(control.pool())
    .await?;
    sqlx::query(
        "INSERT INTO tenant_hosts (host, tenant_id)
         SELECT 'tenant-' || g || '.example.org', 'tenant-' || g FROM generate_series(0, $1 - 1) g",
    )
    .bind(n as i64)
    .execute(control.pool())
    .await?;
    let start = Instant::now();
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM tenants")
        .fetch_all(control.pool())
        .await?;
    let baseline_read = start.elapsed();
    assert_eq!(ids.len(), n);
    let start = Instant::now();
    let (loaded, version) = control.load_all().await?;
    let registry = Arc::new(Registry::new(RegistryOptions::default()));
    registry.replace_all(loaded, version);
    let startup = start.elapsed();
    assert_eq!(registry.snapshot().len(), n);

    println!(
        "== Scale: {n} tenants (nproc={})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  memory per idle tenant: {per_tenant:.0} bytes (its id, host and URL alone: {:.0} bytes; ratio {:.1}x)",
        raw as f64 / n as f64,
        per_tenant / (raw as f64 / n as f64)
    );
    println!(
        "  registry update at {n}: {:.1} us (a lookup: {:.0} ns; ratio {:.0}x)",
        update.as_secs_f64() * 1e6,
        lookup.as_secs_f64() * 1e9,
        update.as_secs_f64() / lookup.as_secs_f64().max(1e-9)
    );
    println!(
        "  startup, load {n} tenants and build the registry: {:.2} s (SELECT id FROM tenants alone: {:.2} s; ratio {:.1}x)",
        startup.as_secs_f64(),
        baseline_read.as_secs_f64(),
        startup.as_secs_f64() / baseline_read.as_secs_f64()
    );
    println!(
        "  targets: <= 1 KiB per idle tenant: {}; update <= 50 us: {}; startup in seconds: {}",
        if per_tenant <= 1024.0 {
            "met"
        } else {
            "NOT met"
        },
        if update <= Duration::from_micros(50) {
            "met"
        } else {
            "NOT met"
        },
        if startup <= Duration::from_secs(10) {
            "met"
        } else {
            "NOT met"
        },
    );
    Ok(())
}
