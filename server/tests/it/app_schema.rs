//! An app other than the reference one describes its own tenant data, and the router
//! prepares, moves and purges exactly that: no table of the reference app appears.

use sqlx::migrate::Migrator;
use sqlx::{Connection as _, PgConnection};
use tenant_router::TenantRouter;
use tenant_router::control::ControlDb;
use tenant_router::middleware::CurrentTenant;
use tenant_router::operations::{NewTenantRequest, TenantOps};
use tenant_router::schema::{TenantSchema, TenantTable};
use tenant_router::shared::SharedDb;
use tenant_router::tenant::{DatabaseUrl, Isolation, TenantId};

use crate::harness::{Backend, plain_and_citus, shared_postgres, unique_name};

static ITEMS_SHARED: Migrator = sqlx::migrate!("tests/fixtures/items/shared");
static ITEMS_DEDICATED: Migrator = sqlx::migrate!("tests/fixtures/items/dedicated");
static NO_RLS: Migrator = sqlx::migrate!("tests/fixtures/no_rls");

static ITEMS: [TenantTable; 1] = [TenantTable {
    name: "items",
    columns: &["id", "body"],
    identity: Some("id"),
}];

const HOST: &str = "acme.example.com";

async fn scalar<T>(url: &DatabaseUrl, sql: &'static str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let mut conn = PgConnection::connect_with(&url.connect_options())
        .await
        .unwrap();
    let value = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
    let _ = conn.close().await;
    value
}

/// Writes items as a handler would, through the tenant data path.
async fn write_items(router: &TenantRouter, bodies: &[&str]) -> Vec<i64> {
    router.sync().catch_up().await.unwrap();
    let tenant = CurrentTenant::new(router.registry().resolve(HOST).unwrap());
    let db = tenant.db();
    let mut conn = db.conn().await.unwrap();
    let mut ids = Vec::new();
    for body in bodies {
        ids.push(
            sqlx::query_scalar("INSERT INTO items (tenant_id, body) VALUES ($1, $2) RETURNING id")
                .bind(db.scope())
                .bind(body)
                .fetch_one(&mut *conn)
                .await
                .unwrap(),
        );
    }
    conn.commit().await.unwrap();
    ids
}

plain_and_citus!(an_apps_own_tables_are_prepared_moved_and_purged);
async fn an_apps_own_tables_are_prepared_moved_and_purged(backend: Backend) {
    let url = backend.database("items").await;
    let control = ControlDb::connect_lazy(&url);
    control.migrate().await.unwrap();
    let schema = TenantSchema::new(&ITEMS, &ITEMS_DEDICATED, &ITEMS_SHARED).unwrap();
    let ops = TenantOps::new(control.clone(), url.clone(), schema).with_shared(Some(url.clone()));
    let router = TenantRouter::builder(url.clone())
        .shared_database(url.clone())
        .start()
        .await
        .unwrap();

    let id = TenantId::parse("acme").unwrap();
    ops.create(
        NewTenantRequest {
            id: Some("acme".into()),
            hosts: Some(vec![HOST.into()]),
            isolation: Some("shared".into()),
            ..Default::default()
        }
        .validate()
        .unwrap(),
    )
    .await
    .unwrap();
    // The app's table and the router's directory; nothing of the reference app.
    let (users, items, directory): (bool, bool, bool) = (
        scalar(&url, "SELECT to_regclass('shared.users') IS NOT NULL").await,
        scalar(&url, "SELECT to_regclass('shared.items') IS NOT NULL").await,
        scalar(
            &url,
            "SELECT to_regprocedure('shared.tenant_router_enter(text)') IS NOT NULL",
        )
        .await,
    );
    assert_eq!((users, items, directory), (false, true, true));

    let first = write_items(&router, &["one", "two", "three"]).await;

    let there = ops.move_tenant(&id, Isolation::Dedicated).await.unwrap();
    let copied: Vec<_> = there.copied.iter().map(|c| (c.table, c.rows)).collect();
    assert_eq!(copied, [("items", 3)]);
    let left: i64 = scalar(&url, "SELECT count(*) FROM shared.items").await;
    assert_eq!(left, 0);
    let (tenants, _) = control.load_all().await.unwrap();
    let own = tenants
        .iter()
        .find(|t| t.id == id)
        .unwrap()
        .database
        .clone();
    let moved: Vec<i64> = {
        let mut conn = PgConnection::connect_with(&own.connect_options())
            .await
            .unwrap();
        sqlx::query_scalar("SELECT id FROM items ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(moved, first);
    // New rows there take ids after the copied ones.
    let later = write_items(&router, &["four"]).await;
    assert!(
        later[0] > *first.iter().max().unwrap(),
        "{later:?} after {first:?}"
    );

    let back = ops.move_tenant(&id, Isolation::Shared).await.unwrap();
    let copied: Vec<_> = back.copied.iter().map(|c| (c.table, c.rows)).collect();
    assert_eq!(copied, [("items", 4)]);
    let newest = write_items(&router, &["five"]).await;
    assert!(newest[0] > later[0], "{newest:?} after {later:?}");

    let removal = ops.remove(&id, true).await.unwrap();
    assert!(removal.database_dropped, "{removal:?}");
    let (rows, listed): (i64, i64) = (
        scalar(&url, "SELECT count(*) FROM shared.items").await,
        scalar(&url, "SELECT count(*) FROM shared.tenants").await,
    );
    assert_eq!((rows, listed), (0, 0));
    router.shutdown().await;
}

#[tokio::test]
async fn a_tenant_table_without_row_level_security_is_refused() {
    let url = shared_postgres()
        .await
        .create_database(&unique_name("norls"))
        .await
        .unwrap();
    let schema = TenantSchema::new(&ITEMS, &ITEMS_DEDICATED, &NO_RLS).unwrap();
    let err = SharedDb::connect_lazy(&url)
        .prepare(&schema)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("shared.items has no row-level security"),
        "{err:#}"
    );
}
