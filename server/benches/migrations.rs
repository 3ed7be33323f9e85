//! Migration throughput, for `scripts/bench`: `migrate_all` over 1,000 tenant databases that
//! are already current, and over 200 that each need one migration, with the default 8 jobs.
//! Baseline in the same run: opening and closing one connection per database, 8 at a time
//! (no per-tenant check can cost less).
//!
//! Environment: BENCH_MIGRATE_TENANTS (default 1000), BENCH_MIGRATE_PENDING (default 200).

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt as _;
use sqlx::Connection as _;
use tenant_router::provision::{self, MigrationOutcome, TenantMigrations};
use tenant_router::tenant::{
    DatabaseUrl, Isolation, PoolSettings, Tenant, TenantHost, TenantId, TenantState,
};
use tenant_router::testing::LocalPostgres;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tenant(i: usize, database: DatabaseUrl) -> Tenant {
    Tenant {
        id: TenantId::parse(&format!("m-{i}")).expect("id"),
        hosts: vec![TenantHost::parse(&format!("m-{i}.example.org")).expect("host")],
        database,
        pool: PoolSettings::default(),
        state: TenantState::Active,
        isolation: Isolation::Dedicated,
        version: i as i64 + 1,
        incarnation: 1,
        rate_limit: None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n = env("BENCH_MIGRATE_TENANTS", 1000);
    let pending = env("BENCH_MIGRATE_PENDING", 200).min(n);
    let pg = LocalPostgres::start_ephemeral().await?;
    // One migrated template; every tenant database is a copy of it.
    let template = pg.create_database("template_tenant").await?;
    if let MigrationOutcome::Failed(e) =
        provision::migrate_tenant_with(&template, &tenant_router_server::schema::TENANT_MIGRATOR)
            .await
    {
        anyhow::bail!("{e}");
    }
    let admin = pg.url("postgres");
    let mut conn = sqlx::PgConnection::connect_with(&admin.connect_options()).await?;
    let mut tenants = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("mt_{i}");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE template_tenant"
        )))
        .execute(&mut conn)
        .await?;
        tenants.push(tenant(i, pg.url(&name)));
    }
    conn.close().await?;

    // Baseline: one connection per database, 8 at a time. The first pass warms the
    // server's caches for both measurements; the second is timed.
    let mut baseline = std::time::Duration::ZERO;
    for _ in 0..2 {
        let start = Instant::now();
        let connected: Vec<bool> = futures_util::stream::iter(tenants.iter())
            .map(|t| async move {
                match sqlx::PgConnection::connect_with(&t.database.connect_options()).await {
                    Ok(c) => c.close().await.is_ok(),
                    Err(_) => false,
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        baseline = start.elapsed();
        anyhow::ensure!(
            connected.iter().all(|c| *c),
            "a tenant database did not answer"
        );
    }

    let builtin = TenantMigrations::Embedded(&tenant_router_server::schema::TENANT_MIGRATOR)
        .load()
        .await?;
    let start = Instant::now();
    let outcomes = provision::migrate_all(&tenants, Arc::clone(&builtin), 8).await;
    let current = start.elapsed();
    anyhow::ensure!(
        outcomes
            .iter()
            .all(|(_, o)| matches!(o, MigrationOutcome::Current)),
        "every tenant should have been current"
    );

    // One more migration, for `pending` of them.
    let dir = tempfile::tempdir()?;
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/tenant");
    for entry in std::fs::read_dir(source)? {
        let path = entry?.path();
        std::fs::copy(&path, dir.path().join(path.file_name().expect("a file")))?;
    }
    std::fs::write(
        dir.path().join("0099_bench.sql"),
        "CREATE TABLE bench_extra (id bigint PRIMARY KEY);\n",
    )?;
    let extra = TenantMigrations::Dir(dir.path().to_path_buf())
        .load()
        .await?;
    let start = Instant::now();
    let outcomes = provision::migrate_all(&tenants[..pending], extra, 8).await;
    let one_each = start.elapsed();
    anyhow::ensure!(
        outcomes
            .iter()
            .all(|(_, o)| matches!(o, MigrationOutcome::Migrated(1))),
        "every tenant should have had one migration applied"
    );

    println!(
        "== Migrations (8 jobs, nproc={})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  {n} tenants already current: {:.2} s (one connection per database alone: {:.2} s; ratio {:.2}x)",
        current.as_secs_f64(),
        baseline.as_secs_f64(),
        current.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  {pending} tenants needing one migration each: {:.2} s",
        one_each.as_secs_f64()
    );
    println!(
        "  target: {n} current tenants <= 10 s: {}",
        if current.as_secs_f64() <= 10.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
