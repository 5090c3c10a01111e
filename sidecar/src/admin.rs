//! The admin listener: `/healthz` (the process runs), `/readyz` (signing keys
//! are loaded for every issuer) and `/metrics` (Prometheus).

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::body::{Body, full};
use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// Answers one admin request.
pub fn handle(
    request: &Request<Incoming>,
    current: &ArcSwap<Runtime>,
    metrics: &Metrics,
) -> Response<Body> {
    match request.uri().path() {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let runtime = current.load();
            let issuers: Vec<_> = runtime
                .verifier
                .key_caches()
                .map(|c| {
                    let status = c.status();
                    json!({
                        "issuer": status.issuer,
                        "keys": status.keys,
                        "lastRefresh": status.last_refresh
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_secs()),
                    })
                })
                .collect();
            let ready = runtime.verifier.is_ready();
            let body = json!({ "ready": ready, "issuers": issuers }).to_string();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut response = text(status, &body);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        "/metrics" => {
            let mut response = text(StatusCode::OK, &metrics.encode());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(full(body.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The admin service, for [`crate::server::serve`].
pub fn service(
    current: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<Body>, Infallible>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<Incoming>| {
        std::future::ready(Ok(handle(&request, &current, &metrics)))
    })
}
