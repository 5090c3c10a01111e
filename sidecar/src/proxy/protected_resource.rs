//! RFC 9728 OAuth protected-resource metadata at
//! `/.well-known/oauth-protected-resource`, served without a token so that
//! agents and MCP clients can find where to log in.

use std::task::{Context, Poll};

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response};
use tower::{Layer, Service};

use super::{BoxFuture, runtime_of};
use crate::body::{Body, full};
use crate::error::GatewayError;
use crate::rescue::Reason;
use crate::runtime::Runtime;

/// Where the metadata is served.
pub const PATH: &str = "/.well-known/oauth-protected-resource";

/// The resource identifier: the configured one, or `http://<Host>` when the
/// `Host` header is a plain host name (anything else is not echoed).
pub fn resource_url<B>(runtime: &Runtime, request: &Request<B>) -> Option<String> {
    if let Some(resource) = &runtime.config.resource.resource {
        return Some(resource.trim_end_matches('/').to_owned());
    }
    let host = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))?;
    let plain = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    plain.then(|| format!("http://{host}"))
}

/// The metadata URL named in `WWW-Authenticate` challenges.
pub fn metadata_url<B>(runtime: &Runtime, request: &Request<B>) -> Option<String> {
    resource_url(runtime, request).map(|r| format!("{r}{PATH}"))
}

fn document(runtime: &Runtime, resource: Option<String>) -> serde_json::Value {
    let config = &runtime.config;
    let mut scopes = config.resource.scopes_supported.clone();
    if scopes.is_empty() {
        for issuer in &config.issuers {
            for scope in &issuer.required_scopes {
                if !scopes.contains(scope) {
                    scopes.push(scope.clone());
                }
            }
        }
    }
    let servers: Vec<&str> = config.issuers.iter().map(|i| i.issuer.as_str()).collect();
    serde_json::json!({
        "resource": resource,
        "authorization_servers": servers,
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": "attach-gateway",
    })
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ProtectedResourceLayer;

impl<S> Layer<S> for ProtectedResourceLayer {
    type Service = ProtectedResource<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ProtectedResource { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ProtectedResource<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ProtectedResource<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let wanted =
            request.uri().path() == PATH && matches!(*request.method(), Method::GET | Method::HEAD);
        if !wanted {
            return Box::pin(self.inner.call(request));
        }
        let answer = runtime_of(&request).map(|runtime| {
            let doc = document(&runtime, resource_url(&runtime, &request));
            let mut response = Response::new(full(doc.to_string()));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
            response
                .extensions_mut()
                .insert(Reason("protected_resource_metadata"));
            response
        });
        Box::pin(std::future::ready(answer))
    }
}
