//! Throwaway servers and a `TestApp` with one helper per endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tenant_router::control::{ControlDb, TenantSpec};
use tenant_router::provision;
use tenant_router::registry::Registry;
use tenant_router::shared::SharedDb;
use tenant_router::tenant::{
    DatabaseUrl, Isolation, PoolSettings, TenantHost, TenantId, TenantState,
};
use tenant_router::testing::{LocalCitus, LocalPostgres};
use tenant_router_server::config::{Settings, SettingsArgs};
use tenant_router_server::server::Application;
use tokio::sync::OnceCell;

/// One PostgreSQL for the whole test binary, the test kit's
/// ([`tenant_router::testing::process_postgres`]); each test makes its own databases on it.
/// Tests that stop a server start their own.
pub async fn shared_postgres() -> &'static LocalPostgres {
    tenant_router::testing::process_postgres()
        .await
        .expect("starting the shared test PostgreSQL")
}

/// One Citus cluster (a coordinator and two workers) for the whole test binary, or `None`
/// when Citus is not installed: the Citus group is then skipped, and says so once on the
/// terminal (outside the test harness' capture). With `TENANT_ROUTER_TEST_CITUS=required`
/// a missing Citus fails every test of the group instead. Tests stay apart by database:
/// [`citus_database`].
pub async fn citus_cluster() -> Option<&'static LocalCitus> {
    static CITUS: OnceCell<Option<LocalCitus>> = OnceCell::const_new();
    CITUS
        .get_or_init(|| async {
            let required = std::env::var("TENANT_ROUTER_TEST_CITUS").is_ok_and(|v| v == "required");
            match tenant_router::testing::citus_library() {
                Ok(_) => Some(
                    LocalCitus::start_ephemeral()
                        .await
                        .expect("starting the test Citus cluster"),
                ),
                Err(why) if required => {
                    panic!("TENANT_ROUTER_TEST_CITUS=required, and Citus is missing: {why}")
                }
                Err(why) => {
                    use std::io::Write as _;
                    let _ = writeln!(
                        std::io::stderr(),
                        "\n*** Citus test group SKIPPED: {why}. Install Citus to run it \
                         (../shared/citus/install.sh, or Citus built from source; see the \
                         README); TENANT_ROUTER_TEST_CITUS=required makes this a failure. ***\n"
                    );
                    None
                }
            }
        })
        .await
        .as_ref()
}

/// A fresh database on the test Citus cluster (a cluster of its own: Citus keeps its
/// metadata per database), or `None` when the Citus group is skipped.
pub async fn citus_database(prefix: &str) -> Option<DatabaseUrl> {
    let citus = citus_cluster().await?;
    Some(citus.create_database(&unique_name(prefix)).await.unwrap())
}

/// Where a shared-mode test runs: plain PostgreSQL, or the Citus cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Plain,
    Citus,
}

impl Backend {
    /// A fresh database on this backend (on Citus: a cluster of its own).
    pub async fn database(self, prefix: &str) -> DatabaseUrl {
        match self {
            Backend::Plain => shared_postgres()
                .await
                .create_database(&unique_name(prefix))
                .await
                .unwrap(),
            Backend::Citus => citus_database(prefix)
                .await
                .expect("a Citus test runs only with the cluster"),
        }
    }

    /// The server its databases live on (the coordinator, on Citus).
    pub async fn server(self) -> &'static LocalPostgres {
        match self {
            Backend::Plain => shared_postgres().await,
            Backend::Citus => citus_cluster()
                .await
                .expect("a Citus test runs only with the cluster")
                .coordinator(),
        }
    }
}

/// Runs a shared-mode test on plain PostgreSQL and on the Citus cluster (skipped without
/// Citus), as `<name>::plain` and `<name>::citus`. The test is
/// `async fn <name>(backend: Backend)`.
macro_rules! plain_and_citus {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn plain() {
                super::$name($crate::harness::Backend::Plain).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn citus() {
                if $crate::harness::citus_cluster().await.is_some() {
                    super::$name($crate::harness::Backend::Citus).await
                }
            }
        }
    };
}
pub(crate) use plain_and_citus;

/// A database name no other test in this run uses.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "it_{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh, migrated database on `pg`.
pub async fn tenant_database(pg: &LocalPostgres, prefix: &str) -> DatabaseUrl {
    let url = pg.create_database(&unique_name(prefix)).await.unwrap();
    let outcome =
        provision::migrate_tenant_with(&url, &tenant_router_server::schema::TENANT_MIGRATOR).await;
    assert!(
        matches!(outcome, provision::MigrationOutcome::Migrated(_)),
        "{outcome:?}"
    );
    url
}

pub fn spec(id: &str, hosts: &[&str], database: DatabaseUrl) -> TenantSpec {
    TenantSpec {
        id: TenantId::parse(id).unwrap(),
        hosts: hosts
            .iter()
            .map(|h| TenantHost::parse(h).unwrap())
            .collect(),
        database,
        provisioned: false,
        pool: PoolSettings::default(),
        state: TenantState::Active,
        isolation: Default::default(),
        incarnation: None,
        rate_limit: None,
    }
}

/// Runs a reference-app test three times: against dedicated tenants (each its own
/// database), against shared tenants (rows in the shared schema) on plain PostgreSQL, and
/// against shared tenants on the Citus cluster (skipped without Citus), as
/// `<name>::dedicated`, `<name>::shared` and `<name>::citus`. The test is `async fn <name>(app: TestApp)`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn dedicated() {
                super::$name($crate::harness::TestApp::with_demo_tenants().await).await
            }
            #[tokio::test]
            async fn shared() {
                super::$name($crate::harness::TestApp::with_shared_demo_tenants().await).await
            }
            #[tokio::test]
            async fn citus() {
                if let Some(app) = $crate::harness::TestApp::with_citus_demo_tenants().await {
                    super::$name(app).await
                }
            }
        }
    };
}
pub(crate) use both;

/// A shared tenant's spec: its rows live in the shared schema of `shared`.
pub fn shared_spec(id: &str, hosts: &[&str], shared: DatabaseUrl) -> TenantSpec {
    TenantSpec {
        isolation: Isolation::Shared,
        ..spec(id, hosts, shared)
    }
}

/// An app server on a free port over its own control database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub admin_token: String,
    pub control_url: DatabaseUrl,
    pub control: ControlDb,
    pub registry: Arc<Registry>,
    pub client: reqwest::Client,
}

impl TestApp {
    /// The two demo tenants, each in its own database on the shared server.
    pub async fn with_demo_tenants() -> TestApp {
        let pg = shared_postgres().await;
        let t1 = tenant_database(pg, "t1").await;
        let t2 = tenant_database(pg, "t2").await;
        TestApp::spawn(vec![
            spec("tenant-1", &["tenant-1.test.com"], t1),
            spec("tenant-2", &["tenant-2.test.com"], t2),
        ])
        .await
    }

    /// The two demo tenants, both shared: rows in the shared schema of the app's control
    /// database.
    pub async fn with_shared_demo_tenants() -> TestApp {
        TestApp::spawn_shared(
            Backend::Plain,
            &[
                ("tenant-1", "tenant-1.test.com"),
                ("tenant-2", "tenant-2.test.com"),
            ],
        )
        .await
    }

    /// The two demo tenants, both shared, on a database of the Citus cluster (control and
    /// shared database in one, as on plain PostgreSQL). `None` when Citus is skipped.
    pub async fn with_citus_demo_tenants() -> Option<TestApp> {
        let control_url = citus_database("citus").await?;
        Some(
            TestApp::spawn_shared_on(
                control_url,
                &[
                    ("tenant-1", "tenant-1.test.com"),
                    ("tenant-2", "tenant-2.test.com"),
                ],
            )
            .await,
        )
    }

    /// An app whose tenants (id, host) are all shared, on `backend`.
    pub async fn spawn_shared(backend: Backend, tenants: &[(&str, &str)]) -> TestApp {
        Self::spawn_shared_on(backend.database("control").await, tenants).await
    }

    /// An app whose tenants (id, host) are all shared, in the shared schema of
    /// `control_url` (which is also the control database).
    pub async fn spawn_shared_on(control_url: DatabaseUrl, tenants: &[(&str, &str)]) -> TestApp {
        let shared = SharedDb::connect_lazy(&control_url);
        shared
            .prepare(&tenant_router_server::schema::schema())
            .await
            .unwrap();
        let specs = tenants
            .iter()
            .map(|(id, host)| shared_spec(id, &[host], control_url.clone()))
            .collect();
        for (id, _) in tenants {
            shared
                .register(&TenantId::parse(id).unwrap())
                .await
                .unwrap();
        }
        Self::spawn_on(control_url, specs, |_| {}).await
    }

    /// An app over these tenants.
    pub async fn spawn(tenants: Vec<TenantSpec>) -> TestApp {
        Self::spawn_with(tenants, |_| {}).await
    }

    /// An app over these tenants, with settings adjusted by `adjust`.
    pub async fn spawn_with(
        tenants: Vec<TenantSpec>,
        adjust: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let pg = shared_postgres().await;
        let control_url = pg.create_database(&unique_name("control")).await.unwrap();
        Self::spawn_on(control_url, tenants, adjust).await
    }

    async fn spawn_on(
        control_url: DatabaseUrl,
        tenants: Vec<TenantSpec>,
        adjust: impl FnOnce(&mut Settings),
    ) -> TestApp {
        // `RUST_LOG=tenant_router=debug cargo test ... -- --nocapture` shows the server's log.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let control = ControlDb::connect_lazy(&control_url);
        control.migrate().await.unwrap();
        for t in &tenants {
            control.upsert(t).await.unwrap();
        }
        let (admin_token, admin_hash) = tenant_router_server::admin_token::generate();
        let mut settings = Settings::from_args(&SettingsArgs {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            admin_token_hash: Some(admin_hash.as_str().to_string()),
            database_url: Some(control_url.expose().to_string()),
            base_domain: Some("test.com".into()),
            acquire_timeout_ms: Some(1500),
            ..Default::default()
        })
        .unwrap();
        settings.max_body_bytes = 16 * 1024;
        adjust(&mut settings);
        let app = Application::build(&settings).await.unwrap();
        let addr = app.local_addr();
        let admin_addr = app.admin_addr();
        let registry = Arc::clone(app.registry());
        tokio::spawn(app.run_until(std::future::pending()));
        TestApp {
            addr,
            admin_addr,
            admin_token,
            control_url,
            control,
            registry,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// Reloads the registry from the control database, as a restart would.
    pub async fn reload(&self) {
        let (tenants, version) = self.control.load_all().await.unwrap();
        self.registry.replace_all(tenants, version);
    }

    /// An admin API call; `token` overrides the right one (`Some("")` sends none).
    pub async fn admin_get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = self.client.get(format!("http://{}{path}", self.admin_addr));
        match token {
            Some("") => {}
            Some(t) => req = req.bearer_auth(t),
            None => req = req.bearer_auth(&self.admin_token),
        }
        req.send().await.unwrap()
    }

    /// An admin call with the right token and a JSON body.
    pub async fn admin_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let mut req = self
            .client
            .request(method, format!("http://{}{path}", self.admin_addr))
            .bearer_auth(&self.admin_token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        host: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("Host", host)
    }

    pub async fn get(&self, host: &str, path: &str, token: Option<&str>) -> Response {
        let mut req = self.request(reqwest::Method::GET, host, path);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    pub async fn post(&self, host: &str, path: &str, body: Value, token: Option<&str>) -> Response {
        let mut req = self.request(reqwest::Method::POST, host, path).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    pub async fn register(&self, host: &str, username: &str, email: &str) -> Response {
        self.post(
            host,
            "/api/register",
            json!({"username": username, "email": email, "password": "correct horse"}),
            None,
        )
        .await
    }

    pub async fn login(&self, host: &str, email: &str, password: &str) -> Response {
        self.post(
            host,
            "/api/login",
            json!({"email": email, "password": password}),
            None,
        )
        .await
    }

    /// A connection of its own to tenant `id`'s database, outside the router (an operator's,
    /// or a second client's).
    pub async fn tenant_connection(&self, id: &str) -> sqlx::PgConnection {
        let url = self
            .control
            .get_tenant(&id.parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .database;
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&url.connect_options())
            .await
            .unwrap()
    }

    /// Registers a user and logs in, returning the token.
    pub async fn user_token(&self, host: &str, username: &str) -> String {
        let email = format!("{username}@example.com");
        let r = self.register(host, username, &email).await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
        let r = self.login(host, &email, "correct horse").await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["token"].as_str().unwrap().to_string()
    }

    pub async fn create_note(&self, host: &str, token: &str, content: &str) -> Value {
        let r = self
            .post(host, "/api/notes", json!({"content": content}), Some(token))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }
}

/// Asserts the status and that the body is a problem document; returns it.
pub async fn problem(r: Response, status: StatusCode) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "a {status} must be a problem document"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    body
}
