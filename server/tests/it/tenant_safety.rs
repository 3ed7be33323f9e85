//! What an attacker review of the library split found, kept as tests: a handler's own sqlx
//! transactions stay inside the tenant's, a failed transaction cannot be committed, nothing
//! of a session reaches the next tenant on a pooled connection, and a schema description
//! that does not match the database stops moves and purges before they lose or leave data.

use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::{Connection as _, PgConnection};
use tenant_router::TenantRouter;
use tenant_router::control::ControlDb;
use tenant_router::middleware::CurrentTenant;
use tenant_router::operations::{NewTenantRequest, TenantOps};
use tenant_router::schema::{TenantSchema, TenantTable};
use tenant_router::tenant::{DatabaseUrl, Isolation, TenantId};
use tenant_router::testing::TestKit;

use crate::harness::{shared_postgres, unique_name};

// ---------------------------------------------------------------------------------------
// A tiny app of our own: one tenant table `items`, described to the router as the README
// says (`TenantSchema`), with migrations made at run time.
// ---------------------------------------------------------------------------------------

const SHARED_ITEMS: &str = "
CREATE TABLE items (
    tenant_id text NOT NULL,
    id        bigint NOT NULL,
    body      text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE SEQUENCE items_id_seq AS bigint;
ALTER TABLE items ALTER COLUMN id SET DEFAULT nextval('items_id_seq');
GRANT SELECT, INSERT, UPDATE, DELETE ON items TO tenant_router_app;
GRANT USAGE ON SEQUENCE items_id_seq TO tenant_router_app;
ALTER TABLE items ENABLE ROW LEVEL SECURITY;
ALTER TABLE items FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON items TO tenant_router_app
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
";

const DEDICATED_ITEMS: &str = "
CREATE TABLE items (
    tenant_id text NOT NULL DEFAULT '',
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body      text NOT NULL
);
";

/// A migrator over `files` (name, SQL), kept for the rest of the process.
async fn migrator(files: &[(&str, &str)]) -> &'static Migrator {
    let dir = tempfile::tempdir().unwrap().keep();
    for (name, sql) in files {
        std::fs::write(dir.join(name), sql).unwrap();
    }
    Box::leak(Box::new(Migrator::new(dir).await.unwrap()))
}

static ITEMS: [TenantTable; 1] = [TenantTable {
    name: "items",
    columns: &["id", "body"],
    identity: Some("id"),
}];

async fn items_schema() -> TenantSchema {
    TenantSchema::new(
        &ITEMS,
        migrator(&[("0001_items.sql", DEDICATED_ITEMS)]).await,
        migrator(&[("0001_items.sql", SHARED_ITEMS)]).await,
    )
    .unwrap()
}

async fn superuser(url: &DatabaseUrl) -> PgConnection {
    let options = url
        .connect_options()
        .options([("search_path", "shared,public")]);
    PgConnection::connect_with(&options).await.unwrap()
}

fn tenant(router: &TenantRouter, host: &str) -> CurrentTenant {
    CurrentTenant::new(router.registry().resolve(host).unwrap())
}

// ---------------------------------------------------------------------------------------
// Found in review, and fixed: before the fix, `TenantDb::conn()` opened its transaction with a raw `BEGIN` that sqlx does not
// know about (its transaction depth stays 0). A handler that uses sqlx's own transaction API
// on the tenant connection (`conn.begin()`, as every sqlx user does for "these statements
// together") gets a plain BEGIN instead of a SAVEPOINT: its `rollback()` rolls back the
// WHOLE tenant transaction, including what the handler wrote before, and the later
// `TenantConn::commit()` still answers Ok. The writes are gone, with no warning.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_nested_rollback_keeps_the_writes_before_it() {
    let kit = TestKit::builder(items_schema().await)
        .start()
        .await
        .unwrap();
    kit.dedicated_tenant("nest-d", &["d.nest.test"])
        .await
        .unwrap();
    kit.shared_tenant("nest-s", &["s.nest.test"]).await.unwrap();
    let router = kit.router().await.unwrap();

    let mut lost = Vec::new();
    for host in ["d.nest.test", "s.nest.test"] {
        let t = tenant(&router, host);
        let db = t.db();
        let mut conn = db.conn().await.unwrap();
        // The order itself.
        sqlx::query("INSERT INTO items (tenant_id, body) VALUES ($1, 'order #1')")
            .bind(db.scope())
            .execute(&mut *conn)
            .await
            .unwrap();
        // An optional extra, tried in a (what sqlx makes a) nested transaction and given up.
        {
            let mut extra = (*conn).begin().await.unwrap();
            sqlx::query("INSERT INTO items (tenant_id, body) VALUES ($1, 'gift wrap')")
                .bind(db.scope())
                .execute(&mut *extra)
                .await
                .unwrap();
            extra.rollback().await.unwrap();
        }
        conn.commit().await.expect("commit says the order is kept");

        let mut check = db.conn().await.unwrap();
        let bodies: Vec<String> =
            sqlx::query_scalar("SELECT body FROM items WHERE tenant_id = $1 ORDER BY id")
                .bind(db.scope())
                .fetch_all(&mut *check)
                .await
                .unwrap();
        if bodies != ["order #1"] {
            lost.push(format!("{host}: committed, but stored {bodies:?}"));
        }
    }
    assert!(
        lost.is_empty(),
        "writes acknowledged by commit() were lost: {lost:?}"
    );
}

// Same root cause, shared tenant: a nested sqlx `commit()` commits the tenant transaction
// early. Everything the handler runs afterwards on its `TenantConn` runs outside it: not as
// tenant_router_app, without app.tenant_id, without the tenant's lock or the moved_out check
// (autocommitted as the pool's login role, which row-level security does not bind when it is
// a superuser, as in this kit and the demo). A query that names another tenant's rows then
// writes them.
#[tokio::test]
async fn a_nested_commit_stays_in_the_shared_tenants_scope() {
    let kit = TestKit::builder(items_schema().await)
        .start()
        .await
        .unwrap();
    kit.shared_tenant("esc-a", &["a.esc.test"]).await.unwrap();
    kit.shared_tenant("esc-b", &["b.esc.test"]).await.unwrap();
    let router = kit.router().await.unwrap();

    let t = tenant(&router, "a.esc.test");
    let db = t.db();
    let mut conn = db.conn().await.unwrap();
    {
        let mut tx = (*conn).begin().await.unwrap();
        sqlx::query("INSERT INTO items (tenant_id, body) VALUES ($1, 'mine')")
            .bind(db.scope())
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let (role, scope): (String, Option<String>) =
        sqlx::query_as("SELECT current_user::text, current_setting('app.tenant_id', true)")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    // A bug in the handler (a wrong id) that row-level security is there to stop.
    let crossed = sqlx::query("INSERT INTO items (tenant_id, body) VALUES ('esc-b', 'planted')")
        .execute(&mut *conn)
        .await;
    let _ = conn.commit().await;
    let mut su = superuser(kit.control_url()).await;
    let planted: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE tenant_id = 'esc-b'")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert!(
        role == "tenant_router_app" && scope.as_deref() == Some("esc-a") && planted == 0,
        "after a nested sqlx commit tenant esc-a's connection runs as {role:?} with \
         app.tenant_id {scope:?}; its insert into tenant esc-b: {crossed:?}; esc-b now has \
         {planted} row(s) it never wrote"
    );
}

// ---------------------------------------------------------------------------------------
// Found in review, and fixed: before the fix, a connection of the shared pool goes from one shared tenant to the next with its
// session state: the release only rolls back (or pings). A temporary table a handler made
// (ON COMMIT PRESERVE ROWS, the default) is still there, unprotected by row-level security,
// when the next tenant's transaction runs on that connection; and it comes first in the
// search path, so a temp table named like a tenant table shadows it.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_tenants_temp_table_never_reaches_the_next_tenant() {
    let kit = TestKit::builder(items_schema().await)
        .start()
        .await
        .unwrap();
    kit.shared_tenant("tmp-a", &["a.tmp.test"]).await.unwrap();
    kit.shared_tenant("tmp-b", &["b.tmp.test"]).await.unwrap();
    // One connection, so the two tenants meet on it (what happens anyway under load).
    let router = kit
        .router_with(|b| b.max_total_connections(1))
        .await
        .unwrap();

    // The same import handler, for tenant A then tenant B: stage rows in a scratch table.
    async fn import(router: &TenantRouter, host: &str, rows: &[&str]) -> Vec<String> {
        let t = tenant(router, host);
        let db = t.db();
        let mut conn = db.conn().await.unwrap();
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS staging (body text)")
            .execute(&mut *conn)
            .await
            .unwrap();
        for row in rows {
            sqlx::query("INSERT INTO staging VALUES ($1)")
                .bind(row)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        let staged: Vec<String> = sqlx::query_scalar("SELECT body FROM staging")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO items (tenant_id, body) SELECT $1, body FROM staging")
            .bind(db.scope())
            .execute(&mut *conn)
            .await
            .unwrap();
        conn.commit().await.unwrap();
        staged
    }
    import(&router, "a.tmp.test", &["A's secret"]).await;
    let seen_by_b = import(&router, "b.tmp.test", &["B's row"]).await;
    let mut su = superuser(kit.control_url()).await;
    let in_b: Vec<String> =
        sqlx::query_scalar("SELECT body FROM items WHERE tenant_id = 'tmp-b' ORDER BY id")
            .fetch_all(&mut su)
            .await
            .unwrap();
    assert!(
        !seen_by_b.iter().any(|r| r.contains("A's")) && in_b == ["B's row"],
        "tenant B's transaction saw {seen_by_b:?} and stored {in_b:?}: tenant A's session \
         state crossed over on the shared pool"
    );
}

// ---------------------------------------------------------------------------------------
// Found in review, and fixed: before the fix, moves copy only the columns the TenantSchema lists, compare row counts only,
// and then delete the source. A column the app's migrations have and the description
// forgot (a later migration's new column, the usual way schemas grow) is silently dropped
// by a move: the move reports success and the data is gone from both places.
// ---------------------------------------------------------------------------------------

static ITEMS_STALE: [TenantTable; 1] = [TenantTable {
    name: "items",
    columns: &["id", "body"],
    identity: Some("id"),
}];

#[tokio::test]
async fn a_move_refuses_a_column_the_schema_does_not_list() {
    let url = shared_postgres()
        .await
        .create_database(&unique_name("a14col"))
        .await
        .unwrap();
    let control = ControlDb::connect_lazy(&url);
    control.migrate().await.unwrap();
    // A column added while the router runs (a migration applied by hand, or by a newer
    // release); the app's TenantSchema does not list it.
    let schema = TenantSchema::new(
        &ITEMS_STALE,
        migrator(&[("0001_items.sql", DEDICATED_ITEMS)]).await,
        migrator(&[("0001_items.sql", SHARED_ITEMS)]).await,
    )
    .unwrap();
    let ops = TenantOps::new(control.clone(), url.clone(), schema).with_shared(Some(url.clone()));
    let router = TenantRouter::builder(url.clone())
        .shared_database(url.clone())
        .start()
        .await
        .unwrap();
    let id = TenantId::parse("colco").unwrap();
    ops.create(
        NewTenantRequest {
            id: Some("colco".into()),
            hosts: Some(vec!["colco.example.com".into()]),
            isolation: Some("shared".into()),
            ..Default::default()
        }
        .validate()
        .unwrap(),
    )
    .await
    .unwrap();
    router.sync().catch_up().await.unwrap();
    {
        let t = tenant(&router, "colco.example.com");
        let db = t.db();
        let mut conn = db.conn().await.unwrap();
        sqlx::query("INSERT INTO items (tenant_id, body) VALUES ($1, 'widget')")
            .bind(db.scope())
            .execute(&mut *conn)
            .await
            .unwrap();
        conn.commit().await.unwrap();
    }
    let mut su = superuser(&url).await;
    sqlx::raw_sql(
        "ALTER TABLE shared.items ADD COLUMN price numeric; UPDATE shared.items SET price = 19.99",
    )
    .execute(&mut su)
    .await
    .unwrap();
    // Refused before anything is copied: the unlisted column would not be.
    let err = ops
        .move_tenant(&id, Isolation::Dedicated)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("price"), "{err:#}");
    router.sync().catch_up().await.unwrap();
    let t = tenant(&router, "colco.example.com");
    assert_eq!(t.tenant().isolation, Isolation::Shared);
    let db = t.db();
    let mut conn = db.conn().await.unwrap();
    let kept: (String, Option<String>) =
        sqlx::query_as("SELECT body, price::text FROM items WHERE tenant_id = $1")
            .bind(db.scope())
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(kept, ("widget".to_string(), Some("19.99".to_string())));
}

// Found in review, and fixed: before the fix, the same for a whole table. A purge deletes only the listed tables' rows and
// the directory row; a tenant table the description does not list keeps the removed tenant's
// rows, and the next tenant created under the same id (another customer) reads them. The
// create's own check for unowned rows looks at the listed tables only.
#[tokio::test]
async fn a_shared_tenant_table_the_schema_does_not_list_is_refused() {
    let url = shared_postgres()
        .await
        .create_database(&unique_name("a14tbl"))
        .await
        .unwrap();
    let control = ControlDb::connect_lazy(&url);
    control.migrate().await.unwrap();
    let secrets = "
CREATE TABLE secrets (
    tenant_id text NOT NULL,
    name      text NOT NULL,
    value     text NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON secrets TO tenant_router_app;
ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE secrets FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON secrets TO tenant_router_app
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
";
    let schema = TenantSchema::new(
        &ITEMS,
        migrator(&[("0001_items.sql", DEDICATED_ITEMS)]).await,
        migrator(&[
            ("0001_items.sql", SHARED_ITEMS),
            ("0002_secrets.sql", secrets),
        ])
        .await,
    )
    .unwrap();
    let ops = TenantOps::new(control.clone(), url.clone(), schema).with_shared(Some(url.clone()));
    let router = TenantRouter::builder(url.clone())
        .shared_database(url.clone())
        .start()
        .await
        .unwrap();
    let id = TenantId::parse("reused").unwrap();
    let create = || {
        ops.create(
            NewTenantRequest {
                id: Some("reused".into()),
                hosts: Some(vec!["reused.example.com".into()]),
                isolation: Some("shared".into()),
                ..Default::default()
            }
            .validate()
            .unwrap(),
        )
    };
    // The shared schema holds a tenant table the app's description leaves out: a purge
    // would leave its rows to the next tenant of the id, so nothing is served on it.
    let err = create().await.unwrap_err();
    assert!(format!("{err:#}").contains("secrets"), "{err:#}");
    router.sync().catch_up().await.unwrap();
    assert!(router.registry().snapshot().get(&id).is_none());
}

#[tokio::test]
async fn a_failed_statement_keeps_the_connection() {
    let kit = TestKit::builder(items_schema().await)
        .start()
        .await
        .unwrap();
    kit.dedicated_tenant("err-d", &["d.err.test"])
        .await
        .unwrap();
    let router = kit.router().await.unwrap();
    let t = tenant(&router, "d.err.test");
    let budget = Arc::clone(router.registry().budget());
    // Warm: one connection, used and returned.
    {
        let _ = t.db().conn().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let opened = budget.stats().opened_total;
    for _ in 0..10 {
        let db = t.db();
        let mut conn = db.conn().await.unwrap();
        // e.g. a duplicate key a handler turns into a 409
        let failed = sqlx::query("SELECT 1/0").execute(&mut *conn).await;
        assert!(failed.is_err());
        drop(conn);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = budget.stats().opened_total;
    assert_eq!(
        after - opened,
        0,
        "{} new connections for 10 failed statements on one tenant",
        after - opened
    );
}

// Found in review, and fixed: before the fix, a move out of a provisioned dedicated database DROPS that database after
// copying only the listed tables: a tenant table the description does not list (here an
// audit log, which the app's migrations create in both places) is gone for good.
#[tokio::test]
async fn a_move_refuses_to_drop_a_database_with_an_unlisted_table() {
    let url = shared_postgres()
        .await
        .create_database(&unique_name("a14drop"))
        .await
        .unwrap();
    let control = ControlDb::connect_lazy(&url);
    control.migrate().await.unwrap();
    let audit_dedicated = "
CREATE TABLE audit (tenant_id text NOT NULL DEFAULT '', at timestamptz NOT NULL DEFAULT now(), what text NOT NULL);
";
    let audit_shared = "
CREATE TABLE audit (tenant_id text NOT NULL, at timestamptz NOT NULL DEFAULT now(), what text NOT NULL);
GRANT SELECT, INSERT, UPDATE, DELETE ON audit TO tenant_router_app;
ALTER TABLE audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit TO tenant_router_app
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
";
    let schema = TenantSchema::new(
        &ITEMS,
        migrator(&[
            ("0001_items.sql", DEDICATED_ITEMS),
            ("0002_audit.sql", audit_dedicated),
        ])
        .await,
        migrator(&[
            ("0001_items.sql", SHARED_ITEMS),
            ("0002_audit.sql", audit_shared),
        ])
        .await,
    )
    .unwrap();
    let ops = TenantOps::new(control.clone(), url.clone(), schema).with_shared(Some(url.clone()));
    let router = TenantRouter::builder(url.clone())
        .shared_database(url.clone())
        .start()
        .await
        .unwrap();
    let id = TenantId::parse("audited").unwrap();
    ops.create(
        NewTenantRequest {
            id: Some("audited".into()),
            hosts: Some(vec!["audited.example.com".into()]),
            ..Default::default()
        }
        .validate()
        .unwrap(),
    )
    .await
    .unwrap();
    router.sync().catch_up().await.unwrap();
    {
        let t = tenant(&router, "audited.example.com");
        let db = t.db();
        let mut conn = db.conn().await.unwrap();
        sqlx::query("INSERT INTO audit (tenant_id, what) VALUES ($1, 'contract signed')")
            .bind(db.scope())
            .execute(&mut *conn)
            .await
            .unwrap();
        conn.commit().await.unwrap();
    }
    // Refused before anything is copied: the table would go with the dropped database.
    let err = ops.move_tenant(&id, Isolation::Shared).await.unwrap_err();
    assert!(format!("{err:#}").contains("audit"), "{err:#}");
    router.sync().catch_up().await.unwrap();
    let t = tenant(&router, "audited.example.com");
    assert_eq!(t.tenant().isolation, Isolation::Dedicated);
    let db = t.db();
    let mut conn = db.conn().await.unwrap();
    let audit: Vec<String> = sqlx::query_scalar("SELECT what FROM audit WHERE tenant_id = $1")
        .bind(db.scope())
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(audit, ["contract signed"]);
}

// Found in review, and fixed: before the fix, `TenantConn::commit()` answers Ok for a transaction PostgreSQL has already
// aborted: after any failed statement, `COMMIT` is answered with the command tag ROLLBACK
// (not an error), and commit() does not look. A handler that ignores one failed statement
// ("best effort" extras, a duplicate it expects, the pattern that was safe while dedicated
// connections autocommitted, before this change) loses everything it wrote, with Ok from
// commit() and no warning.
#[tokio::test]
async fn committing_a_failed_transaction_is_an_error() {
    let kit = TestKit::builder(items_schema().await)
        .start()
        .await
        .unwrap();
    kit.dedicated_tenant("abort-d", &["d.abort.test"])
        .await
        .unwrap();
    kit.shared_tenant("abort-s", &["s.abort.test"])
        .await
        .unwrap();
    let router = kit.router().await.unwrap();
    let mut lost = Vec::new();
    for host in ["d.abort.test", "s.abort.test"] {
        let t = tenant(&router, host);
        let db = t.db();
        let mut conn = db.conn().await.unwrap();
        sqlx::query("INSERT INTO items (tenant_id, body) VALUES ($1, 'order #1')")
            .bind(db.scope())
            .execute(&mut *conn)
            .await
            .unwrap();
        // An optional extra whose failure the handler tolerates.
        let _ = sqlx::query("INSERT INTO items (tenant_id, body) VALUES ($1, NULL)")
            .bind(db.scope())
            .execute(&mut *conn)
            .await;
        let committed = conn.commit().await;
        let mut check = db.conn().await.unwrap();
        let stored: Vec<String> = sqlx::query_scalar("SELECT body FROM items WHERE tenant_id = $1")
            .bind(db.scope())
            .fetch_all(&mut *check)
            .await
            .unwrap();
        if committed.is_ok() && stored.is_empty() {
            lost.push(format!("{host}: commit() = Ok, stored {stored:?}"));
        }
    }
    assert!(lost.is_empty(), "{lost:?}");
}
