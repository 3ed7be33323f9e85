//! `citus-ads`: the Citus multi-tenant tutorial's ads app, on tenant-router in shared mode.
//! Every company is a tenant (`company-<id>`, host `company-<id>.<base domain>`); its rows
//! live in the shared database (schema `citus_ads`), distributed by `company_id` on Citus.
//!
//! ```text
//! citus-ads load <csv-dir>   # companies.csv, campaigns.csv, ads.csv (header-less)
//! citus-ads serve            # GET /api/campaigns?sort=-monthly_budget&limit=10
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::routing::get;
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tenant_router::bus::{Hint, HintOp, Publisher};
use tenant_router::control::{ControlDb, TenantSpec, WriteMode};
use tenant_router::middleware::CurrentTenant;
use tenant_router::problem::{ApiError, ApiQuery};
use tenant_router::registry::RegistryOptions;
use tenant_router::shared::SharedDb;
use tenant_router::tenant::{
    DatabaseUrl, Isolation, PoolSettings, TenantHost, TenantId, TenantState,
};
use tenant_router_server::config::{Settings, SettingsArgs};
use tenant_router_server::server::{shutdown_signal, with_common_layers};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The schema of the app's tables in the shared database.
const SCHEMA: &str = "citus_ads";

/// The Citus calls, in order: the companies table first, the others co-located with it.
const CITUS: &[(&str, &str)] = &[
    (
        "companies",
        "SELECT create_distributed_table('companies', 'id')",
    ),
    (
        "campaigns",
        "SELECT create_distributed_table('campaigns', 'company_id', colocate_with => 'companies')",
    ),
    (
        "ads",
        "SELECT create_distributed_table('ads', 'company_id', colocate_with => 'companies')",
    ),
];

/// The Citus tutorial's ads app on tenant-router.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import companies.csv, campaigns.csv and ads.csv (the tutorial's header-less files)
    /// and register every company as a shared tenant.
    Load {
        /// The directory holding the three files.
        dir: PathBuf,
    },
    /// Serve `GET /api/campaigns` on each company's host.
    Serve,
}

fn main() -> ExitCode {
    if let Err(code) = tenant_router_server::process::init_tracing() {
        return code;
    }
    let cli = Cli::parse();
    tenant_router_server::process::run(async {
        run(cli).await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(&cli.settings)?;
    let shared_url = settings
        .shared_database()
        .context("set TENANT_ROUTER_SHARED_DATABASE_URL or TENANT_ROUTER_DATABASE_URL")?;
    let pool = connect(&shared_url).await?;
    match cli.command {
        Command::Load { dir } => load(&settings, &shared_url, &pool, &dir).await,
        Command::Serve => serve(&settings, &shared_url, pool).await,
    }
}

async fn connect(url: &DatabaseUrl) -> anyhow::Result<PgPool> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(url.connect_options())
        .await
        .context("connecting to the shared database")?;
    let created = sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {SCHEMA}"
    )))
    .execute(&admin)
    .await;
    if let Err(e) = created {
        // Another process made it at the same moment.
        let raced = matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"));
        if !raced {
            return Err(e).context("creating the schema");
        }
    }
    admin.close().await;
    Ok(PgPoolOptions::new()
        .max_connections(8)
        .connect_with(url.connect_options().options([("search_path", SCHEMA)]))
        .await?)
}

/// Prepares the library's shared schema (the tenant directory, the roles requests run as,
/// and on Citus their right to log in on the workers), then migrates the app's own schema
/// and on Citus distributes what is not distributed yet, in order.
async fn prepare(pool: &PgPool, shared_url: &DatabaseUrl) -> anyhow::Result<()> {
    // The directory and the roles only: the app's tables are keyed by company, and it
    // distributes them itself.
    SharedDb::connect_lazy(shared_url)
        .prepare_router_objects(None)
        .await
        .context("preparing the shared schema")?;
    MIGRATOR.run(pool).await.context("migrating")?;
    let citus: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
            .fetch_one(pool)
            .await?;
    if citus {
        for (table, statement) in CITUS {
            let done: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1::regclass)",
            )
            .bind(table)
            .fetch_one(pool)
            .await?;
            if !done {
                sqlx::query(*statement).execute(pool).await?;
            }
        }
    }
    Ok(())
}

/// The tenant of company `id`: `company-<id>`, the only form the row-level security
/// policies (migration 0002) match.
fn company_tenant(id: i64) -> anyhow::Result<TenantId> {
    anyhow::ensure!(id >= 0, "company {id}: ids must not be negative");
    Ok(TenantId::parse(&format!("company-{id}"))?)
}

/// The company of a tenant, when its id is a company's in the canonical form
/// ([`company_tenant`]): `company-01` or `company--5` is not company 1 or -5.
fn company_of(tenant: &TenantId) -> Option<i64> {
    let id: i64 = tenant.as_str().strip_prefix("company-")?.parse().ok()?;
    (id >= 0 && format!("company-{id}") == tenant.as_str()).then_some(id)
}

async fn load(
    settings: &Settings,
    shared_url: &DatabaseUrl,
    pool: &PgPool,
    dir: &Path,
) -> anyhow::Result<()> {
    prepare(pool, shared_url).await?;
    let shared = SharedDb::connect_lazy(shared_url);
    let mut conn = pool.acquire().await?;
    for table in ["companies", "campaigns", "ads"] {
        let path = dir.join(format!("{table}.csv"));
        let data = tokio::fs::read(&path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        let mut copy = conn
            .copy_in_raw(&format!("COPY {table} FROM STDIN (FORMAT csv)"))
            .await?;
        copy.send(data).await?;
        let rows = copy
            .finish()
            .await
            .with_context(|| format!("loading {}", path.display()))?;
        println!("{table}: {rows} rows");
    }
    drop(conn);

    // Every company becomes a shared tenant.
    let control = ControlDb::connect_lazy(settings.require_database_url()?);
    control.migrate().await?;
    let base = settings
        .base_domain
        .clone()
        .unwrap_or_else(|| "test.com".into());
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM companies ORDER BY id")
        .fetch_all(pool)
        .await?;
    let mut last = None;
    for id in &ids {
        let tenant = company_tenant(*id)?;
        // In the tenant directory first: a server that learns of the tenant from the
        // control database serves it only once it is listed there.
        shared
            .register(&tenant)
            .await
            .with_context(|| format!("listing {tenant} in the tenant directory"))?;
        let spec = TenantSpec {
            hosts: vec![TenantHost::parse(&format!("{tenant}.{base}"))?],
            id: tenant.clone(),
            database: shared_url.clone(),
            provisioned: false,
            pool: PoolSettings::default(),
            state: TenantState::Active,
            isolation: Isolation::Shared,
            incarnation: None,
            rate_limit: None,
        };
        let written = control
            .write(&spec, WriteMode::Upsert)
            .await
            .with_context(|| format!("registering {tenant}"))?;
        last = Some(written.tenant);
    }
    println!("{} companies registered as tenants", ids.len());
    if let (Some(redis), Some(tenant)) = (settings.redis()?, last) {
        let _ = Publisher::new(redis, &settings.redis_channel)?
            .publish(&Hint::new(
                HintOp::Upsert,
                tenant.id,
                control.max_version().await?,
            ))
            .await;
    }
    Ok(())
}

/// Serves through the library's tenant data path: the registry's one pool on the shared
/// database (under the connection budget), a transaction per request as
/// `tenant_router_app` scoped to the company, row-level security behind the filter. The
/// app's own pool only prepares, and is closed before serving.
async fn serve(settings: &Settings, shared_url: &DatabaseUrl, pool: PgPool) -> anyhow::Result<()> {
    prepare(&pool, shared_url).await?;
    pool.close().await;
    let tenants = settings
        .tenant_router()?
        .registry_options(RegistryOptions {
            shared_database: Some(shared_url.clone()),
            ..settings.registry_options()
        })
        .start()
        .await?;
    let app = Router::new()
        .route("/api/campaigns", get(campaigns))
        .layer(tenants.layer());
    let app = with_common_layers(app, settings.max_body_bytes);
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    println!("citus-ads serving on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tenants.shutdown().await;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignQuery {
    sort: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize, sqlx::FromRow)]
struct Campaign {
    name: String,
    cost_model: String,
    state: String,
    monthly_budget: Option<i64>,
}

/// `GET /api/campaigns?sort=-monthly_budget&limit=10`: the company's campaigns, as
/// `SELECT name, cost_model, state, monthly_budget FROM campaigns WHERE company_id = $1
/// ORDER BY monthly_budget DESC LIMIT 10` answers. Always scoped to the host's company.
async fn campaigns(
    tenant: CurrentTenant,
    ApiQuery(q): ApiQuery<CampaignQuery>,
) -> Result<Json<Vec<Campaign>>, ApiError> {
    let company = company_of(tenant.id())
        .ok_or_else(|| ApiError::NotFound("this host is not a company".into()))?;
    if tenant.tenant().isolation != Isolation::Shared {
        // Its rows are in the shared database, distributed by company; a tenant moved to a
        // database of its own took none of them along.
        return Err(ApiError::Conflict(format!(
            "{} is not a shared tenant; citus-ads serves shared tenants only",
            tenant.id()
        )));
    }
    let limit = q.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 100"));
    }
    let sort = q.sort.as_deref().unwrap_or("-monthly_budget");
    let (column, direction) = match sort.strip_prefix('-') {
        Some(c) => (c, "DESC"),
        None => (sort, "ASC"),
    };
    // Only known columns reach the SQL text.
    let column = match column {
        "monthly_budget" | "name" | "created_at" | "id" => column,
        _ => {
            return Err(ApiError::invalid(
                "sort",
                "must be one of monthly_budget, name, created_at, id, with '-' for descending",
            ));
        }
    };
    let db = tenant.db();
    let mut conn = db.begin().await?;
    let rows: Vec<Campaign> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT name, cost_model, state, monthly_budget FROM citus_ads.campaigns
         WHERE company_id = $1 ORDER BY {column} {direction}, id LIMIT $2"
    )))
    .bind(company)
    .bind(limit)
    .fetch_all(&mut conn)
    .await?;
    conn.commit().await?;
    Ok(Json(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_form_names_a_company() {
        let of = |s: &str| company_of(&TenantId::parse(s).unwrap());
        assert_eq!(of("company-1"), Some(1));
        assert_eq!(of("company-0"), Some(0));
        assert_eq!(of("company-9223372036854775807"), Some(i64::MAX));
        for other in [
            "company-01",
            "company--5",
            "company-1x",
            "company-99999999999999999999",
            "acme",
        ] {
            assert_eq!(of(other), None, "{other}");
        }
        assert!(company_tenant(-5).is_err());
    }

    #[test]
    fn companies_first_then_colocated_tables() {
        assert_eq!(CITUS[0].0, "companies");
        assert!(
            CITUS[0]
                .1
                .contains("create_distributed_table('companies', 'id')")
        );
        for (table, statement) in &CITUS[1..] {
            assert!(
                statement.contains(&format!(
                    "'{table}', 'company_id', colocate_with => 'companies'"
                )),
                "{statement}"
            );
        }
    }
}
