//! The server half of the noisy-neighbour benchmark in `scripts/bench`: the real server
//! (`Application`, with its default limits) over three tenants, each in its own database on
//! one PostgreSQL: `tenant-a` (the noisy one), `tenant-b` (the quiet one, with 100 notes)
//! and `tenant-c` (noisy too, but with a rate limit of 100 requests/s, burst 100). Each has
//! a user.
//!
//! Prints `READY <url> <token of A> <token of B> <token of C>` and serves until stdin closes.

use serde_json::{Value, json};
use tenant_router::control::{ControlDb, TenantSpec};
use tenant_router::provision;
use tenant_router::tenant::{PoolSettings, RateLimit, TenantHost, TenantId, TenantState};
use tenant_router::testing::LocalPostgres;
use tenant_router_server::config::{Settings, SettingsArgs};
use tenant_router_server::server::Application;
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pg = LocalPostgres::start_ephemeral().await?;
    let control_url = pg.create_database("control").await?;
    let control = ControlDb::connect_lazy(&control_url);
    control.migrate().await?;
    for name in ["a", "b", "c"] {
        let url = pg.create_database(&format!("tenant_{name}")).await?;
        if let provision::MigrationOutcome::Failed(e) =
            provision::migrate_tenant_with(&url, &tenant_router_server::schema::TENANT_MIGRATOR)
                .await
        {
            anyhow::bail!("{e}");
        }
        control
            .upsert(&TenantSpec {
                id: TenantId::parse(&format!("tenant-{name}"))?,
                hosts: vec![TenantHost::parse(&format!("tenant-{name}.test.com"))?],
                database: url,
                provisioned: true,
                pool: PoolSettings::default(),
                state: TenantState::Active,
                isolation: Default::default(),
                incarnation: None,
                rate_limit: (name == "c").then_some(RateLimit {
                    requests_per_second: 100,
                    burst: 100,
                }),
            })
            .await?;
    }
    // Every limit at its default; only the addresses and the control database are given.
    let settings = Settings::from_args(&SettingsArgs {
        listen: Some("127.0.0.1:0".parse()?),
        admin_listen: Some("127.0.0.1:0".parse()?),
        database_url: Some(control_url.expose().to_string()),
        base_domain: Some("test.com".into()),
        ..Default::default()
    })?;
    let app = Application::build(&settings).await?;
    let url = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until(std::future::pending()));

    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for name in ["a", "b", "c"] {
        let host = format!("tenant-{name}.test.com");
        let user =
            json!({"username": "bench", "email": "bench@example.com", "password": "correct horse"});
        client
            .post(format!("{url}/api/register"))
            .header("Host", &host)
            .json(&user)
            .send()
            .await?
            .error_for_status()?;
        let login: Value = client
            .post(format!("{url}/api/login"))
            .header("Host", &host)
            .json(&json!({"email": "bench@example.com", "password": "correct horse"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens.push(login["token"].as_str().expect("a token").to_string());
    }
    for i in 0..100 {
        client
            .post(format!("{url}/api/notes"))
            .header("Host", "tenant-b.test.com")
            .bearer_auth(&tokens[1])
            .json(&json!({"content": format!("benchmark note number {i}, of ordinary length")}))
            .send()
            .await?
            .error_for_status()?;
    }
    println!("READY {url} {} {} {}", tokens[0], tokens[1], tokens[2]);

    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(pg);
    Ok(())
}
