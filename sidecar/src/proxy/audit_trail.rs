//! Gives every request an id and an audit trail, and writes the trail's line
//! once the answer is known. Answers whose usage is metered are written by
//! the meter when they end, with their token counts.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::audit::AuditTrail;
use crate::body::Body;
use crate::rescue::Reason;

/// The request id header: taken from the client when it is sane, else made up.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Set on requests that are not audited (probes on unauthenticated paths).
#[derive(Debug, Clone, Copy)]
pub struct NotAudited;

/// Writes to the audit sink of the request's config generation (set by
/// `snapshot`, above this layer), so a reload that changes the audit
/// settings takes effect for the next request.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditLayer;

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Audit { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Audit<S> {
    inner: S,
}

fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map_or_else(|| format!("{:016x}", rand_u64()), str::to_owned)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

impl<S, B> Service<Request<B>> for Audit<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let sink = match super::runtime_of(&request) {
            Ok(runtime) if runtime.audit.is_enabled() => runtime.audit.clone(),
            _ => return Box::pin(self.inner.call(request)),
        };
        let id = request_id(request.headers());
        if let Ok(value) = HeaderValue::from_str(&id) {
            request.headers_mut().insert(REQUEST_ID, value);
        }
        let trail = Arc::new(AuditTrail::new(id, sink));
        request.extensions_mut().insert(trail.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let audited = response.extensions().get::<NotAudited>().is_none();
            if !audited {
                trail.skip();
            }
            if audited && !trail.is_deferred() {
                let reason = response
                    .extensions()
                    .get::<Reason>()
                    .map_or("forwarded", |r| r.0);
                trail.finish(response.status().as_u16(), reason, None);
            }
            Ok(response)
        })
    }
}
