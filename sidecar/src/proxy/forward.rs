//! Forwards the request to the model and streams the answer back. Neither
//! body is buffered: NDJSON and SSE chunks reach the client as the model
//! writes them.
//!
//! - The request body is capped (413 when over, declared or streamed).
//! - Hop-by-hop headers are dropped both ways (a request's were already
//!   dropped by `client_headers`, before the gateway set any header); `Host`
//!   becomes the model's own address (Ollama refuses foreign `Host`s on
//!   loopback), and the original goes in `X-Forwarded-Host` unless a trusted
//!   proxy already said where the request came from.
//! - With traces on, the request carries its client span's `traceparent`
//!   (see [`crate::traces`]) in place of the caller's.
//! - Connection refused: 502. Connect or response-header timeout: 504.
//!   There is no total timeout: a stream runs as long as the model writes.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body_util::{LengthLimitError, Limited};
use tower::Service;

use super::authenticate::Unauthenticated;
use super::authorize::{Authorized, BodyReadWhole};
use super::{BoxFuture, ClientAddr};
use crate::audit::AuditTrail;
use crate::body::{Body, BoxError, boxed};
use crate::error::GatewayError;
use crate::metrics::gen_ai;
use crate::policy::EndpointClass;
use crate::runtime::Runtime;
use crate::traces::request_span::ModelCall;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// RFC 9110 §7.6.1 connection-specific headers.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Removes hop-by-hop headers, including any named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("upgrade");
}

/// The innermost service: sends the request to the model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forward;

impl<B> Service<Request<B>> for Forward
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(forward(request))
    }
}

async fn forward<B>(request: Request<B>) -> Result<Response<Body>, GatewayError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let runtime: Arc<Runtime> = super::runtime_of(&request)?;
    let arrived = super::observe::Arrived::of(&request);
    // A body the gateway read whole was bounded when it was read.
    let limit = if request.extensions().get::<BodyReadWhole>().is_some() {
        u64::MAX
    } else {
        runtime.config.limits.max_request_body_bytes
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }

    let (mut parts, body) = request.into_parts();
    let upstream = &runtime.upstream;
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(upstream.scheme.clone());
    uri.authority = Some(upstream.authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(uri).map_err(|_| GatewayError::Internal)?;
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if let Some(host) = headers.remove(HOST)
        && !headers.contains_key(X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
    if let Some(ClientAddr(addr)) = parts.extensions.get::<ClientAddr>() {
        let ip = addr.ip().to_string();
        let value = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    // Probes on unauthenticated paths are not traced: their trail is
    // skipped, and a span made here would outlive it.
    if let Some(trail) = parts.extensions.get::<Arc<AuditTrail>>()
        && parts.extensions.get::<Unauthenticated>().is_none()
    {
        trail.leave_for(
            &traced_upstream(&runtime, parts.extensions.get::<Authorized>()),
            headers,
        );
    }
    // Extensions are ours, not the model's.
    parts.extensions = http::Extensions::new();

    let body = boxed(Limited::new(
        body,
        usize::try_from(limit).unwrap_or(usize::MAX),
    ));
    let upstream_request = Request::from_parts(parts, body);

    let started = Instant::now();
    runtime
        .metrics
        .request_overhead
        .observe(started.saturating_duration_since(arrived).as_secs_f64());
    let sent = tokio::time::timeout(
        upstream.response_header_timeout,
        upstream.client().request(upstream_request),
    )
    .await;
    runtime
        .metrics
        .upstream_duration
        .observe(started.elapsed().as_secs_f64());
    let response = match sent {
        Err(_) => return Err(GatewayError::UpstreamTimeout),
        Ok(Err(e)) => return Err(classify(&e, limit)),
        Ok(Ok(response)) => response,
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, boxed(body)))
}

/// What the client span says of the model's part.
fn traced_upstream(runtime: &Runtime, authorized: Option<&Authorized>) -> ModelCall {
    let inference = authorized.filter(|a| a.class == EndpointClass::Inference);
    ModelCall {
        operation: inference.map(|a| gen_ai::operation_name(&a.path)),
        provider: gen_ai::provider_name(runtime.config.upstream.engine),
        model: authorized
            .and_then(|a| a.model.as_ref())
            .map(|m| m.label().to_owned()),
        address: runtime.upstream.authority.to_string(),
    }
}

/// 413 when our own body cap tripped, 504 for a connect timeout, else 502.
fn classify(error: &hyper_util::client::legacy::Error, limit: u64) -> GatewayError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<LengthLimitError>() {
            return GatewayError::PayloadTooLarge { limit };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return GatewayError::UpstreamTimeout;
        }
        source = e.source();
    }
    tracing::warn!(error = %crate::idp_client::error_chain(error), "forwarding to the model failed");
    GatewayError::UpstreamUnavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_named_by_connection() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }
}
