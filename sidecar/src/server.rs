//! The accept loop: HTTP/1.1 with keep-alive and h2c (prior knowledge) on
//! one port, a header-read timeout against slowloris, and a bounded drain of
//! in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

use crate::body::Body;
use crate::proxy::ClientAddr;

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    pub header_read_timeout: Duration,
    pub drain_timeout: Duration,
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish for up to `drain_timeout`.
pub async fn serve<S>(
    name: &'static str,
    listener: TcpListener,
    service: S,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let hyper_service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ClientAddr(peer));
            service.clone().oneshot(request)
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), hyper_service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(listener = name, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(listener = name, "draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(listener = name, "drained"),
        () = tokio::time::sleep(settings.drain_timeout) => {
            tracing::warn!(listener = name, timeout = ?settings.drain_timeout, "drain timed out; closing the remaining connections");
        }
    }
}
