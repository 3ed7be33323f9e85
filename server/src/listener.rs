//! Serving a router on a listener with the limits a public edge needs: a deadline for the
//! request head (which also closes idle keep-alive connections), a deadline for the whole
//! request, a cap on open connections, and a shutdown that drains within a deadline.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use tenant_router::problem::problem_response;

/// Beyond any deadline a listener is given (settings cap them at a day).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request head must have arrived this long after the connection began waiting for
    /// it, or the connection is closed. An idle keep-alive connection waits for its next
    /// head, so this also closes idle connections.
    pub header_timeout: Duration,
    /// A request must be answered within this, or it gets a 503 problem.
    pub request_timeout: Duration,
    /// Open connections at most; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// On shutdown, how long open connections get to finish their requests.
    pub drain_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 2048,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// The 503 (with `Retry-After`) for a request not answered within the deadline; what it was
/// doing has been dropped, which returned its database connection to its pool.
fn timed_out(limit: Duration) -> Response {
    tracing::warn!(timeout_secs = limit.as_secs_f64(), "request timed out");
    let mut response = problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the request was not answered within {} s",
            limit.as_secs_f64()
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Serves `router` on `listener` under `limits` until `shutdown` turns true, then stops
/// accepting and lets open connections finish, for at most `limits.drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The head deadline is the connection's own (see [`EdgeStream`]), not hyper's: hyper's
    // puts a new timer into the timer wheel for every request head and takes it out again.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(None);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let stopped = |rx: &mut watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit?,
            () = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        // Around the whole router, once, rather than as a layer on each of its routes: the
        // client's address, for handlers that ration by it (the admin token check), and the
        // request deadline.
        let router = router.clone();
        let limit = limits.request_timeout;
        let shared = Arc::new(Shared::new(limits.header_timeout));
        let service = {
            let shared = Arc::clone(&shared);
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let answer = router.clone().oneshot(req);
                shared.heads.fetch_add(1, Ordering::Relaxed);
                let shared = Arc::clone(&shared);
                async move {
                    let mut deadline = match shared.timers().request.take() {
                        Some(mut sleep) => {
                            sleep.as_mut().reset(after(limit));
                            sleep
                        }
                        None => Box::pin(tokio::time::sleep_until(after(limit))),
                    };
                    let response = tokio::select! {
                        biased;
                        answered = answer => match answered {
                            Ok(response) => response,
                            Err(never) => match never {},
                        },
                        () = deadline.as_mut() => timed_out(limit),
                    };
                    let mut deadline = Some(deadline);
                    std::future::poll_fn(|cx| {
                        shared.answered(cx, deadline.take());
                        std::task::Poll::Ready(())
                    })
                    .await;
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let stream = EdgeStream {
            inner: stream,
            limit: limits.header_timeout,
            shared,
            stalled: None,
            wrote_at: None,
        };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!(drain_timeout_secs = limits.drain_timeout.as_secs(),
                "connections still open after the drain deadline; closing them");
        }
    }
    Ok(())
}

/// `limit` from now; see [`later`].
fn after(limit: Duration) -> Instant {
    later(Instant::now(), limit)
}

/// `limit` after `from`; a limit too far out for an `Instant` is as good as never.
fn later(from: Instant, limit: Duration) -> Instant {
    from.checked_add(limit).unwrap_or(from + FAR_FUTURE)
}

/// What a connection's stream and its requests share, for the connection's life: a request
/// costs no timer of its own. Moving a registered timer later is one atomic store, where a
/// timer per request goes into the timer wheel and out again under its lock.
struct Shared {
    /// Request heads received and requests answered, together: odd while a request is
    /// being answered, even while the connection waits for its next head.
    heads: AtomicU64,
    /// The head deadline: how long the connection waits for its next head.
    header_timeout: Duration,
    timers: Mutex<Timers>,
}

struct Timers {
    /// The request deadline, moved forward for each request (and held by it meanwhile).
    request: Option<Pin<Box<Sleep>>>,
    /// When the wait for the next head ends: `header_timeout` after the connection opened,
    /// or after its last request was answered; when it fires, moved on to `header_timeout`
    /// after the answer's last write if that is later (see [`EdgeStream`]).
    head: Pin<Box<Sleep>>,
}

impl Shared {
    fn new(header_timeout: Duration) -> Self {
        Self {
            heads: AtomicU64::new(0),
            header_timeout,
            timers: Mutex::new(Timers {
                request: None,
                head: Box::pin(tokio::time::sleep_until(after(header_timeout))),
            }),
        }
    }

    fn timers(&self) -> std::sync::MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request has been answered (its deadline's timer is back): the wait for the next
    /// head begins, no earlier than the answer's last write. Its timer is polled here, from
    /// the connection's task, so that it wakes the connection when it ends even if nothing
    /// polls the stream before then (hyper reads again only when the socket says so).
    fn answered(&self, cx: &mut std::task::Context<'_>, request: Option<Pin<Box<Sleep>>>) {
        let mut timers = self.timers();
        timers.request = request;
        timers.head.as_mut().reset(after(self.header_timeout));
        let _ = timers.head.as_mut().poll(cx);
        self.heads.fetch_add(1, Ordering::Relaxed);
    }
}

/// A client connection with the edge's two stream deadlines:
/// - **Head**: between requests, the next request head must arrive within `limit` of when
///   the connection began waiting for it (the later of the answer being ready and its last
///   write that made progress, handed to the kernel), or reads fail and the connection
///   closes. This closes idle keep-alive connections too, and a head sent a byte at a time.
/// - **Write**: a write that stays blocked for `limit` (the client reads nothing, its window
///   stays full) fails, and the connection closes. Without it a client that pipelines
///   requests and never reads their answers holds its connection, and its place under the
///   cap, forever.
///
/// A request's body is read under the request's own deadline instead.
struct EdgeStream {
    inner: tokio::net::TcpStream,
    limit: Duration,
    shared: Arc<Shared>,
    stalled: Option<Pin<Box<Sleep>>>,
    /// When a write last made progress: the head deadline counts from no earlier than then.
    wrote_at: Option<Instant>,
}

impl EdgeStream {
    /// What a read returned, with the head deadline applied between requests.
    fn watch_head(
        &mut self,
        cx: &mut std::task::Context<'_>,
        read: std::task::Poll<std::io::Result<()>>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // Between requests (an even count), a read with nothing to give waits for a head.
        if read.is_ready() || self.shared.heads.load(Ordering::Relaxed) % 2 == 1 {
            return read;
        }
        let mut timers = self.shared.timers();
        if timers.head.as_mut().poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        // The answer may have been going out for a while after it was ready (a big one, to
        // a slow reader): the wait for the next head begins with its last write.
        if let Some(wrote) = self.wrote_at {
            let ends = later(wrote, self.limit);
            if ends > Instant::now() {
                timers.head.as_mut().reset(ends);
                if timers.head.as_mut().poll(cx).is_pending() {
                    return std::task::Poll::Pending;
                }
            }
        }
        std::task::Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no whole request head within the header timeout",
        )))
    }

    /// What a write returned, with the write deadline applied: a write still pending after
    /// `limit` fails; one that made progress resets the clock.
    fn watch_write(
        &mut self,
        cx: &mut std::task::Context<'_>,
        written: std::task::Poll<std::io::Result<usize>>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        if written.is_ready() {
            self.stalled = None;
            if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
                self.wrote_at = Some(Instant::now());
            }
            return written;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if sleep.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for the write deadline",
            )));
        }
        std::task::Poll::Pending
    }
}

impl tokio::io::AsyncRead for EdgeStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let read = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.watch_head(cx, read)
    }
}

impl tokio::io::AsyncWrite for EdgeStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_write(cx, written)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
