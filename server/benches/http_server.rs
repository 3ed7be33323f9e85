//! The server half of `scripts/bench`: one process serving the same notes handler twice,
//! once through the router (port A) and once with one fixed pool and no routing (port B),
//! over the same PostgreSQL, so the two figures differ only by what the router adds.
//!
//! A third port serves the same query and JSON with none of tenant-router: a plain
//! `sqlx::PgPool` of the same size, the floor for axum and sqlx on this machine.
//!
//! Prints `READY <routed url> <fixed url> <host> <token> <postgres port> <plain url>` and
//! serves until stdin closes.

use std::sync::Arc;

use axum::Extension;
use serde_json::{Value, json};
use tenant_router::control::{ControlDb, TenantSpec};
use tenant_router::middleware::CurrentTenant;
use tenant_router::provision;
use tenant_router::registry::{Registry, RegistryOptions};
use tenant_router::tenant::{PoolSettings, TenantHost, TenantId, TenantState};
use tenant_router::testing::LocalPostgres;
use tenant_router_server::app::{self, AppConfig};
use tenant_router_server::listener::{self, HttpLimits};
use tenant_router_server::server::{ServerState, app, with_common_layers};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const HOST: &str = "tenant-1.test.com";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool_size: u32 = std::env::var("BENCH_POOL_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    // As the server does: the latency histogram is recorded for every request.
    tenant_router_server::telemetry::prometheus();
    if std::env::var_os("BENCH_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter("warn").init();
    }
    let pg = LocalPostgres::start_ephemeral().await?;
    let control = ControlDb::connect_lazy(&pg.create_database("control").await?);
    control.migrate().await?;
    for i in 1..=2 {
        let url = pg.create_database(&format!("tenant_{i}")).await?;
        if let provision::MigrationOutcome::Failed(e) =
            provision::migrate_tenant_with(&url, &tenant_router_server::schema::TENANT_MIGRATOR)
                .await
        {
            anyhow::bail!("{e}");
        }
        control
            .upsert(&TenantSpec {
                id: TenantId::parse(&format!("tenant-{i}"))?,
                hosts: vec![TenantHost::parse(&format!("tenant-{i}.test.com"))?],
                database: url,
                provisioned: true,
                pool: PoolSettings {
                    max_connections: pool_size,
                    idle_timeout_secs: 300,
                    ..PoolSettings::default()
                },
                state: TenantState::Active,
                isolation: Default::default(),
                incarnation: None,
                rate_limit: None,
            })
            .await?;
    }
    let registry = Arc::new(Registry::new(RegistryOptions::default()));
    let (tenants, version) = control.load_all().await?;
    registry.replace_all(tenants, version);
    let state = ServerState {
        registry: Arc::clone(&registry),
        control,
        sync: None,
        layer: tenant_router::middleware::TenantLayer::new(Arc::clone(&registry)),
    };

    let routed = TcpListener::bind("127.0.0.1:0").await?;
    let fixed = TcpListener::bind("127.0.0.1:0").await?;
    let plain = TcpListener::bind("127.0.0.1:0").await?;
    let plain_url = format!("http://{}", plain.local_addr()?);
    let routed_url = format!("http://{}", routed.local_addr()?);
    let fixed_url = format!("http://{}", fixed.local_addr()?);
    let entry = registry.resolve(HOST).expect("tenant-1 is registered");
    // The same routes and common layers; only the tenant layer is swapped for a fixed tenant.
    let fixed_app = with_common_layers(
        app::router(AppConfig::default()).layer(Extension(CurrentTenant::new(Arc::clone(&entry)))),
        65536,
    );
    // Served as the server serves them: its own listener, with its default limits (HTTP/1,
    // the head and request deadlines, the connection cap).
    let (_serving, stop) = tokio::sync::watch::channel(false);
    let limits = HttpLimits::default();
    let routed_app = app(state, AppConfig::default(), 65536);
    tokio::spawn(listener::serve(routed, routed_app, limits, stop.clone()));
    tokio::spawn(listener::serve(fixed, fixed_app, limits, stop));
    let plain_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(pool_size)
        .connect_with(entry.tenant().database.connect_options())
        .await?;
    let plain_app = axum::Router::new()
        .route("/api/notes", axum::routing::get(plain::list))
        .with_state(plain_pool);
    tokio::spawn(async move { axum::serve(plain, plain_app).await });

    // One user with 100 notes; the benchmark reads the newest 20.
    let client = reqwest::Client::new();
    let user =
        json!({"username": "bench", "email": "bench@example.com", "password": "correct horse"});
    client
        .post(format!("{routed_url}/api/register"))
        .header("Host", HOST)
        .json(&user)
        .send()
        .await?
        .error_for_status()?;
    let login: Value = client
        .post(format!("{routed_url}/api/login"))
        .header("Host", HOST)
        .json(&json!({"email": "bench@example.com", "password": "correct horse"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["token"].as_str().expect("a token").to_string();
    for i in 0..100 {
        client
            .post(format!("{routed_url}/api/notes"))
            .header("Host", HOST)
            .bearer_auth(&token)
            .json(&json!({"content": format!("benchmark note number {i}, of ordinary length")}))
            .send()
            .await?
            .error_for_status()?;
    }
    // For `pgbench -S` on the same PostgreSQL, the machine's ceiling for one lookup.
    pg.create_database("pgbench").await?;
    println!(
        "READY {routed_url} {fixed_url} {HOST} {token} {} {plain_url}",
        pg.port()
    );

    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(pg);
    Ok(())
}

/// `GET /api/notes` as an app without tenant-router would write it: the same query (the
/// app's own `NOTES_PAGE_SQL`) and the same JSON, on a plain `sqlx::PgPool` (no routing, no
/// read-only sessions, no access log).
mod plain {
    use axum::Json;
    use axum::extract::State;
    use axum::http::StatusCode;
    use serde::Serialize;
    use sqlx::PgPool;
    use tenant_router_server::app::auth::BearerToken;
    use tenant_router_server::app::timestamp::Timestamp;

    #[derive(Serialize)]
    pub(crate) struct Note {
        id: i64,
        content: String,
        created_at: Timestamp,
        updated_at: Timestamp,
    }

    #[derive(Serialize)]
    pub(crate) struct Page {
        notes: Vec<Note>,
        next_cursor: Option<String>,
    }

    type Row = (
        Option<i64>,
        Option<String>,
        Option<Timestamp>,
        Option<Timestamp>,
    );

    pub(crate) async fn list(
        State(pool): State<PgPool>,
        token: BearerToken,
    ) -> Result<Json<Page>, StatusCode> {
        let limit = 20;
        let rows: Vec<Row> = sqlx::query_as(tenant_router_server::app::NOTES_PAGE_SQL)
            .bind("") // a dedicated tenant's scope
            .bind(token.hash())
            .bind(i64::MAX)
            .bind(limit + 1)
            .fetch_all(&pool)
            .await
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        if rows.is_empty() {
            return Err(StatusCode::UNAUTHORIZED);
        }
        let mut notes: Vec<Note> = rows
            .into_iter()
            .filter_map(|(id, content, created_at, updated_at)| {
                Some(Note {
                    id: id?,
                    content: content?,
                    created_at: created_at?,
                    updated_at: updated_at?,
                })
            })
            .collect();
        let next_cursor = if notes.len() as i64 > limit {
            notes.truncate(limit as usize);
            notes.last().map(|n| n.id.to_string())
        } else {
            None
        };
        Ok(Json(Page { notes, next_cursor }))
    }
}
