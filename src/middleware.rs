//! The tower layer that turns a request's `Host` into its tenant, and the extractor handlers
//! use to get that tenant and its pool.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either, Ready, ready};
use tower::{Layer, Service};

use crate::host::{self, HostError};
use crate::namespace::{RedisNamespace, TenantRedis};
use crate::problem::{ApiError, problem_response};
use crate::registry::{Registry, TenantEntry};
use crate::tenant::{Tenant, TenantId, TenantState};

/// Resolves every request to a tenant from its `Host` (the URI's authority for HTTP/2) and
/// hands the inner service a [`CurrentTenant`] extension. No header a client picks, such as
/// `X-Tenant`, is ever read.
///
/// Answers without calling the inner service: 400 for a missing or malformed host, 404 for an
/// unknown one, 503 with `Retry-After` for a suspended tenant.
#[derive(Clone)]
pub struct TenantLayer {
    registry: Arc<Registry>,
    redis: Option<Arc<RedisSide>>,
}

/// The Redis pool and key prefix a request's [`CurrentTenant::redis`] builds on.
struct RedisSide {
    pool: deadpool_redis::Pool,
    namespace: RedisNamespace,
}

impl TenantLayer {
    /// A layer resolving against `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            redis: None,
        }
    }

    /// Gives every request's [`CurrentTenant`] its tenant's Redis namespace.
    pub fn with_redis(mut self, pool: deadpool_redis::Pool, namespace: RedisNamespace) -> Self {
        self.redis = Some(Arc::new(RedisSide { pool, namespace }));
        self
    }
}

impl<S> Layer<S> for TenantLayer {
    type Service = TenantService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantService {
            inner,
            registry: Arc::clone(&self.registry),
            redis: self.redis.clone(),
        }
    }
}

/// The service [`TenantLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct TenantService<S> {
    inner: S,
    registry: Arc<Registry>,
    redis: Option<Arc<RedisSide>>,
}

impl<S, B> Service<Request<B>> for TenantService<S>
where
    S: Service<Request<B>, Response = Response>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        Either<Ready<Result<Response, S::Error>>, BoxFuture<'static, Result<Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match resolve(&self.registry, &req) {
            Ok(entry) => {
                tracing::Span::current().record("tenant.id", entry.tenant().id.as_str());
                if let Some(wait) = entry.throttled() {
                    return Either::Left(ready(Ok(too_many(wait))));
                }
                req.extensions_mut().insert(CurrentTenant {
                    entry,
                    redis: self.redis.clone(),
                });
                let response = self.inner.call(req);
                let registry = Arc::clone(&self.registry);
                Either::Right(Box::pin(async move {
                    let response = response.await?;
                    // The tenant's data was not where this instance sent the request: its
                    // routing may be stale (a move whose announcement never came).
                    if response
                        .extensions()
                        .get::<crate::problem::StaleRouting>()
                        .is_some()
                    {
                        registry.suspect_stale();
                    }
                    Ok(response)
                }))
            }
            Err(refusal) => Either::Left(ready(Ok(refusal.into_response()))),
        }
    }
}

/// 429 for a tenant over its rate limit, with when to come back (whole seconds, at least 1).
fn too_many(wait: std::time::Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = problem_response(
        StatusCode::TOO_MANY_REQUESTS,
        "this tenant is over its request rate limit; retry later",
    );
    if let Ok(value) = header::HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Why a request was not handed to a tenant.
enum Refusal {
    MissingHost,
    MalformedHost,
    UnknownHost(String),
    Suspended,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::MissingHost => {
                problem_response(StatusCode::BAD_REQUEST, "the request has no Host")
            }
            Self::MalformedHost => {
                problem_response(StatusCode::BAD_REQUEST, "the request's Host is malformed")
            }
            Self::UnknownHost(host) => problem_response(
                StatusCode::NOT_FOUND,
                format!("no tenant is served at host '{host}'"),
            ),
            Self::Suspended => ApiError::Suspended.into_response(),
        }
    }
}

fn resolve<B>(registry: &Registry, req: &Request<B>) -> Result<Arc<TenantEntry>, Refusal> {
    let raw = match req.headers().get(header::HOST) {
        Some(value) => value.as_bytes(),
        None => req
            .uri()
            .authority()
            .map_or(&b""[..], |a| a.as_str().as_bytes()),
    };
    let host = host::normalize(raw).map_err(|e| match e {
        HostError::Missing => Refusal::MissingHost,
        HostError::Malformed => Refusal::MalformedHost,
    })?;
    let entry = registry
        .resolve(&host)
        .ok_or_else(|| Refusal::UnknownHost(host.into_owned()))?;
    match entry.tenant().state {
        TenantState::Active => Ok(entry),
        TenantState::Suspended => Err(Refusal::Suspended),
    }
}

/// The tenant a request was resolved to, with its pool. Extract it in any handler mounted
/// behind [`TenantLayer`]; elsewhere extraction fails with a 500, since that is a wiring bug.
#[derive(Clone)]
pub struct CurrentTenant {
    entry: Arc<TenantEntry>,
    redis: Option<Arc<RedisSide>>,
}

impl CurrentTenant {
    /// Wraps a registry entry, for code that resolved the tenant itself (jobs, tests).
    pub fn new(entry: Arc<TenantEntry>) -> Self {
        Self { entry, redis: None }
    }

    /// The tenant's id.
    pub fn id(&self) -> &TenantId {
        &self.entry.tenant().id
    }

    /// The tenant's configuration as of this request.
    pub fn tenant(&self) -> &Tenant {
        self.entry.tenant()
    }

    /// The tenant's own pool; never another tenant's. For a shared tenant this is the
    /// shared database's pool: use [`Self::db`], which scopes every statement.
    pub fn pool(&self) -> &Arc<crate::pool::TenantPool> {
        self.entry.pool()
    }

    /// The tenant's database handle: connections scoped to this tenant, and the scope to
    /// bind as `tenant_id` in every query. The same code serves dedicated and shared tenants.
    pub fn db(&self) -> crate::shared::TenantDb<'_> {
        crate::shared::TenantDb::new(self.entry.pool(), self.entry.tenant())
    }

    /// The tenant's Redis namespace: every key built with [`TenantRedis::key`] is the
    /// tenant's own (the same namespace its jobs get), and a purge of the tenant deletes
    /// them. A 500 when the layer was built without Redis, since that is a wiring bug.
    pub fn redis(&self) -> Result<TenantRedis, ApiError> {
        let side = self.redis.as_ref().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "CurrentTenant::redis called, but the TenantLayer has no Redis (with_redis)"
            ))
        })?;
        Ok(side.namespace.tenant(side.pool.clone(), self.tenant()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentTenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CurrentTenant>()
            .cloned()
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!(
                    "CurrentTenant extracted on a route that is not behind TenantLayer"
                ))
            })
    }
}
