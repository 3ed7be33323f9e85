//! Shared isolation on plain PostgreSQL: the schema's keys, row-level security behind the
//! filters, shared tenants through the admin API, and the apex login.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tenant_router::middleware::CurrentTenant;
use tenant_router::shared::SharedDb;
use tenant_router_server::schema::TABLE_NAMES as TENANT_TABLES;

use crate::harness::{Backend, TestApp, plain_and_citus, problem};

plain_and_citus!(every_key_of_a_tenant_table_includes_tenant_id);
async fn every_key_of_a_tenant_table_includes_tenant_id(backend: Backend) {
    let url = backend.database("catalog").await;
    let shared = SharedDb::connect_lazy(&url);
    let first = shared
        .prepare(&tenant_router_server::schema::schema())
        .await
        .unwrap();
    assert_eq!(first.citus, backend == Backend::Citus);
    // Citus: the directory made a reference table, every tenant table distributed.
    let calls = if backend == Backend::Citus {
        1 + TENANT_TABLES.len()
    } else {
        0
    };
    assert_eq!(first.distributed.len(), calls, "{first:?}");
    // Idempotent, and safe to run again.
    let again = shared
        .prepare(&tenant_router_server::schema::schema())
        .await
        .unwrap();
    assert!(again.distributed.is_empty(), "{again:?}");

    let tables: Vec<String> = TENANT_TABLES.iter().map(|t| t.to_string()).collect();
    // Primary keys and unique indexes, with the columns they cover.
    let indexes: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, i.relname::text,
                coalesce(array_agg(a.attname::text) FILTER (WHERE a.attname IS NOT NULL), '{}')
         FROM pg_index x
         JOIN pg_class c ON c.oid = x.indrelid
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (x.indkey)
         WHERE n.nspname = 'shared' AND c.relname = ANY ($1) AND (x.indisunique OR x.indisprimary)
         GROUP BY 1, 2",
    )
    .bind(&tables)
    .fetch_all(shared.pool())
    .await
    .unwrap();
    assert!(indexes.len() >= TENANT_TABLES.len() + 2, "{indexes:?}");
    for (table, index, columns) in &indexes {
        assert!(
            columns.iter().any(|c| c == "tenant_id"),
            "{table}.{index} does not include tenant_id: {columns:?}"
        );
    }
    // Foreign keys: both sides include tenant_id.
    let fks: Vec<(String, String, Vec<String>, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, k.conname::text,
                array(SELECT attname::text FROM pg_attribute WHERE attrelid = k.conrelid AND attnum = ANY (k.conkey)),
                array(SELECT attname::text FROM pg_attribute WHERE attrelid = k.confrelid AND attnum = ANY (k.confkey))
         FROM pg_constraint k
         JOIN pg_class c ON c.oid = k.conrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'shared' AND k.contype = 'f' AND c.relname = ANY ($1)",
    )
    .bind(&tables)
    .fetch_all(shared.pool())
    .await
    .unwrap();
    assert!(fks.len() >= 3, "{fks:?}");
    for (table, fk, from, to) in &fks {
        assert!(
            from.iter().any(|c| c == "tenant_id"),
            "{table}.{fk} does not include tenant_id: {from:?}"
        );
        assert!(
            to.iter().any(|c| c == "tenant_id" || c == "id") && to.len() == from.len(),
            "{table}.{fk}: {to:?}"
        );
    }
    // Every tenant table has row-level security, forced.
    let rls: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'shared' AND c.relname = ANY ($1)",
    )
    .bind(&tables)
    .fetch_all(shared.pool())
    .await
    .unwrap();
    assert_eq!(rls.len(), TENANT_TABLES.len());
    assert!(rls.iter().all(|(_, on, forced)| *on && *forced), "{rls:?}");
}

const T1: &str = "tenant-1.test.com";
const T2: &str = "tenant-2.test.com";

plain_and_citus!(row_level_security_stops_a_query_that_forgets_its_filter);
async fn row_level_security_stops_a_query_that_forgets_its_filter(backend: Backend) {
    let app = TestApp::spawn_shared(backend, &[("tenant-1", T1), ("tenant-2", T2)]).await;
    let one = app.user_token(T1, "uno").await;
    let two = app.user_token(T2, "dos").await;
    app.create_note(T1, &one, "one's").await;
    app.create_note(T2, &two, "two's").await;
    app.create_note(T2, &two, "two's again").await;

    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    assert_eq!(db.scope(), "tenant-1");
    let mut conn = db.conn().await.unwrap();
    // No tenant filter at all: still only tenant 1's rows.
    let contents: Vec<String> = sqlx::query_scalar("SELECT content FROM notes ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(contents, ["one's"]);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(users, 1);
    // Asking for the other tenant by name: nothing.
    let theirs: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE tenant_id = 'tenant-2'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(theirs, 0);
    // Writing a row for the other tenant: refused by the policy.
    let err =
        sqlx::query("INSERT INTO notes (tenant_id, user_id, content) VALUES ('tenant-2', 1, 'x')")
            .execute(&mut *conn)
            .await
            .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(conn);

    // Through the API, the other tenant's data stays out of reach.
    let r = app.get(T2, "/api/notes", Some(&two)).await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["notes"].as_array().unwrap().len(), 2);
    problem(
        app.get(T2, "/api/notes", Some(&one)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn shared_tenants_through_the_admin_api() {
    let app = TestApp::spawn(vec![]).await;
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
    app.create_note("small.example.org", &token, "in the shared schema")
        .await;
    let body: Value = app
        .admin_get("/admin/tenants/small", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["isolation"], "shared");

    // A database of its own contradicts shared; so does moving one with PATCH.
    let body = problem(
        app.admin_send(
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": "odd", "hosts": ["odd.example.org"], "isolation": "shared", "database": "postgres://h/x"})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "database");
    problem(
        app.admin_send(
            Method::PATCH,
            "/admin/tenants/small",
            Some(json!({"database": "postgres://h/x"})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    // The topology says plainly that there is no Citus here.
    let r = app.admin_get("/admin/shards", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let topology: Value = r.json().await.unwrap();
    assert_eq!(topology["citus"], false);
    assert!(
        topology["detail"]
            .as_str()
            .unwrap()
            .contains("not installed")
    );
    // Isolating needs Citus; a dedicated tenant has no shard at all.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tenant-router"))
            .args(args)
            .env("TENANT_ROUTER_DATABASE_URL", app.control_url.expose())
            .env_remove("TENANT_ROUTER_CONFIG")
            .env_remove("TENANT_ROUTER_REDIS_URL")
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    };
    let out = cli(&["tenants", "isolate", "small"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a Citus cluster"));
    let out = cli(&["tenants", "isolate", "nobody"]);
    assert_eq!(out.status.code(), Some(2));

    // Removal with drop_database purges its rows from the shared schema.
    let shared = SharedDb::connect_lazy(&app.control_url);
    let rows = |table: &'static str| {
        let pool = shared.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table} WHERE tenant_id = 'small'"
            )))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(rows("notes").await, 1);
    let r = app
        .admin_send(
            Method::DELETE,
            "/admin/tenants/small?drop_database=true",
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(rows("notes").await, 0);
    assert_eq!(rows("users").await, 0);
    problem(
        app.get("small.example.org", "/api/notes", Some(&token))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

plain_and_citus!(apex_login_finds_the_tenant_and_never_guesses);
async fn apex_login_finds_the_tenant_and_never_guesses(backend: Backend) {
    let app = TestApp::spawn_shared(
        backend,
        &[
            ("acme", "acme.test.com"),
            ("globex", "globex.test.com"),
            ("initech", "initech.test.com"),
        ],
    )
    .await;
    let register =
        |host: &'static str, name: &'static str, email: &'static str, password: &'static str| {
            app.post(
                host,
                "/api/register",
                json!({"username": name, "email": email, "password": password}),
                None,
            )
        };
    assert_eq!(
        register("acme.test.com", "solo", "solo@example.com", "correct horse")
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        register("acme.test.com", "twin", "twin@example.com", "correct horse")
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        register(
            "globex.test.com",
            "twin",
            "Twin@Example.com",
            "correct horse"
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        register(
            "initech.test.com",
            "twin",
            "twin@example.com",
            "another password"
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    let apex = |email: &str, password: &str| {
        app.post(
            "test.com",
            "/api/login",
            json!({"email": email, "password": password}),
            None,
        )
    };

    // A unique email: the tenant, its host, and a token that works there.
    let r = apex("SOLO@example.com", "correct horse").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["host"], "acme.test.com");
    let token = body["token"].as_str().unwrap();
    assert_eq!(
        app.get("acme.test.com", "/api/notes", Some(token))
            .await
            .status(),
        StatusCode::OK
    );
    problem(
        app.get("globex.test.com", "/api/notes", Some(token)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;

    // An email with a NUL, which no database text can hold: refused, not a 500.
    let r = apex("solo\u{0}@example.com", "correct horse").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The same email and password in two tenants: 300 with both, no token, no guess.
    let r = apex("twin@example.com", "correct horse").await;
    assert_eq!(r.status(), StatusCode::MULTIPLE_CHOICES);
    let body: Value = r.json().await.unwrap();
    assert!(body.get("token").is_none());
    let tenants: Vec<&str> = body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(
        tenants,
        ["acme", "globex"],
        "initech's password differs, so it is not listed"
    );
    // The password decides when only one tenant's matches.
    let r = apex("twin@example.com", "another password").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["tenant"], "initech");

    // Unknown email and wrong password: the same 401.
    let unknown = problem(
        apex("nobody@example.com", "correct horse").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let wrong = problem(
        apex("solo@example.com", "wrong password").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(unknown, wrong);
    // The apex host is not a tenant: other routes say so.
    problem(
        app.get("test.com", "/api/notes", None).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(
        app.get("test.com", "/healthz", None).await.status(),
        StatusCode::OK
    );
}

plain_and_citus!(a_tenant_moves_to_dedicated_and_back_under_load_without_losing_a_row);
async fn a_tenant_moves_to_dedicated_and_back_under_load_without_losing_a_row(backend: Backend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let app = Arc::new(TestApp::spawn_shared(backend, &[("tenant-1", T1), ("tenant-2", T2)]).await);
    let one = app.user_token(T1, "mover").await;
    let two = app.user_token(T2, "stayer").await;
    for i in 0..20 {
        app.create_note(T1, &one, &format!("before {i}")).await;
    }
    app.create_note(T2, &two, "two's only").await;

    // A client keeps writing to the moving tenant; a 503 means "retry".
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (app, stop, acknowledged, token) = (
            Arc::clone(&app),
            Arc::clone(&stop),
            Arc::clone(&acknowledged),
            one.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            let mut retries = 0;
            while !stop.load(Ordering::Relaxed) {
                let content = format!("during {n}");
                let r = app
                    .post(T1, "/api/notes", json!({"content": content}), Some(&token))
                    .await;
                match r.status() {
                    StatusCode::CREATED => {
                        acknowledged.lock().unwrap().push(content);
                        n += 1;
                    }
                    StatusCode::SERVICE_UNAVAILABLE => retries += 1,
                    other => panic!("{other}: {}", r.text().await.unwrap()),
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            retries
        })
    };
    // Another registers users: new `users` rows reference the directory row, which on Citus
    // a lock on the coordinator's copy does not guard (the key is checked on the workers).
    let registered = Arc::new(Mutex::new(Vec::<String>::new()));
    let registrar = {
        let (app, stop, registered) =
            (Arc::clone(&app), Arc::clone(&stop), Arc::clone(&registered));
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("reg{n}");
                let r = app
                    .register(T1, &name, &format!("{name}@example.com"))
                    .await;
                match r.status() {
                    StatusCode::CREATED => {
                        registered.lock().unwrap().push(name);
                        n += 1;
                    }
                    StatusCode::SERVICE_UNAVAILABLE => {}
                    other => panic!("{other}: {}", r.text().await.unwrap()),
                }
            }
        })
    };
    let move_to = |to: &'static str| {
        let app = Arc::clone(&app);
        async move {
            let r = app
                .admin_send(
                    Method::POST,
                    "/admin/tenants/tenant-1/move",
                    Some(json!({"to": to})),
                )
                .await;
            assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
            r.json::<Value>().await.unwrap()
        }
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let there = move_to("dedicated").await;
    assert_eq!(there["from"], "shared");
    let copied_notes = there["copied"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["table"] == "notes")
        .unwrap()["rows"]
        .as_i64()
        .unwrap();
    assert!(copied_notes >= 20, "{there}");
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let back = move_to("shared").await;
    assert_eq!(back["to"], "shared");
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    registrar.await.unwrap();
    // Every acknowledged registration survived both moves.
    let registered = registered.lock().unwrap().clone();
    assert!(!registered.is_empty(), "the registrar got through");
    for name in &registered {
        let r = app
            .login(T1, &format!("{name}@example.com"), "correct horse")
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{name} was lost in a move");
    }

    // Every note written before or acknowledged during the moves is there; nothing else.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = app
            .get(
                T1,
                &format!("/api/notes?limit=100&cursor={cursor}"),
                Some(&one),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.unwrap();
        seen.extend(
            page["notes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["content"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty(), "the writer got through");
    for expected in (0..20)
        .map(|i| format!("before {i}"))
        .chain(acknowledged.iter().cloned())
    {
        assert!(seen.contains(&expected), "lost: {expected}");
    }
    assert_eq!(
        seen.len(),
        20 + acknowledged.len(),
        "nothing twice, nothing foreign"
    );
    assert!(!seen.iter().any(|c| c.contains("two's")));
    // The other tenant never noticed.
    let r = app.get(T2, "/api/notes", Some(&two)).await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["notes"][0]["content"], "two's only");
    let tenant: Value = app
        .admin_get("/admin/tenants/tenant-1", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tenant["isolation"], "shared");
    // Back in the shared schema, its rows are distributed again (on Citus: in the shard of
    // a worker).
    if backend == Backend::Citus {
        let shared = SharedDb::connect_lazy(&app.control_url);
        for table in TENANT_TABLES {
            let kind: String = sqlx::query_scalar(
                "SELECT citus_table_type FROM public.citus_tables WHERE table_name = $1::regclass",
            )
            .bind(table)
            .fetch_one(shared.pool())
            .await
            .unwrap();
            assert_eq!(kind, "distributed", "{table}");
        }
        let (port, rows) =
            crate::citus::rows_on_worker(&app.control_url, "notes", "tenant-1").await;
        assert_eq!(
            rows as usize,
            seen.len(),
            "tenant-1's notes on the worker at {port}"
        );
    }
    // The dedicated database it lived in meanwhile was the router's: it is gone, so an
    // instance that missed the move finds no database (and catches up), not an empty one.
    let pg = backend.server().await;
    let err = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pg.url("tenant_tenant_1").connect_options())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}
