//! Shared mode on a real Citus cluster (a coordinator and two workers): what the tables are,
//! where a tenant's rows physically are, the upgrade of a database an earlier version left
//! undistributed, tenant isolation and the topology report. Skipped, saying so, without
//! Citus (see `harness::citus_cluster`). The reference app's suite, row-level security, the
//! apex login and moves run here too, through `both!` and `plain_and_citus!`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};
use tenant_router::control::ControlDb;
use tenant_router::shared::SharedDb;
use tenant_router::tenant::DatabaseUrl;
use tenant_router_server::schema::{SHARED_MIGRATOR, TABLE_NAMES as TENANT_TABLES};

use crate::harness::{TestApp, citus_cluster, citus_database, shared_spec};

const T1: &str = "tenant-1.test.com";
const T2: &str = "tenant-2.test.com";

/// Where tenant `tenant`'s rows of shared table `table` are: the port of the worker that
/// holds its shard, and how many rows of the tenant that shard has, read on the worker
/// itself (not through the coordinator).
pub async fn rows_on_worker(db: &DatabaseUrl, table: &str, tenant: &str) -> (u16, i64) {
    let shared = SharedDb::connect_lazy(db);
    let (shard, port, database): (i64, i32, String) = sqlx::query_as(
        "SELECT s.shardid, n.nodeport, current_database()::text
         FROM pg_dist_shard s
         JOIN pg_dist_placement p USING (shardid)
         JOIN pg_dist_node n USING (groupid)
         WHERE s.shardid = get_shard_id_for_distribution_column($1::regclass, $2)",
    )
    .bind(format!("shared.{table}"))
    .bind(tenant)
    .fetch_one(shared.pool())
    .await
    .unwrap();
    let citus = citus_cluster().await.unwrap();
    let worker = citus
        .workers()
        .iter()
        .find(|w| i32::from(w.port()) == port)
        .unwrap_or_else(|| panic!("{table} of {tenant}: shard {shard} is not on a worker"));
    let mut conn = PgConnection::connect_with(&worker.url(&database).connect_options())
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM shared.{table}_{shard} WHERE tenant_id = $1"
    )))
    .bind(tenant)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    (worker.port(), rows)
}

/// Runs the `tenant-router` CLI over database `db` and asserts that it succeeded.
fn tenant_router_ok(db: &DatabaseUrl, args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-router"))
        .args(args)
        .env("TENANT_ROUTER_DATABASE_URL", db.expose())
        .env_remove("TENANT_ROUTER_CONFIG")
        .env_remove("TENANT_ROUTER_REDIS_URL")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tenant-router {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `(table, citus_table_type, distribution_column, colocation_id)` of the shared schema.
async fn citus_tables(db: &DatabaseUrl) -> Vec<(String, String, String, i32)> {
    sqlx::query_as(
        "SELECT table_name::text, citus_table_type, distribution_column, colocation_id
         FROM public.citus_tables
         WHERE table_name = ANY (SELECT format('shared.%I', t)::regclass FROM unnest($1::text[]) t)
            OR table_name = 'shared.tenants'::regclass
         ORDER BY 1",
    )
    .bind(TENANT_TABLES)
    .fetch_all(SharedDb::connect_lazy(db).pool())
    .await
    .unwrap()
}

fn assert_distributed(tables: &[(String, String, String, i32)]) {
    let tenants = tables.iter().find(|t| t.0 == "tenants").expect("tenants");
    assert_eq!(tenants.1, "reference", "{tables:?}");
    let group = tables.iter().find(|t| t.0 == "users").expect("users").3;
    for table in TENANT_TABLES {
        let t = tables
            .iter()
            .find(|t| t.0 == *table)
            .unwrap_or_else(|| panic!("{table} is not in citus_tables: {tables:?}"));
        assert_eq!(
            (t.1.as_str(), t.2.as_str(), t.3),
            ("distributed", "tenant_id", group),
            "{table}: {tables:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_table_is_distributed_and_a_tenants_rows_sit_on_a_worker() {
    let Some(app) = TestApp::with_citus_demo_tenants().await else {
        return;
    };
    assert_distributed(&citus_tables(&app.control_url).await);
    // Shards of every tenant table on both workers.
    let ports: Vec<i32> = sqlx::query_scalar(
        "SELECT DISTINCT nodeport FROM citus_shards WHERE table_name = 'shared.notes'::regclass
         ORDER BY 1",
    )
    .fetch_all(SharedDb::connect_lazy(&app.control_url).pool())
    .await
    .unwrap();
    let mut workers: Vec<i32> = citus_cluster()
        .await
        .unwrap()
        .workers()
        .iter()
        .map(|w| i32::from(w.port()))
        .collect();
    workers.sort();
    assert_eq!(ports, workers);

    let one = app.user_token(T1, "uno").await;
    let two = app.user_token(T2, "dos").await;
    for i in 0..3 {
        app.create_note(T1, &one, &format!("one {i}")).await;
    }
    app.create_note(T2, &two, "two").await;
    for (tenant, notes) in [("tenant-1", 3), ("tenant-2", 1)] {
        let (_, rows) = rows_on_worker(&app.control_url, "notes", tenant).await;
        assert_eq!(rows, notes, "{tenant}");
        let (_, users) = rows_on_worker(&app.control_url, "users", tenant).await;
        assert_eq!(users, 1, "{tenant}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_database_the_previous_version_left_local_is_distributed_by_migrate() {
    let Some(url) = citus_database("upgrade").await else {
        return;
    };
    // What the previous version made: migration 0001 (identity ids, foreign keys to the
    // directory), then `create_reference_table('tenants')`, which turned every tenant
    // table into a Citus local table, and nothing more.
    let shared = SharedDb::connect_lazy(&url);
    sqlx::query("CREATE SCHEMA shared")
        .execute(shared.pool())
        .await
        .unwrap();
    SHARED_MIGRATOR.run_to(1, shared.pool()).await.unwrap();
    sqlx::query("SELECT create_reference_table('tenants')")
        .execute(shared.pool())
        .await
        .unwrap();
    let before = citus_tables(&url).await;
    assert!(
        before
            .iter()
            .filter(|t| t.0 != "tenants")
            .all(|t| t.1 == "local"),
        "{before:?}"
    );
    sqlx::raw_sql(
        "INSERT INTO tenants (id) VALUES ('old');
         INSERT INTO users (tenant_id, username, email, password_hash)
           SELECT 'old', 'u' || i, 'u' || i || '@example.com', 'x' FROM generate_series(1, 5) i;
         INSERT INTO notes (tenant_id, user_id, content)
           SELECT 'old', 1 + i % 5, 'note ' || i FROM generate_series(1, 40) i;
         INSERT INTO sessions (tenant_id, token_hash, user_id, expires_at)
           VALUES ('old', '\\x01', 1, now() + interval '1 day');
         INSERT INTO job_runs (tenant_id, job_id, kind) VALUES ('old', 'j1', 'k')",
    )
    .execute(shared.pool())
    .await
    .unwrap();
    let control = ControlDb::connect_lazy(&url);
    control.migrate().await.unwrap();
    control
        .upsert(&shared_spec("old", &["old.test.com"], url.clone()))
        .await
        .unwrap();

    // `migrate`, as a user upgrading would run it.
    tenant_router_ok(&url, &["migrate"]);
    assert_distributed(&citus_tables(&url).await);
    // Nothing lost, every row where its tenant's shard is, keys back in place.
    for (table, rows) in [
        ("users", 5),
        ("notes", 40),
        ("sessions", 1),
        ("job_runs", 1),
    ] {
        assert_eq!(rows_on_worker(&url, table, "old").await.1, rows, "{table}");
    }
    let keys: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint
         WHERE contype = 'f' AND conrelid = ANY ('{users,sessions,notes,job_runs}'::regclass[])",
    )
    .fetch_one(shared.pool())
    .await
    .unwrap();
    assert_eq!(keys, 4);
    // And no copy of the old rows is left behind on the coordinator's disk.
    for table in TENANT_TABLES.iter().chain(&["tenants"]) {
        let bytes: i64 =
            sqlx::query_scalar("SELECT pg_relation_size(format('shared.%I', $1::text)::regclass)")
                .bind(table)
                .fetch_one(shared.pool())
                .await
                .unwrap();
        assert_eq!(
            bytes, 0,
            "{table}: the undistributed rows are still on disk"
        );
    }
    // New ids go on after the old ones, and the app works on the upgraded tables.
    let app = TestApp::spawn_shared_on(url.clone(), &[("old", "old.test.com")]).await;
    let r = app
        .register("old.test.com", "newcomer", "newcomer@example.com")
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let me: Value = r.json().await.unwrap();
    assert!(me["id"].as_i64().unwrap() > 5, "{me}");
    let r = app
        .login("old.test.com", "newcomer@example.com", "correct horse")
        .await;
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let note = app.create_note("old.test.com", &token, "after").await;
    assert!(note["id"].as_i64().unwrap() > 40, "{note}");
    assert_eq!(rows_on_worker(&url, "notes", "old").await.1, 41);
    // A second run changes nothing.
    assert!(
        shared
            .prepare(&tenant_router_server::schema::schema())
            .await
            .unwrap()
            .distributed
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_tenant_has_a_shard_of_its_own_in_every_table_and_keeps_serving() {
    let Some(app) = TestApp::with_citus_demo_tenants().await else {
        return;
    };
    let one = app.user_token(T1, "uno").await;
    let two = app.user_token(T2, "dos").await;
    app.create_note(T1, &one, "before").await;
    app.create_note(T2, &two, "two's").await;

    tenant_router_ok(&app.control_url, &["tenants", "isolate", "tenant-1"]);
    let shared = SharedDb::connect_lazy(&app.control_url);
    for table in TENANT_TABLES {
        let (min, max): (String, String) = sqlx::query_as(
            "SELECT shardminvalue, shardmaxvalue FROM pg_dist_shard
             WHERE shardid = get_shard_id_for_distribution_column($1::regclass, 'tenant-1')",
        )
        .bind(format!("shared.{table}"))
        .fetch_one(shared.pool())
        .await
        .unwrap();
        assert_eq!(
            min, max,
            "{table}: tenant-1's shard covers more than one hash"
        );
        // Tenant 2 shares no shard with it.
        let apart: bool = sqlx::query_scalar(
            "SELECT get_shard_id_for_distribution_column($1::regclass, 'tenant-1')
                 <> get_shard_id_for_distribution_column($1::regclass, 'tenant-2')",
        )
        .bind(format!("shared.{table}"))
        .fetch_one(shared.pool())
        .await
        .unwrap();
        assert!(apart, "{table}");
    }
    assert_distributed(&citus_tables(&app.control_url).await);
    // Both keep serving, each its own rows.
    app.create_note(T1, &one, "after").await;
    let page: Value = app
        .get(T1, "/api/notes", Some(&one))
        .await
        .json()
        .await
        .unwrap();
    let contents: Vec<&str> = page["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["after", "before"]);
    assert_eq!(
        rows_on_worker(&app.control_url, "notes", "tenant-1")
            .await
            .1,
        2
    );
    let page: Value = app
        .get(T2, "/api/notes", Some(&two))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["notes"][0]["content"], "two's");
    assert_eq!(page["notes"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shards_shows_nodes_tables_placements_and_tenant_statistics() {
    let Some(app) = TestApp::with_citus_demo_tenants().await else {
        return;
    };
    let token = app.user_token(T1, "uno").await;
    for i in 0..5 {
        app.create_note(T1, &token, &format!("n{i}")).await;
        assert_eq!(
            app.get(T1, "/api/notes", Some(&token)).await.status(),
            StatusCode::OK
        );
    }
    let r = app.admin_get("/admin/shards", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let topology: Value = r.json().await.unwrap();
    assert_eq!(topology["citus"], true, "{topology}");
    let citus = citus_cluster().await.unwrap();
    let node_ports: Vec<i64> = topology["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("nodes: {topology}"))
        .iter()
        .map(|n| n["nodeport"].as_i64().unwrap())
        .collect();
    for w in citus.workers() {
        assert!(node_ports.contains(&i64::from(w.port())), "{topology}");
    }
    let tables = topology["tables"].as_array().unwrap();
    for table in TENANT_TABLES {
        let t = tables
            .iter()
            .find(|t| t["table_name"] == *table)
            .unwrap_or_else(|| panic!("{table} missing: {topology}"));
        assert_eq!(t["citus_table_type"], "distributed");
        assert_eq!(t["distribution_column"], "tenant_id");
    }
    let placed: Vec<i64> = topology["placements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["table_name"] == "notes")
        .map(|p| p["nodeport"].as_i64().unwrap())
        .collect();
    for w in citus.workers() {
        assert!(placed.contains(&i64::from(w.port())), "{topology}");
    }
    let tenants = topology["tenants"].as_array().unwrap_or_else(|| {
        panic!("citus_stat_tenants: {topology}");
    });
    assert!(
        tenants.iter().any(|t| t["tenant_attribute"] == "tenant-1"),
        "{topology}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_tenants_made_through_the_admin_api_land_on_the_cluster() {
    let Some(url) = citus_database("adminapi").await else {
        return;
    };
    let app = TestApp::spawn_shared_on(url.clone(), &[]).await;
    let r = app
        .admin_send(
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": "small", "hosts": ["small.example.org"], "isolation": "shared"})),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let token = app.user_token("small.example.org", "smallfry").await;
    app.create_note("small.example.org", &token, "on a worker")
        .await;
    assert_eq!(rows_on_worker(&url, "notes", "small").await.1, 1);
    // Removal with drop_database purges its rows from the workers.
    let r = app
        .admin_send(
            Method::DELETE,
            "/admin/tenants/small?drop_database=true",
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    for table in TENANT_TABLES {
        assert_eq!(rows_on_worker(&url, table, "small").await.1, 0, "{table}");
    }
    let directory: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants WHERE id = 'small'")
        .fetch_one(SharedDb::connect_lazy(&url).pool())
        .await
        .unwrap();
    assert_eq!(directory, 0);
}
