//! `citus-ads load` on synthetic data in the tutorial's CSV format, then `serve`, against a
//! throwaway plain PostgreSQL (the Citus calls are skipped without the extension) and a
//! throwaway three-node Citus cluster (skipped, saying so, when Citus is not installed;
//! a failure with `TENANT_ROUTER_TEST_CITUS=required`).

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenant_router::tenant::DatabaseUrl;
use tenant_router::testing::{LocalCitus, LocalPostgres, free_port};

const COMPANIES: i64 = 5;
const CAMPAIGNS_PER_COMPANY: i64 = 15;

fn generate(dir: &std::path::Path) {
    let (mut companies, mut campaigns, mut ads) = (String::new(), String::new(), String::new());
    let ts = "2016-12-01 12:00:00";
    let mut campaign_id = 0;
    let mut ad_id = 0;
    for c in 1..=COMPANIES {
        writeln!(
            companies,
            "{c},\"Company {c}, Inc.\",http://img.example/{c}.png,{ts},{ts}"
        )
        .unwrap();
        for k in 0..CAMPAIGNS_PER_COMPANY {
            campaign_id += 1;
            // Distinct budgets, in no particular order.
            let budget = 1000 + (k * 7919 + c * 104_729) % 9973;
            let cost_model = if k % 2 == 0 {
                "cost_per_click"
            } else {
                "cost_per_impression"
            };
            let state = ["running", "paused", "archived"][(k % 3) as usize];
            writeln!(
                campaigns,
                "{campaign_id},{c},c{c}-campaign-{k},{cost_model},{state},{budget},\"{{http://bad.example/{k},http://worse.example}}\",{ts},{ts}"
            )
            .unwrap();
            for a in 0..3 {
                ad_id += 1;
                writeln!(
                    ads,
                    "{ad_id},{c},{campaign_id},ad {a},http://img.example/ad.png,http://target.example/{a},{},{},{ts},{ts}",
                    a * 100,
                    a * 3
                )
                .unwrap();
            }
        }
    }
    std::fs::write(dir.join("companies.csv"), companies).unwrap();
    std::fs::write(dir.join("campaigns.csv"), campaigns).unwrap();
    std::fs::write(dir.join("ads.csv"), ads).unwrap();
}

fn citus_ads(control: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_citus-ads"));
    cmd.env("TENANT_ROUTER_DATABASE_URL", control)
        .env("TENANT_ROUTER_BASE_DOMAIN", "test.com")
        .env_remove("TENANT_ROUTER_SHARED_DATABASE_URL")
        .env_remove("TENANT_ROUTER_REDIS_URL")
        .env_remove("TENANT_ROUTER_CONFIG")
        .current_dir(std::env::temp_dir());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_the_tutorial_format_and_answers_the_campaign_query() {
    let pg = LocalPostgres::start_ephemeral().await.unwrap();
    let control = pg.create_database("control").await.unwrap();
    loads_and_answers(control, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_the_tutorial_format_and_answers_the_campaign_query_on_citus() {
    if let Err(why) = tenant_router::testing::citus_library() {
        if std::env::var("TENANT_ROUTER_TEST_CITUS").is_ok_and(|v| v == "required") {
            panic!("TENANT_ROUTER_TEST_CITUS=required, and Citus is missing: {why}");
        }
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** citus-ads on Citus SKIPPED: {why} ***\n"
        );
        return;
    }
    let citus = LocalCitus::start_ephemeral().await.unwrap();
    let control = citus.create_database("control").await.unwrap();
    loads_and_answers(control, true).await;
}

async fn loads_and_answers(control: DatabaseUrl, citus: bool) {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());

    let out = citus_ads(control.expose())
        .args(["load", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("companies: 5 rows"), "{text}");
    assert!(text.contains("campaigns: 75 rows"), "{text}");
    assert!(text.contains("ads: 225 rows"), "{text}");
    assert!(text.contains("5 companies registered as tenants"), "{text}");

    let port = free_port().unwrap();
    let mut server = citus_ads(control.expose())
        .arg("serve")
        .env("TENANT_ROUTER_LISTEN", format!("127.0.0.1:{port}"))
        // Requests go through the library's budgeted pool: two connections at most.
        .env("TENANT_ROUTER_MAX_TOTAL_CONNECTIONS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let get = |host: &str, query: &str| {
        client
            .get(format!("http://127.0.0.1:{port}/api/campaigns{query}"))
            .header("Host", host)
            .send()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while get("company-1.test.com", "")
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "citus-ads serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The API answers what the tutorial's query answers, for every company.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            control
                .connect_options()
                .options([("search_path", "citus_ads")]),
        )
        .await
        .unwrap();
    for company in 1..=COMPANIES {
        let expected: Vec<(String, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT name, cost_model, state, monthly_budget FROM campaigns
             WHERE company_id = $1 ORDER BY monthly_budget DESC LIMIT 10",
        )
        .bind(company)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(expected.len(), 10);
        let r = get(
            &format!("company-{company}.test.com"),
            "?sort=-monthly_budget&limit=10",
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let got: Vec<Value> = r.json().await.unwrap();
        let got: Vec<(String, String, String, Option<i64>)> = got
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["cost_model"].as_str().unwrap().to_string(),
                    c["state"].as_str().unwrap().to_string(),
                    c["monthly_budget"].as_i64(),
                )
            })
            .collect();
        assert_eq!(got, expected, "company {company}");
        assert!(got.iter().all(|c| c.0.starts_with(&format!("c{company}-"))));
    }
    // Row-level security holds on the app's tables (on Citus: on the workers): scoped to
    // company 1, a query with no filter sees company 1's rows only; unscoped, or under a
    // non-canonical id that parses to 1 (`company-01`), nothing.
    for (scope, companies, campaigns, ads) in [
        (
            "company-1",
            1,
            CAMPAIGNS_PER_COMPANY,
            3 * CAMPAIGNS_PER_COMPANY,
        ),
        ("", 0, 0, 0),
        ("company-01", 0, 0, 0),
    ] {
        let mut tx = pool.begin().await.unwrap();
        sqlx::raw_sql(
            "SET LOCAL ROLE tenant_router_app; SET LOCAL citus.propagate_set_commands TO 'local'",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET LOCAL app.tenant_id TO '{scope}'"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        let seen: (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM citus_ads.companies),
                    (SELECT count(*) FROM citus_ads.campaigns),
                    (SELECT count(*) FROM citus_ads.ads)",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(seen, (companies, campaigns, ads), "scope {scope:?}");
    }

    // The connection budget applies: bursts over every company never have more than two
    // request transactions open at once (the control database's pool, the only other
    // `tenant-router` connections here, is idle meanwhile).
    let mut most = 0;
    for _round in 0..5 {
        let requests = (0..40).map(|i| {
            let company = 1 + i % COMPANIES;
            get(&format!("company-{company}.test.com"), "?limit=5")
        });
        let sample = async {
            let mut most = 0;
            for _ in 0..40 {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'tenant-router/shared'
                       AND xact_start IS NOT NULL",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                most = most.max(n);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            most
        };
        let (responses, seen) = tokio::join!(futures_util::future::join_all(requests), sample);
        for r in responses {
            assert_eq!(r.unwrap().status(), 200);
        }
        most = most.max(seen);
        if most > 0 {
            break;
        }
    }
    assert!(
        (1..=2).contains(&most),
        "{most} request transactions at once"
    );

    if citus {
        // Each table distributed by the company, co-located, with shards on both workers.
        let tables: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT c.relname::text, t.citus_table_type, t.distribution_column
             FROM public.citus_tables t JOIN pg_class c ON c.oid = t.table_name
             WHERE c.relnamespace = 'citus_ads'::regnamespace ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let names: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(names, ["ads", "campaigns", "companies"], "{tables:?}");
        assert!(tables.iter().all(|t| t.1 == "distributed"), "{tables:?}");
        let nodes: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT nodeport) FROM citus_shards
             WHERE table_name = 'citus_ads.campaigns'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(nodes, 2);
    }
    // Other hosts and bad parameters.
    assert_eq!(get("company-99.test.com", "").await.unwrap().status(), 404);
    assert_eq!(
        get("company-1.test.com", "?sort=password")
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(
        get("company-1.test.com", "?limit=0")
            .await
            .unwrap()
            .status(),
        422
    );

    // Loading twice is refused by the keys rather than duplicating rows.
    let out = citus_ads(control.expose())
        .args(["load", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = server.kill();
    let _ = server.wait();
}
