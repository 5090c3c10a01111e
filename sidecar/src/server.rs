//! The accept loop: HTTP/1.1 with keep-alive and h2c (prior knowledge) on
//! one port, every connection bounded, and a bounded drain of in-flight
//! requests on shutdown.
//!
//! | bound (`limits.*`) | when it trips | `attach_connections_closed_total{reason}` |
//! |---|---|---|
//! | `maxConnections` | a connection over it is closed at once | `max_connections` |
//! | `firstBytesTimeout` | no first bytes, or an unfinished HTTP/2 preface | `first_bytes_timeout` |
//! | `headerReadTimeout` | HTTP/1 request headers not complete in time | `header_read_timeout` |
//! | `idleTimeout` | no request in flight for that long (HTTP/2: GOAWAY) | `idle_timeout` |
//! | `http2KeepAlive*` | a PING not answered in time | `http2_keep_alive` |
//! | `http2Max*` | rapid reset, CONTINUATION or other floods: GOAWAY `ENHANCE_YOUR_CALM` | `http2_enhance_your_calm` |
//!
//! Settings are read from the current config generation for each new
//! connection, so a reload applies to connections accepted after it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::body::Body;
use crate::config::Limits;
use crate::metrics::{Metrics, ReasonLabels};
use crate::proxy::ClientAddr;
use crate::runtime::Runtime;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every listener of one gateway shares.
#[derive(Debug, Clone)]
pub struct ServerContext {
    current: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    /// Open connections, across every worker.
    open: Arc<AtomicUsize>,
}

impl ServerContext {
    pub fn new(current: Arc<ArcSwap<Runtime>>, metrics: Arc<Metrics>) -> Self {
        Self {
            current,
            metrics,
            open: Arc::default(),
        }
    }

    fn closed(&self, reason: &'static str) {
        self.metrics
            .connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// One open connection, counted while it lives.
struct OpenConnection {
    context: ServerContext,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.context.open.fetch_sub(1, Ordering::SeqCst);
        self.context.metrics.connections_open.dec();
    }
}

/// Connections of one listener still running, for the drain.
#[derive(Debug, Default)]
struct Live {
    count: AtomicUsize,
    done: Notify,
}

struct LiveGuard(Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

/// Requests in flight on one connection, and since when it has had none.
#[derive(Debug)]
struct Activity {
    active: AtomicUsize,
    idle_since: std::sync::Mutex<Instant>,
    changed: Notify,
}

struct ActiveRequest(Arc<Activity>);

impl ActiveRequest {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.active.fetch_add(1, Ordering::SeqCst);
        Self(activity.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
            self.0.changed.notify_waiters();
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish for up to `drainTimeout`.
pub async fn serve<S>(
    name: &'static str,
    listener: TcpListener,
    service: S,
    context: ServerContext,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let live = Arc::new(Live::default());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let limits = context.current.load().config.limits.clone();
        if context.open.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            context.open.fetch_sub(1, Ordering::SeqCst);
            context.closed("max_connections");
            drop(stream);
            continue;
        }
        context.metrics.connections_open.inc();
        let open = OpenConnection {
            context: context.clone(),
        };
        live.count.fetch_add(1, Ordering::SeqCst);
        let live_guard = LiveGuard(live.clone());
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let stop = stop_rx.clone();
        let context = context.clone();
        tokio::spawn(async move {
            let _open = open;
            let _live = live_guard;
            serve_connection(name, stream, peer, service, &limits, &context, stop).await;
        });
    }
    drop(listener);
    tracing::info!(listener = name, "draining in-flight requests");
    let _ = stop_tx.send(true);
    let drain_timeout = context.current.load().config.limits.drain_timeout;
    let drained = async {
        loop {
            let done = live.done.notified();
            if live.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    };
    tokio::select! {
        () = drained => tracing::info!(listener = name, "drained"),
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(listener = name, timeout = ?drain_timeout, "drain timed out; closing the remaining connections");
        }
    }
}

/// Waits until the peer has sent its first bytes and, if they start the
/// HTTP/2 preface, the whole preface; says whether it speaks HTTP/2 (None:
/// closed first). Reads nothing: hyper sees every byte.
async fn first_bytes(stream: &TcpStream) -> std::io::Result<Option<bool>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None); // closed before a byte
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(false));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(true));
        }
        // Part of the preface is here: wait for the rest (peek returns at
        // once while data is queued, so poll gently).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(limits.http2_max_header_list_size)
        .max_pending_accept_reset_streams(limits.http2_max_pending_reset_streams);
    builder
}

async fn serve_connection<S>(
    name: &'static str,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    service: S,
    limits: &Limits,
    context: &ServerContext,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let http2 = match tokio::time::timeout(limits.first_bytes_timeout, first_bytes(&stream)).await {
        Ok(Ok(Some(http2))) => http2,
        Ok(_) => return,
        Err(_) => {
            context.closed("first_bytes_timeout");
            return;
        }
    };
    let activity = Arc::new(Activity {
        active: AtomicUsize::new(0),
        idle_since: std::sync::Mutex::new(Instant::now()),
        changed: Notify::new(),
    });
    let per_request = activity.clone();
    let hyper_service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ClientAddr(peer));
        let active = ActiveRequest::new(&per_request);
        let call = service.clone().oneshot(request);
        async move {
            let response = call.await?;
            Ok::<_, Infallible>(crate::body::guard_response(response, active))
        }
    });
    let builder = builder(limits);
    let connection = builder.serve_connection(TokioIo::new(stream), hyper_service);
    tokio::pin!(connection);
    let idle_timeout = limits.idle_timeout;
    let mut shutting_down = false;
    loop {
        let idle = async {
            loop {
                let changed = activity.changed.notified();
                if activity.active.load(Ordering::SeqCst) == 0 {
                    let since = *activity
                        .idle_since
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    tokio::select! {
                        () = tokio::time::sleep_until(since + idle_timeout) => {
                            if activity.active.load(Ordering::SeqCst) == 0 {
                                return;
                            }
                        }
                        () = changed => {}
                    }
                } else {
                    changed.await;
                }
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    if let Some(reason) = error_reason(&*e, http2) {
                        context.closed(reason);
                    }
                    tracing::debug!(listener = name, error = %e, "connection ended with an error");
                }
                return;
            }
            () = idle, if !shutting_down => {
                context.closed("idle_timeout");
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            Ok(_) = stop.wait_for(|s| *s), if !shutting_down => {
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
}

/// The bound a connection error shows tripped, if any.
fn error_reason(error: &(dyn std::error::Error + 'static), http2: bool) -> Option<&'static str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return Some(match h2.reason() {
                Some(h2::Reason::ENHANCE_YOUR_CALM) => "http2_enhance_your_calm",
                _ if h2.is_io() => return None,
                _ => "http2_protocol_error",
            });
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && hyper.is_timeout()
        {
            // HTTP/1 header read, or an HTTP/2 PING not answered.
            return Some(if http2 {
                "http2_keep_alive"
            } else {
                "header_read_timeout"
            });
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
