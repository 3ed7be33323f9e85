//! The tenant handle behaves the same for both kinds of tenant: a handler tested on a
//! dedicated tenant cannot lose writes on a shared one, or the other way round.

use serde_json::Value;
use tenant_router::middleware::CurrentTenant;

use crate::harness::{Backend, TestApp, plain_and_citus};

const T1: &str = "tenant-1.test.com";

/// What a handler does: one write it forgets to commit, one it commits, then a read of its
/// own writes, each on a connection of its own, all through `CurrentTenant::db`.
async fn forget_one_commit_one(app: &TestApp) -> Vec<String> {
    let token = app.user_token(T1, "uno").await;
    let tenant = CurrentTenant::new(app.registry.resolve(T1).unwrap());
    let db = tenant.db();
    let user: i64 = {
        let mut conn = db.conn().await.unwrap();
        sqlx::query_scalar("SELECT id FROM users WHERE tenant_id = $1")
            .bind(db.scope())
            .fetch_one(&mut *conn)
            .await
            .unwrap()
    };
    {
        let mut conn = db.conn().await.unwrap();
        sqlx::query("INSERT INTO notes (tenant_id, user_id, content) VALUES ($1, $2, 'forgotten')")
            .bind(db.scope())
            .bind(user)
            .execute(&mut *conn)
            .await
            .unwrap();
        // Dropped without commit().
    }
    let mut conn = db.conn().await.unwrap();
    sqlx::query("INSERT INTO notes (tenant_id, user_id, content) VALUES ($1, $2, 'kept')")
        .bind(db.scope())
        .bind(user)
        .execute(&mut *conn)
        .await
        .unwrap();
    conn.commit().await.unwrap();
    // What any client sees afterwards, through the API.
    let page: Value = app
        .get(T1, "/api/notes", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    page["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["content"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_dedicated_tenant_keeps_only_committed_writes() {
    let app = TestApp::with_demo_tenants().await;
    assert_eq!(forget_one_commit_one(&app).await, ["kept"]);
}

plain_and_citus!(a_shared_tenant_keeps_only_committed_writes);
async fn a_shared_tenant_keeps_only_committed_writes(backend: Backend) {
    let app = TestApp::spawn_shared(backend, &[("tenant-1", T1)]).await;
    assert_eq!(forget_one_commit_one(&app).await, ["kept"]);
}
