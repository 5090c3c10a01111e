//! The one accept loop behind both of the operator's listeners (the admin
//! endpoints and the webhook): accept errors (EMFILE and friends) back off
//! instead of spinning, a TLS handshake and a request's headers each have a
//! deadline, and on shutdown the loop first lingers (it keeps accepting
//! and answering, with keep-alive off, while the Service's endpoints
//! forget this pod), then stops accepting and lets the connections in
//! flight finish, up to a drain timeout.
//!
//! Written here rather than taken from a crate: kubert, which has this
//! shape, pins older kube and hyper versions than this workspace uses.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Deadlines of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A client must finish the TLS handshake within this.
    pub handshake_timeout: Duration,
    /// A client must send a request's headers within this (HTTP/1.1; the
    /// same bounds an idle keep-alive connection).
    pub header_read_timeout: Duration,
    /// How long the listener keeps accepting and answering after shutdown
    /// begins. A Service routes new connections here, and clients reuse
    /// kept-alive ones, until the endpoint removal reaches every proxy;
    /// closing at once refuses them (the API server fails the admission).
    /// HTTP/1.1 answers carry `Connection: close` meanwhile, so the clients'
    /// pooled connections retire cleanly rather than being cut idle.
    pub linger: Duration,
    /// How long connections in flight may take to finish after lingering.
    pub drain_timeout: Duration,
    /// The first pause after a failed accept; it doubles up to
    /// [`Limits::max_accept_backoff`] and resets on success.
    pub min_accept_backoff: Duration,
    pub max_accept_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            linger: Duration::ZERO,
            drain_timeout: Duration::from_secs(20),
            min_accept_backoff: Duration::from_millis(5),
            max_accept_backoff: Duration::from_secs(1),
        }
    }
}

/// Where connections come from: a TCP listener, or a test double.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&mut self) -> impl Future<Output = std::io::Result<(Self::Io, SocketAddr)>> + Send;
}

impl Listener for TcpListener {
    type Io = TcpStream;
    async fn accept(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self).await
    }
}

/// What answers the requests of one listener.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send + 'static;
}

/// The pause after `failures` accept errors in a row.
pub fn accept_backoff(limits: &Limits, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    limits
        .min_accept_backoff
        .saturating_mul(factor)
        .min(limits.max_accept_backoff)
}

/// Serves `handler` on `listener` (over TLS when `tls` is set) until
/// `shutdown` resolves, lingers, then drains; returns once every
/// connection is closed, so the caller must await it before exiting.
/// `name` labels the log lines.
pub async fn serve<L: Listener, H: Handler>(
    name: &'static str,
    mut listener: L,
    tls: Option<TlsAcceptor>,
    handler: H,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let closing = Arc::new(AtomicBool::new(false));
    let mut failures = 0u32;
    // Shutdown, then the linger after it: `stop` resolves at the end.
    let stop = {
        let closing = closing.clone();
        async move {
            shutdown.await;
            closing.store(true, Ordering::Release);
            if !limits.linger.is_zero() {
                tracing::info!(
                    listener = name,
                    linger_ms = limits.linger.as_millis() as u64,
                    "shutting down: still answering while the endpoints catch up"
                );
                tokio::time::sleep(limits.linger).await;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let io = match accepted {
            Ok((io, _)) => {
                failures = 0;
                io
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = accept_backoff(&limits, failures);
                tracing::warn!(listener = name, error = %e, pause_ms = pause.as_millis() as u64, "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = &mut stop => break,
                }
            }
        };
        let builder = builder.clone();
        let handler = handler.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let closing = closing.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                let closing = closing.clone();
                async move {
                    let version = req.version();
                    let mut resp = handler.handle(req).await;
                    if closing.load(Ordering::Acquire) && version < http::Version::HTTP_2 {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let result = match tls {
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        limits.handshake_timeout,
                        acceptor.accept(io),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(listener = name, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(conn).await
                }
                None => {
                    let conn = builder
                        .serve_connection(TokioIo::new(io), service)
                        .into_owned();
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(listener = name, error = %e, "connection ended with an error");
            }
        });
    }
    // New connections are refused from here on, not queued.
    drop(listener);
    tracing::info!(listener = name, "stopped accepting; draining connections");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "connections still open after the drain timeout; closing them"
        );
    }
}

#[cfg(test)]
mod tests;
