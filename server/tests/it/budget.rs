//! The global connection budget: held under load over many tenants, and never at the
//! expense of a query that is running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;
use tenant_router::pool::{Budget, TenantPool};
use tenant_router::tenant::DatabaseUrl;

use crate::harness::{TestApp, shared_postgres, spec, tenant_database};

/// Samples the tenant connections PostgreSQL sees, every few milliseconds, keeping the max.
fn sample_connections(dbs: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let pg = shared_postgres().await;
        let watcher = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(pg.url("postgres").connect_options())
            .await
            .unwrap();
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name LIKE 'tenant-router/%' AND datname = ANY ($1)",
            )
            .bind(&dbs)
            .fetch_one(&watcher)
            .await
            .unwrap();
            max = max.max(n);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        max
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tenants_never_hold_more_than_the_budget() {
    let pg = shared_postgres().await;
    let mut dbs: Vec<DatabaseUrl> = Vec::new();
    for i in 0..4 {
        dbs.push(tenant_database(pg, &format!("budget{i}")).await);
    }
    // 200 tenants over 4 databases: 200 pools, each wanting connections of its own.
    let specs = (0..200)
        .map(|i| {
            spec(
                &format!("b-{i}"),
                &[&format!("b-{i}.example.org")],
                dbs[i % 4].clone(),
            )
        })
        .collect();
    let app = Arc::new(
        TestApp::spawn_with(specs, |s| {
            s.max_total_connections = 20;
            s.acquire_timeout = Duration::from_secs(3);
        })
        .await,
    );
    // One user per database; a token is valid for every tenant on its database.
    let mut tokens = Vec::new();
    for i in 0..4 {
        tokens.push(
            app.user_token(&format!("b-{i}.example.org"), "budgeteer")
                .await,
        );
    }
    let names: Vec<String> = dbs.iter().map(|d| d.database_name().unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_connections(names, Arc::clone(&stop));

    // 48 clients at once, 1,200 requests spread over all 200 tenants.
    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..1200usize)
        .map(|n| {
            let app = Arc::clone(&app);
            let token = tokens[(n * 7 % 200) % 4].clone();
            async move {
                let tenant = n * 7 % 200;
                let r = tokio::time::timeout(
                    Duration::from_secs(20),
                    app.get(
                        &format!("b-{tenant}.example.org"),
                        "/api/notes",
                        Some(&token),
                    ),
                )
                .await
                .expect("a request hung");
                let status = r.status();
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    assert!(r.headers().contains_key("retry-after"));
                    let body: Value = r.json().await.unwrap();
                    assert_eq!(body["status"], 503);
                }
                status
            }
        })
        .buffer_unordered(48)
        .collect()
        .await;
    stop.store(true, Ordering::Relaxed);
    let max_seen = sampler.await.unwrap();

    assert!(
        max_seen <= 20,
        "PostgreSQL saw {max_seen} tenant connections"
    );
    assert!(max_seen >= 10, "the load did use the budget ({max_seen})");
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(
        ok + refused,
        statuses.len(),
        "only 200 or the documented 503"
    );
    assert!(
        ok > statuses.len() / 2,
        "{ok} of {} succeeded",
        statuses.len()
    );
    let stats = app.registry.budget().stats();
    assert!(stats.evictions_total > 0, "{stats:?}");
    assert!(stats.open <= 20, "{stats:?}");
    assert_eq!(
        stats.refusals_total as usize, refused,
        "every refusal is counted"
    );

    // The same figures from outside: the admin API and Prometheus.
    let pools: Value = app
        .admin_get("/admin/pools", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pools["max_total_connections"], 20);
    assert!(pools["evictions_total"].as_u64().unwrap() > 0);
    assert_eq!(pools["refusals_total"].as_u64().unwrap() as usize, refused);
    let top = pools["top"].as_array().unwrap();
    assert!(!top.is_empty() && top.len() <= 20, "{pools}");
    let r = app.admin_get("/metrics", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("tenant_router_connections_budget 20"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE tenant_router_pool_evictions_total counter"),
        "{text}"
    );
    assert!(text.contains("tenant_router_tenants 200"), "{text}");
    let per_tenant = text
        .lines()
        .filter(|l| l.starts_with("tenant_router_tenant_connections_open{"))
        .count();
    assert!(per_tenant <= 20, "bounded labels: {per_tenant}");
    assert_eq!(
        app.admin_get("/metrics", Some("")).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Idle pools are reaped: with a 1 s idle timeout they would be; here, at least, no
    // connection is left in use.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.registry.budget().stats().in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_query_keeps_its_connection_under_pressure() {
    let pg = shared_postgres().await;
    let db = tenant_database(pg, "busy").await;
    let app = Arc::new(
        TestApp::spawn_with(
            vec![
                spec("busy", &["busy.example.org"], db.clone()),
                spec("other-a", &["other-a.example.org"], db.clone()),
                spec("other-b", &["other-b.example.org"], db.clone()),
            ],
            |s| {
                s.max_total_connections = 2;
                s.acquire_timeout = Duration::from_secs(3);
            },
        )
        .await,
    );
    let token = app.user_token("other-a.example.org", "presser").await;

    // The busy tenant runs a long query on one of the two connections.
    let busy = app.registry.resolve("busy.example.org").unwrap();
    let pool = Arc::clone(busy.pool());
    let pid_before = Arc::new(AtomicI64::new(0));
    let long = {
        let pid_before = Arc::clone(&pid_before);
        tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            pid_before.store(pid as i64, Ordering::Relaxed);
            sqlx::query("SELECT pg_sleep(1.5)")
                .execute(&mut *conn)
                .await
                .expect("the running query was cut off");
            let after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            after as i64
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The two other tenants fight over the one connection left, evicting each other.
    for n in 0..40 {
        let host = if n % 2 == 0 {
            "other-a.example.org"
        } else {
            "other-b.example.org"
        };
        let r = app.get(host, "/api/notes", Some(&token)).await;
        assert!(
            r.status() == StatusCode::OK || r.status() == StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            r.status()
        );
    }
    let pid_after = long.await.unwrap();
    assert_eq!(
        pid_after,
        pid_before.load(Ordering::Relaxed),
        "same backend, never evicted"
    );
    let stats = app.registry.budget().stats();
    assert!(stats.evictions_total > 0, "there was pressure: {stats:?}");
    assert!(stats.open <= 2, "{stats:?}");
}

/// Pools on one tenant database under `budget`, each with room for 5 connections.
async fn pools(
    budget: &Arc<Budget>,
    labels: &[&str],
    acquire_timeout: Duration,
) -> Vec<Arc<TenantPool>> {
    let db = tenant_database(shared_postgres().await, "pools").await;
    labels
        .iter()
        .map(|label| {
            TenantPool::new(
                label,
                budget,
                db.connect_options(),
                5,
                Duration::from_secs(300),
                acquire_timeout,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_set_within_the_budget_stops_churning() {
    // Four busy tenants and six connections: every pool keeps one connection and grows only
    // into free permits, so nobody evicts anybody (growing by evicting, the pools would
    // take each other's last connection and reconnect for ever).
    let budget = Budget::with_cold_after(6, Duration::from_secs(3600));
    let pools = pools(
        &budget,
        &["w-a", "w-b", "w-c", "w-d"],
        Duration::from_secs(10),
    )
    .await;
    for pool in &pools {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
    }
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let pools = pools.clone();
            tokio::spawn(async move {
                for i in 0..150 {
                    let mut conn = pools[(task + i) % 4].acquire().await.unwrap();
                    sqlx::query("SELECT pg_sleep(0.001)")
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = budget.stats();
    assert!(stats.waits_total > 0, "there was pressure: {stats:?}");
    assert_eq!(stats.evictions_total, 0, "{stats:?}");
    assert!(stats.opened_total <= 6, "{stats:?}");
    for pool in &pools {
        assert!(pool.stats().open >= 1, "{:?}", pool.stats());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_pool_without_connections_evicts_a_warm_one() {
    // Budget 2: A holds one connection in use, B one idle for a moment.
    let budget = Budget::with_cold_after(2, Duration::from_secs(3600));
    let p = pools(&budget, &["g-a", "g-b", "g-c"], Duration::from_millis(300)).await;
    let (a, b, c) = (&p[0], &p[1], &p[2]);
    drop(b.acquire().await.unwrap());
    let held = a.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // B's connection is back, idle

    // A wants a second connection: B's is warm, so A waits for its own and gives up.
    let err = a
        .acquire()
        .await
        .err()
        .expect("A must not take B's warm connection");
    assert!(matches!(err, sqlx::Error::PoolTimedOut), "{err}");
    assert_eq!(b.stats().open, 1, "{:?}", b.stats());
    assert_eq!(budget.stats().evictions_total, 0);
    assert_eq!(budget.stats().refusals_total, 1);

    // C has no connection at all: it may close B's, warm or not.
    let mut conn = c.acquire().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
    assert_eq!(b.stats().open, 0, "{:?}", b.stats());
    assert_eq!(budget.stats().evictions_total, 1);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_grows_into_a_cold_connection() {
    // B's idle connection is cold when A asks; or it turns cold while A waits, with nothing
    // else happening meanwhile (no connection returns, no permit comes back).
    for (case, asks_after) in [("cold", 300), ("turns-cold", 20)] {
        let budget = Budget::with_cold_after(2, Duration::from_millis(200));
        let p = pools(
            &budget,
            &[&format!("{case}-a"), &format!("{case}-b")],
            Duration::from_secs(3),
        )
        .await;
        let (a, b) = (&p[0], &p[1]);
        let held = a.acquire().await.unwrap();
        drop(b.acquire().await.unwrap());
        tokio::time::sleep(Duration::from_millis(asks_after)).await;
        let mut second = a
            .acquire()
            .await
            .unwrap_or_else(|e| panic!("{case}: A grows into B's cold connection: {e}"));
        sqlx::query("SELECT 1").execute(&mut *second).await.unwrap();
        assert_eq!((a.stats().open, b.stats().open), (2, 0), "{case}");
        let stats = budget.stats();
        assert_eq!(
            (stats.evictions_total, stats.refusals_total),
            (1, 0),
            "{case}"
        );
        drop(held);
    }
}
