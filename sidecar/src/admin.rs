//! The admin listener: `/healthz` (the process runs), `/readyz` (signing keys
//! are loaded for every issuer) and `/metrics` (Prometheus).

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::app_probe::AppProbes;
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
            let body = json!({
                "ready": ready,
                "issuers": issuers,
                // Settings changed by a reload that wait for a restart.
                "restartRequired": runtime.restart_required,
            })
            .to_string();
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
        #[cfg(feature = "test-clock")]
        "/test/clock/advance" if request.method() == http::Method::POST => {
            // Test builds only: moves the frozen quota clock.
            let seconds = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("seconds="))
                .and_then(|n| n.parse::<u64>().ok());
            match (crate::quota::clock::test_clock(), seconds) {
                (Some(clock), Some(seconds)) => {
                    clock.advance(seconds);
                    text(
                        StatusCode::OK,
                        &format!("{}\n", crate::quota::clock::Clock::now(&*clock)),
                    )
                }
                _ => text(StatusCode::BAD_REQUEST, "no test clock, or no ?seconds=N\n"),
            }
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

/// The admin service, for [`crate::server::serve`]: the endpoints above,
/// and the application probes under `/probe/` (see [`crate::app_probe`]).
pub fn service(
    current: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    probes: Arc<AppProbes>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = futures::future::BoxFuture<'static, Result<Response<Body>, Infallible>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<Incoming>| {
        let path = request.uri().path();
        if path.starts_with(crate::app_probe::PATH_PREFIX) {
            let probes = probes.clone();
            let path = path.to_owned();
            return Box::pin(async move {
                Ok(match probes.run(&path).await {
                    Some(status) => {
                        let mut response = Response::new(crate::body::empty());
                        *response.status_mut() = status;
                        response
                    }
                    None => text(StatusCode::NOT_FOUND, "no such probe\n"),
                })
            }) as futures::future::BoxFuture<'static, _>;
        }
        let response = handle(&request, &current, &metrics);
        Box::pin(std::future::ready(Ok(response)))
    })
}
