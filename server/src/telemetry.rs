//! Logs and metrics around every request: one `info` access line per request, inside a
//! `request` span that the tenant layer fills with `tenant.id` (so every warning or error
//! logged while serving it names its tenant), and the request-latency histogram. The
//! Prometheus recorder behind `/metrics` is installed here, once per process.

use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use futures_util::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};
use tracing::Instrument as _;

/// Request latency by route (the matched pattern, never the raw path) and status class.
pub const HTTP_REQUEST_DURATION: &str = "tenant_router_http_request_duration_seconds";

/// Seconds: from half a millisecond to ten seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Jobs run longer: up to ten minutes.
const JOB_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 600.0,
];

/// The process's Prometheus handle, installing the recorder on first use. When another
/// recorder was installed first (an embedding app's), ours renders nothing recorded
/// elsewhere, and the app's own exporter has the figures.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(tenant_router::telemetry::JOB_RUN.into()),
                    JOB_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(tenant_router::telemetry::JOB_QUEUE_WAIT.into()),
                    JOB_BUCKETS,
                )
            })
            .expect("the bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_ok() {
            // Ours is the global recorder from now on, for good: its handles can be kept.
            let _ = OURS.set(());
            tenant_router::telemetry::describe();
            metrics::describe_histogram!(
                HTTP_REQUEST_DURATION,
                metrics::Unit::Seconds,
                "Time to answer a request, by route and status class."
            );
        }
        // Histogram samples wait in buffers until an upkeep folds them in; without a scrape
        // they would pile up.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let handle = handle.clone();
            runtime.spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    every.tick().await;
                    handle.run_upkeep();
                }
            });
        }
        handle
    })
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Set once our recorder is the global one, which it then stays: its handles can be kept.
static OURS: OnceLock<()> = OnceLock::new();

/// A route's pattern and its histograms by status class.
type RouteHistograms = (Box<str>, [Option<metrics::Histogram>; 5]);

thread_local! {
    /// The latency histograms this thread recorded to, by route and status class, each
    /// registered at its first sample: building a key and finding it in the recorder cost
    /// more than recording the sample. Per thread, so that no lock or shared count is
    /// touched per request. Routes are the app's patterns (short, and a bounded set).
    static LATENCY: RefCell<Vec<RouteHistograms>> =
        const { RefCell::new(Vec::new()) };
}

/// Records a request's latency under its route and status class.
fn record_latency(route: &str, class: usize, latency: Duration) {
    let histogram = || {
        metrics::histogram!(
            HTTP_REQUEST_DURATION,
            "route" => route.to_string(),
            "status" => STATUS_CLASSES[class]
        )
    };
    if OURS.get().is_none() {
        histogram().record(latency);
        return;
    }
    LATENCY.with_borrow_mut(|routes| {
        let at = match routes.iter().position(|(known, _)| **known == *route) {
            Some(at) => at,
            None => {
                routes.push((route.into(), Default::default()));
                routes.len() - 1
            }
        };
        routes[at].1[class]
            .get_or_insert_with(histogram)
            .record(latency);
    });
}

/// The access log and latency histogram, as a layer around each route (where its matched
/// pattern is known). A service of its own rather than `axum::middleware::from_fn`, which
/// clones the route and boxes it, and the request's future, on every request.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessLogLayer;

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog { inner }
    }
}

/// See [`AccessLogLayer`].
#[derive(Clone, Debug)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S> Service<Request> for AccessLog<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let route_str = route.as_ref().map_or("(no route)", MatchedPath::as_str);
        let span = tracing::info_span!(
            "request",
            method = %req.method(),
            route = route_str,
            tenant.id = tracing::field::Empty,
        );
        // Called inside the span too: a layer below that records on the current span
        // (the tenant layer's `tenant.id`) may do so before its future is first polled.
        let answer = span
            .in_scope(|| self.inner.call(req))
            .instrument(span.clone());
        Box::pin(async move {
            let response = match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let route_str = route.as_ref().map_or("(no route)", MatchedPath::as_str);
            record(&span, route_str, started, &response);
            Ok(response)
        })
    }
}

/// The access line, in the request's span, and the latency sample.
fn record(span: &tracing::Span, route: &str, started: Instant, response: &Response) {
    let latency = started.elapsed();
    let status = response.status();
    span.in_scope(|| {
        tracing::info!(
            target: "tenant_router::access",
            status = status.as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            "request"
        );
    });
    let class = match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    };
    record_latency(route, class, latency);
}
