//! The app server: the reference app behind the tenant layer, plus health routes outside it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::app::apex::ApexState;
use crate::app::{self, AppConfig};
use crate::config::Settings;
use tenant_router::TenantRouter;
use tenant_router::control::ControlDb;
use tenant_router::jobs::{JobQueue, Keys};
use tenant_router::middleware::TenantLayer;
use tenant_router::problem::problem_response;
use tenant_router::registry::Registry;
use tenant_router::sync::{BusState, ConfigSync};

/// What the non-tenant routes need.
#[derive(Clone)]
pub struct ServerState {
    /// The tenants this instance serves.
    pub registry: Arc<Registry>,
    /// The control database.
    pub control: ControlDb,
    /// The sync keeping the registry current, for its bus report.
    pub sync: Option<Arc<ConfigSync>>,
    /// What resolves tenant requests (with the tenants' Redis namespace when configured).
    pub layer: TenantLayer,
}

/// The whole router: `/healthz` and `/readyz` answer on any host; everything else is
/// resolved to a tenant first.
pub fn app(state: ServerState, config: AppConfig, max_body_bytes: usize) -> Router {
    app_with_apex(state, config, max_body_bytes, None)
}

/// [`app`], plus the apex host's login (see [`crate::app::apex`]) when `apex` is given.
pub fn app_with_apex(
    state: ServerState,
    config: AppConfig,
    max_body_bytes: usize,
    apex: Option<ApexState>,
) -> Router {
    let tenant_routes = app::router(config).layer(state.layer.clone());
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(crate::openapi::app_document))
        .merge(crate::openapi::docs_router("/docs", "/openapi.json", false))
        .with_state(state)
        .merge(tenant_routes);
    if let Some(apex) = apex {
        router = router.layer(axum::middleware::from_fn_with_state(
            apex,
            crate::app::apex::dispatch,
        ));
    }
    with_common_layers(router, max_body_bytes)
}

/// What every router of ours gets around it: problem responses for unknown routes and
/// methods, the body limit, and the access log: an `info` span per request (the tenant
/// layer fills in `tenant.id`), one line when it is answered, and the latency histogram.
/// Failures are logged where they are understood (`ApiError`), not again here.
pub fn with_common_layers(router: Router, max_body_bytes: usize) -> Router {
    router
        .fallback(|| async { problem_response(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            problem_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        // One layer of routing for both: each `Router::layer` boxes every route once more.
        .layer(
            tower::ServiceBuilder::new()
                .layer(crate::telemetry::AccessLogLayer)
                .layer(DefaultBodyLimit::max(max_body_bytes)),
        )
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

/// 200 while the instance can serve: the control database answers. A bus that is down does
/// not make it unready (it serves what it holds and reconciles), but the answer says
/// `"status": "degraded"` and why.
async fn readyz(State(state): State<ServerState>) -> Response {
    let reachable = tokio::time::timeout(Duration::from_secs(2), state.control.ping())
        .await
        .unwrap_or(false);
    if reachable {
        let bus = state.sync.as_ref().map(|s| s.report());
        let degraded = bus.as_ref().is_some_and(|b| b.state == BusState::Degraded);
        axum::Json(json!({
            "status": if degraded { "degraded" } else { "ready" },
            "control_database": "ok",
            "bus": bus,
            "version": state.registry.version(),
            "tenants": state.registry.snapshot().len(),
        }))
        .into_response()
    } else {
        problem_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the control database is unreachable",
        )
    }
}

/// A bound, loaded app server, not yet serving. Binding first lets callers (tests) use port 0
/// and read the port back.
pub struct Application {
    listener: TcpListener,
    router: Router,
    admin_listener: TcpListener,
    admin_router: Router,
    registry: Arc<Registry>,
    tenants: TenantRouter,
    http: crate::listener::HttpLimits,
}

impl Application {
    /// Migrates the control database, loads every tenant and binds the listener.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        crate::telemetry::prometheus();
        let tenants = settings.tenant_router()?.start().await?;
        let registry = Arc::clone(tenants.registry());
        let sync = Arc::clone(tenants.sync());
        let control = sync.control().clone();
        let ops = settings
            .tenant_ops(control.clone())?
            .with_local_sync(Arc::clone(&sync));
        report_interrupted(&control).await;
        if let Err(e) = ops.control().remember_base_domain().await {
            tracing::warn!(error = %format!("{e:#}"), "could not record the base domain");
        }
        let passwords = Arc::new(crate::app::auth::PasswordLimiter::new(
            settings.password_hash_concurrency,
        ));
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let admin_listener = TcpListener::bind(settings.admin_listen)
            .await
            .with_context(|| format!("binding the admin listener {}", settings.admin_listen))?;
        if settings.admin_token_hash.is_none() {
            tracing::warn!(
                "no admin token configured (TENANT_ROUTER_ADMIN_TOKEN_HASH): the admin API refuses every call"
            );
        }
        let jobs = settings
            .redis()?
            .map(|redis| {
                JobQueue::new(
                    redis,
                    Keys::default(),
                    crate::reference_jobs::kinds_for(settings.diagnostic_jobs),
                )
                .map(|q| q.with_max_queued(settings.job_max_queued_per_tenant))
            })
            .transpose()?;
        let admin_router = with_common_layers(
            admin::router(AdminState {
                registry: Arc::clone(&registry),
                control: control.clone(),
                ops,
                sync: Some(Arc::clone(&sync)),
                token: admin::AdminTokenGate::new(
                    settings.admin_token_hash.clone().map(Arc::new),
                    Arc::clone(&passwords),
                ),
                jobs: jobs.clone(),
                shared: settings
                    .shared_database()
                    .map(|u| tenant_router::shared::SharedDb::connect_lazy(&u)),
            }),
            settings.max_body_bytes,
        );
        let state = ServerState {
            registry: Arc::clone(&registry),
            control,
            sync: Some(Arc::clone(&sync)),
            layer: tenants.layer(),
        };
        let config = AppConfig {
            passwords: Arc::clone(&passwords),
            session_ttl: settings.session_ttl,
            jobs: jobs.clone(),
        };
        let apex = settings.shared_database().map(|url| ApexState {
            host: Arc::from(settings.apex_host.as_str()),
            registry: Arc::clone(&registry),
            shared: tenant_router::shared::SharedDb::connect_lazy(&url)
                .pool()
                .clone(),
            session_ttl: settings.session_ttl,
            passwords: Arc::clone(&passwords),
        });
        Ok(Self {
            listener,
            router: app_with_apex(state, config, settings.max_body_bytes, apex),
            admin_listener,
            admin_router,
            registry,
            tenants,
            http: settings.http,
        })
    }

    /// The sync that keeps its registry current.
    pub fn sync(&self) -> &Arc<ConfigSync> {
        self.tenants.sync()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    /// The address the admin API listens on.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("a bound listener")
    }

    /// The registry it serves from.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Serves both listeners until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let main = crate::listener::serve(self.listener, self.router, self.http, stop_rx.clone());
        let admin =
            crate::listener::serve(self.admin_listener, self.admin_router, self.http, stop_rx);
        let (main, admin) = tokio::join!(main, admin);
        self.tenants.shutdown().await;
        main.context("serving HTTP")?;
        admin.context("serving the admin API")
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Logs every journaled operation that was interrupted (its process died half-way), so an
/// operator learns of it at start-up; `tenant-router tenants doctor` lists them too.
async fn report_interrupted(control: &ControlDb) {
    match control.unfinished_operations().await {
        Ok(ops) => {
            for (op, running) in ops.iter().filter(|(_, running)| !running) {
                let _ = running;
                tracing::warn!(tenant.id = %op.tenant_id, operation = %op.kind, step = %op.step,
                    started_at = %op.started_at,
                    "an operation on this tenant was interrupted; retry it or run `tenant-router tenants repair {}`",
                    op.tenant_id);
            }
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not read the operations journal")
        }
    }
}
