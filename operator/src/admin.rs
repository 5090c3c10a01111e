//! The operator's HTTP endpoints: `/metrics`, `/healthz` (the process
//! answers) and `/readyz` (started and connected to the API server).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the endpoints report on.
#[derive(Debug, Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
}

/// Binds `addr`; a port in use is reported before anything else starts.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the endpoints until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    limits: crate::serve::Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::serve::serve("admin", listener, None, health, limits, shutdown).await;
}

impl crate::serve::Handler for Health {
    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static {
        std::future::ready(answer(&req, self))
    }
}

fn answer(req: &Request<Incoming>, health: &Health) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if health.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
        "/metrics" => {
            let mut resp = text(StatusCode::OK, health.metrics.encode());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}
