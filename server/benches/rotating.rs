//! The server half of `scripts/bench`'s rotating-traffic and router-overhead runs: 1,000
//! tenants on one PostgreSQL database, a global budget of 50 connections, the reference app.
//! Tenant `t-0`'s pool may hold BENCH_POOL_SIZE connections (default 16), so `GET
//! /api/notes/{id}` on it can be compared with `pgbench -S` at the same connection count.
//!
//! Also 1,000 *shared* tenants `s-0` … `s-999` (one pool on the shared schema), each with a
//! session for the same token, for rotating traffic that needs no new connections.
//!
//! Prints `READY <url> <token> <note id> <postgres port>` and serves until stdin closes.

use std::sync::Arc;

use serde_json::{Value, json};
use sha2::Digest as _;
use tenant_router::control::{ControlDb, TenantSpec, WriteMode};
use tenant_router::provision;
use tenant_router::registry::{Registry, RegistryOptions};
use tenant_router::tenant::{Isolation, PoolSettings, TenantHost, TenantId, TenantState};
use tenant_router::testing::LocalPostgres;
use tenant_router_server::app::AppConfig;
use tenant_router_server::server::{ServerState, app};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const TENANTS: usize = 1000;
const BUDGET: usize = 50;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool_size: u32 = std::env::var("BENCH_POOL_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let pg = LocalPostgres::start_ephemeral().await?;
    let control = ControlDb::connect_lazy(&pg.create_database("control").await?);
    control.migrate().await?;
    let db = pg.create_database("tenants").await?;
    if let provision::MigrationOutcome::Failed(e) =
        provision::migrate_tenant_with(&db, &tenant_router_server::schema::TENANT_MIGRATOR).await
    {
        anyhow::bail!("{e}");
    }
    pg.create_database("pgbench").await?;
    for i in 0..TENANTS {
        control
            .write(
                &TenantSpec {
                    id: TenantId::parse(&format!("t-{i}"))?,
                    hosts: vec![TenantHost::parse(&format!("t-{i}.test.com"))?],
                    database: db.clone(),
                    provisioned: false,
                    pool: PoolSettings {
                        max_connections: if i == 0 { pool_size } else { 5 },
                        idle_timeout_secs: 300,
                        ..PoolSettings::default()
                    },
                    state: TenantState::Active,
                    isolation: Isolation::Dedicated,
                    incarnation: None,
                    rate_limit: None,
                },
                WriteMode::Create,
            )
            .await?;
    }
    // The shared tenants, with one user and one session each for the same token.
    let shared = tenant_router::shared::SharedDb::connect_lazy(&db);
    shared
        .prepare(&tenant_router_server::schema::schema())
        .await?;
    let token_for_shared = "tra_shared_bench_token";
    let hash = sha2::Sha256::digest(token_for_shared.as_bytes()).to_vec();
    sqlx::query("INSERT INTO tenants (id) SELECT 's-' || g FROM generate_series(0, 999) g")
        .execute(shared.pool())
        .await?;
    sqlx::query(
        "INSERT INTO users (tenant_id, username, email, password_hash)
         SELECT 's-' || g, 'bench', 'bench@example.com', 'x' FROM generate_series(0, 999) g",
    )
    .execute(shared.pool())
    .await?;
    sqlx::query(
        "INSERT INTO sessions (tenant_id, token_hash, user_id, expires_at)
         SELECT tenant_id, $1, id, now() + interval '1 day' FROM users",
    )
    .bind(&hash)
    .execute(shared.pool())
    .await?;
    for i in 0..TENANTS {
        control
            .write(
                &TenantSpec {
                    id: TenantId::parse(&format!("s-{i}"))?,
                    hosts: vec![TenantHost::parse(&format!("s-{i}.test.com"))?],
                    database: db.clone(),
                    provisioned: false,
                    pool: PoolSettings::default(),
                    state: TenantState::Active,
                    isolation: Isolation::Shared,
                    incarnation: None,
                    rate_limit: None,
                },
                WriteMode::Create,
            )
            .await?;
    }
    let registry = Arc::new(Registry::new(RegistryOptions {
        max_total_connections: BUDGET,
        shared_database: Some(db.clone()),
        ..RegistryOptions::default()
    }));
    let (tenants, version) = control.load_all().await?;
    registry.replace_all(tenants, version);
    let state = ServerState {
        registry: Arc::clone(&registry),
        control,
        sync: None,
        layer: tenant_router::middleware::TenantLayer::new(Arc::clone(&registry)),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = app(state, AppConfig::default(), 64 * 1024);
    tokio::spawn(async move { axum::serve(listener, router).await });

    // One user, valid on every tenant (they share the database), and one note to read.
    let client = reqwest::Client::new();
    client
        .post(format!("{url}/api/register"))
        .header("Host", "t-0.test.com")
        .json(&json!({"username": "bench", "email": "bench@example.com", "password": "correct horse"}))
        .send()
        .await?
        .error_for_status()?;
    let login: Value = client
        .post(format!("{url}/api/login"))
        .header("Host", "t-0.test.com")
        .json(&json!({"email": "bench@example.com", "password": "correct horse"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["token"].as_str().unwrap_or_default().to_string();
    let note: Value = client
        .post(format!("{url}/api/notes"))
        .header("Host", "t-0.test.com")
        .bearer_auth(&token)
        .json(&json!({"content": "read me"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    println!(
        "READY {url} {token} {} {} {token_for_shared}",
        note["id"],
        pg.port()
    );

    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await? > 0 {}
    let s = registry.budget().stats();
    eprintln!(
        "budget {}: evictions {}, waits {}, refusals {}",
        s.max_total_connections, s.evictions_total, s.waits_total, s.refusals_total
    );
    Ok(())
}
