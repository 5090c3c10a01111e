//! The request path, one tower layer per concern, composed top to bottom:
//!
//! ```text
//! snapshot             pin this request to the current config generation
//! observe              metrics: requests by status and reason, in-flight
//! audit_trail          request id; one audit line per decision
//! rescue               GatewayError -> 401/403/413/502/503/504 + JSON body
//! catch_panic          a panic below becomes a 500; guards release on unwind
//! loadshed             503 at once past maxInFlightRequests
//! client_headers       hop-by-hop headers out first; Connection naming a
//!                      gateway header refused; X-Forwarded-* only from
//!                      trusted proxies
//! strip_identity       drop every client-sent X-Attach-* header, any spelling
//! protected_resource   RFC 9728 metadata, served without a token
//! authenticate         bearer token or API key -> verified Identity, or
//!                      refuse
//! keys                 /.attach/keys: mint, list, revoke personal API keys
//! authorize            endpoint, canonical body and model, allow rules;
//!                      trims model lists (MCP: each JSON-RPC message by
//!                      its tool, resource or prompt; trims their lists)
//! exchange             RFC 8693 token exchange, before any quota slot is held
//! admit                quota admission (429); usage metered and charged
//! identity_headers     X-Attach-* from the Identity; drop Authorization and
//!                      client-sent downstream-token headers; set the exchanged one
//! forward              stream to the model on loopback and back
//! ```

pub mod admit;
pub mod audit_trail;
pub mod authenticate;
pub mod authorize;
mod authorize_mcp;
pub mod body_budget;
pub mod catch_panic;
pub mod client_headers;
pub mod exchange;
pub mod forward;
pub mod identity_headers;
pub mod keys;
pub mod loadshed;
pub mod observe;
pub mod protected_resource;
pub mod snapshot;
pub mod strip_identity;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};
use tower::{Service, ServiceBuilder};

use crate::body::Body;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::rescue::RescueLayer;
use crate::runtime::Runtime;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The client's address, set by the server on every request.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The whole request path.
pub fn stack<B>(
    current: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
) -> impl Service<Request<B>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    stack_with(current, metrics, forward::Forward)
}

/// The request path with `upstream` in place of forwarding to the model
/// (tests put a service that fails or panics there).
pub fn stack_with<B, U>(
    current: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    upstream: U,
) -> impl Service<Request<B>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
    U: Service<Request<Body>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    U::Future: Send + 'static,
{
    ServiceBuilder::new()
        .layer(snapshot::SnapshotLayer::new(current))
        .layer(observe::ObserveLayer::new(metrics))
        .layer(audit_trail::AuditLayer)
        .layer(RescueLayer)
        .layer(catch_panic::CatchPanicLayer)
        .layer(loadshed::LoadShedLayer::default())
        .layer(client_headers::ClientHeadersLayer)
        .layer(strip_identity::StripIdentityLayer)
        .layer(protected_resource::ProtectedResourceLayer)
        .layer(authenticate::AuthenticateLayer)
        .layer(keys::KeysLayer)
        .layer(authorize::AuthorizeLayer)
        .layer(exchange::ExchangeLayer)
        .layer(admit::AdmitLayer)
        .layer(identity_headers::IdentityHeadersLayer)
        .service(upstream)
}

/// The config generation this request is served by (set by `snapshot`).
pub(crate) fn runtime_of<B>(
    request: &Request<B>,
) -> Result<Arc<Runtime>, crate::error::GatewayError> {
    request
        .extensions()
        .get::<Arc<Runtime>>()
        .cloned()
        .ok_or(crate::error::GatewayError::Internal)
}

/// Calls `inner` and boxes its future where the body type is concrete (a
/// workaround for rustc's higher-ranked `Send` inference on `dyn Error`
/// lifetimes inside async blocks).
pub(crate) fn call_boxed<S>(
    inner: &mut S,
    request: Request<Body>,
) -> BoxFuture<Result<Response<Body>, GatewayError>>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    Box::pin(inner.call(request))
}

#[cfg(test)]
mod release_tests;
#[cfg(test)]
mod tests;
