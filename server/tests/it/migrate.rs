//! `tenant-router migrate`: every tenant, one failure reported without stopping the rest.

use std::process::Command;

use tenant_router::control::ControlDb;
use tenant_router::tenant::DatabaseUrl;

use crate::harness::{shared_postgres, spec, unique_name};

fn run_migrate(control_url: &DatabaseUrl) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenant-router"))
        .arg("migrate")
        .env("TENANT_ROUTER_DATABASE_URL", control_url.expose())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn has_table(url: &DatabaseUrl, table: &str) -> bool {
    let pool = sqlx::PgPool::connect_with(url.connect_options())
        .await
        .unwrap();
    let found: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    found
}

#[tokio::test]
async fn a_broken_tenant_is_reported_and_the_rest_migrate() {
    let pg = shared_postgres().await;
    let control_url = pg.create_database(&unique_name("control")).await.unwrap();
    let control = ControlDb::connect_lazy(&control_url);
    control.migrate().await.unwrap();

    let good1 = pg.create_database(&unique_name("good")).await.unwrap();
    // A password in the URL (trust auth ignores it) must never be printed.
    let good2 = DatabaseUrl::parse(
        &pg.create_database(&unique_name("good"))
            .await
            .unwrap()
            .expose()
            .replace("postgres@", "postgres:hunter2@"),
    )
    .unwrap();
    let broken = pg.create_database(&unique_name("broken")).await.unwrap();
    {
        let pool = sqlx::PgPool::connect_with(broken.connect_options())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE notes (squatter int)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    for s in [
        spec("good-1", &["good-1.test.com"], good1.clone()),
        spec("broken", &["broken.test.com"], broken.clone()),
        spec("good-2", &["good-2.test.com"], good2.clone()),
    ] {
        control.upsert(&s).await.unwrap();
    }
    // 50 tenants in all.
    for n in 3..=49 {
        let db = pg.create_database(&unique_name("many")).await.unwrap();
        control
            .upsert(&spec(
                &format!("good-{n}"),
                &[&format!("good-{n}.test.com")],
                db,
            ))
            .await
            .unwrap();
    }

    let (ok, out) = run_migrate(&control_url);
    assert!(!ok, "a failed tenant must fail the command:\n{out}");
    assert!(out.contains("good-1: migrated"), "{out}");
    assert!(out.contains("good-2: migrated"), "{out}");
    assert!(out.contains("broken: FAILED"), "{out}");
    assert!(
        out.contains("summary: 49 migrated, 0 already current, 1 failed (broken)"),
        "{out}"
    );
    // Not a terminal: progress comes as lines.
    assert!(
        out.contains("progress: 50/50 tenants (49 ok, 1 failed"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "a password was printed:\n{out}");
    assert!(has_table(&good1, "users").await && has_table(&good2, "users").await);

    // Re-running: the good ones are current, the broken one still fails.
    let (ok, out) = run_migrate(&control_url);
    assert!(!ok);
    assert!(
        out.contains("good-1: already current") && out.contains("good-2: already current"),
        "{out}"
    );
    assert!(
        out.contains("summary: 0 migrated, 49 already current, 1 failed (broken)"),
        "{out}"
    );

    // Once fixed, it migrates and the command succeeds.
    {
        let pool = sqlx::PgPool::connect_with(broken.connect_options())
            .await
            .unwrap();
        sqlx::query("DROP TABLE notes")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let (ok, out) = run_migrate(&control_url);
    assert!(ok, "{out}");
    assert!(out.contains("broken: migrated"), "{out}");
    assert!(
        out.contains("summary: 1 migrated, 49 already current, 0 failed"),
        "{out}"
    );
    assert!(has_table(&broken, "notes").await);
}

#[tokio::test]
async fn importing_the_tenants_file_twice_changes_nothing() {
    use tenant_router::operations::TenantOps;
    use tenant_router_server::tenants_file::{ImportOutcome, TenantsFile, import};

    let pg = shared_postgres().await;
    let control_url = pg.create_database(&unique_name("control")).await.unwrap();
    let control = ControlDb::connect_lazy(&control_url);
    control.migrate().await.unwrap();
    let db1 = pg.create_database(&unique_name("imp")).await.unwrap();
    let db2 = pg.create_database(&unique_name("imp")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "[[tenant]]\nid = \"imp-1\"\nhosts = [\"imp-1.test.com\"]\ndatabase = \"{}\"\n\n\
             [[tenant]]\nid = \"imp-2\"\nhosts = [\"IMP-2.test.com.\", \"www.imp-2.example\"]\ndatabase = \"{}\"\n",
            db1.expose(),
            db2.expose()
        ),
    )
    .unwrap();
    let file = TenantsFile::load(&path).unwrap();
    let ops = TenantOps::new(
        control.clone(),
        pg.url("postgres"),
        tenant_router_server::schema::schema(),
    );

    let first = import(&ops, &file, false).await.unwrap();
    assert!(
        first.iter().all(|l| l.outcome == ImportOutcome::Created),
        "{first:?}"
    );
    let before = control.load_tenants().await.unwrap();
    let second = import(&ops, &file, false).await.unwrap();
    assert!(
        second.iter().all(|l| l.outcome == ImportOutcome::Unchanged),
        "{second:?}"
    );
    assert_eq!(
        control.load_tenants().await.unwrap(),
        before,
        "versions must not move"
    );
    assert_eq!(before[1].hosts[0].as_str(), "imp-2.test.com");

    // A host already held by another tenant is refused, and nothing of that write lands.
    let clash = format!(
        "[[tenant]]\nid = \"imp-3\"\nhosts = [\"imp-1.test.com\"]\ndatabase = \"{}\"\n",
        db1.expose()
    );
    std::fs::write(&path, clash).unwrap();
    let lines = import(&ops, &TenantsFile::load(&path).unwrap(), false)
        .await
        .unwrap();
    assert!(
        matches!(&lines[0].outcome, ImportOutcome::Refused(why) if why.contains("already belongs to tenant 'imp-1'")),
        "{lines:?}"
    );
    assert_eq!(control.load_tenants().await.unwrap(), before);
}

#[tokio::test]
async fn changes_since_a_version_include_removals_in_order() {
    use tenant_router::control::Change;
    use tenant_router::registry::{Registry, RegistryOptions};

    let pg = shared_postgres().await;
    let control_url = pg.create_database(&unique_name("control")).await.unwrap();
    let control = ControlDb::connect_lazy(&control_url);
    control.migrate().await.unwrap();
    let db = pg.url("postgres");
    assert_eq!(control.max_version().await.unwrap(), 0);

    control
        .upsert(&spec("a", &["a.test.com"], db.clone()))
        .await
        .unwrap();
    // An instance that has seen only the first change...
    let lagging = Registry::new(RegistryOptions::default());
    lagging.apply(control.changes_since(0).await.unwrap());
    let seen = lagging.snapshot().version();

    control
        .upsert(&spec("b", &["b.test.com"], db.clone()))
        .await
        .unwrap();
    control
        .upsert(&spec("a", &["a2.test.com"], db.clone()))
        .await
        .unwrap();
    let removed = control
        .delete(&"b".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!removed.provisioned);
    assert!(
        control
            .delete(&"b".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );

    let changes = control.changes_since(seen).await.unwrap();
    let versions: Vec<i64> = changes.iter().map(Change::version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert!(matches!(changes.last(), Some(Change::Remove { id, .. }) if id.as_str() == "b"));

    // ...catches up to exactly the control database's state.
    lagging.apply(changes);
    let snap = lagging.snapshot();
    assert_eq!(snap.version(), control.max_version().await.unwrap());
    assert_eq!(snap.len(), 1);
    assert!(lagging.resolve("a2.test.com").is_some());
    assert!(lagging.resolve("a.test.com").is_none() && lagging.resolve("b.test.com").is_none());
}
