//! Gives every request an id and an audit trail, and writes the trail's line
//! (and ends its spans, when traces are on) once the answer is known.
//! Answers whose usage is metered are written by the meter when they end,
//! with their token counts.

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
        .map_or_else(new_request_id, str::to_owned)
}

/// A made-up request id: a random (version 4) UUID, the form servers check
/// when they validate the header (llama-cpp-python's server, through
/// starlette-context, answers 400 to any other).
fn new_request_id() -> String {
    uuid_v4(rand::random())
}

/// The version 4 UUID of 16 random bytes (RFC 9562: the version and the
/// variant bits set). Written here rather than with another crate: it is
/// these few lines.
fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
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
        let runtime = match super::runtime_of(&request) {
            Ok(runtime) if runtime.audit.is_enabled() || runtime.traces.is_on() => runtime,
            _ => return Box::pin(self.inner.call(request)),
        };
        let id = request_id(request.headers());
        if let Ok(value) = HeaderValue::from_str(&id) {
            request.headers_mut().insert(REQUEST_ID, value);
        }
        let span = runtime.traces.request(request.headers(), request.method());
        let trail = Arc::new(AuditTrail::new(id, runtime.audit.clone()).with_span(span));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_carry_their_version_and_variant_whatever_the_random_bytes() {
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let counting: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(uuid_v4(counting), "00112233-4455-4677-8899-aabbccddeeff");
    }

    #[test]
    fn a_made_up_request_id_is_a_version_4_uuid_and_a_sane_client_id_is_kept() {
        let mut headers = http::HeaderMap::new();
        let id = request_id(&headers);
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(
            id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(groups[2].starts_with('4'), "{id}");
        assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(request_id(&headers), id, "each request gets its own");
        headers.insert(REQUEST_ID, HeaderValue::from_static("client-chosen-1"));
        assert_eq!(request_id(&headers), "client-chosen-1");
        headers.insert(REQUEST_ID, HeaderValue::from_static("two words"));
        assert_ne!(request_id(&headers), "two words");
    }
}
