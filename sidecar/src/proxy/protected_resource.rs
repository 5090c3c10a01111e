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

/// The metadata URL named in `WWW-Authenticate` challenges: the
/// well-known path inserted between the resource's host and its path
/// (RFC 9728 §3.1), so `https://tools.example/mcp` has its metadata at
/// `https://tools.example/.well-known/oauth-protected-resource/mcp`.
pub fn metadata_url<B>(runtime: &Runtime, request: &Request<B>) -> Option<String> {
    resource_url(runtime, request).map(|r| well_known(&r))
}

fn well_known(resource: &str) -> String {
    match resource.parse::<http::Uri>() {
        Ok(uri) if uri.scheme().is_some() && uri.authority().is_some() => {
            let path = uri.path().trim_end_matches('/');
            format!(
                "{}://{}{PATH}{path}",
                uri.scheme_str().unwrap_or("https"),
                uri.authority().map_or("", |a| a.as_str())
            )
        }
        _ => format!("{resource}{PATH}"),
    }
}

/// The scopes every token must carry: the issuers' `requiredScopes`, each
/// once.
fn required_scopes(runtime: &Runtime) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in runtime
        .config
        .issuers
        .iter()
        .flat_map(|i| &i.required_scopes)
    {
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    scopes
}

/// The scopes the metadata advertises: the configured ones, else the
/// issuers' required scopes (and, for an MCP server, the scopes its rules
/// name, so that its clients learn which scopes its tools need).
pub fn scopes_supported(runtime: &Runtime) -> Vec<String> {
    let config = &runtime.config;
    if !config.resource.scopes_supported.is_empty() {
        return config.resource.scopes_supported.clone();
    }
    let mut scopes = required_scopes(runtime);
    if config.upstream.engine == crate::canonical::Engine::Mcp {
        for scope in runtime.policy.scopes() {
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
    }
    scopes
}

/// The scopes an MCP server's 401 challenges name: those every token must
/// carry. A tool's own scope is asked for when that tool is called
/// (`insufficient_scope`), so that a login asks for no more than basic
/// access needs.
pub fn challenge_scope(runtime: &Runtime) -> Option<String> {
    if runtime.config.upstream.engine != crate::canonical::Engine::Mcp {
        return None;
    }
    let scopes = required_scopes(runtime);
    (!scopes.is_empty()).then(|| scopes.join(" "))
}

fn document(runtime: &Runtime, resource: Option<String>) -> serde_json::Value {
    let config = &runtime.config;
    let scopes = scopes_supported(runtime);
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
        // The gateway fronts one resource: its metadata is served at the
        // well-known path, with or without the resource's path after it.
        let path = request.uri().path();
        let wanted = (path == PATH || path.strip_prefix(PATH).is_some_and(|p| p.starts_with('/')))
            && matches!(*request.method(), Method::GET | Method::HEAD);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
    use super::*;
    use crate::canonical::Engine;
    use crate::claims::Preset;
    use crate::config::{GatewayConfig, IssuerConfig};
    use crate::policy::{EndpointClass, Rule, Subjects};

    #[test]
    fn the_well_known_path_goes_between_the_host_and_the_resources_path() {
        for (resource, want) in [
            (
                "https://tools.example/mcp",
                "https://tools.example/.well-known/oauth-protected-resource/mcp",
            ),
            (
                "https://tools.example/",
                "https://tools.example/.well-known/oauth-protected-resource",
            ),
            (
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080/.well-known/oauth-protected-resource",
            ),
            // Not an absolute URL: the path is put after it as it is.
            ("tools", "tools/.well-known/oauth-protected-resource"),
            (
                "tools.example:8080",
                "tools.example:8080/.well-known/oauth-protected-resource",
            ),
        ] {
            assert_eq!(well_known(resource), want, "{resource}");
        }
    }
    use crate::runtime::Shared;

    /// A runtime whose two issuers require `use` (one of them `use` twice
    /// over: each scope is named once), with a rule naming `deploy`.
    fn runtime(engine: Engine, configured: &[&str]) -> Runtime {
        let issuer = |name: &str, required: &[&str]| {
            let mut issuer = IssuerConfig::new(name, vec!["aud".into()], Preset::Generic);
            issuer.jwks = Some(serde_json::json!({"keys": []}));
            issuer.required_scopes = required.iter().map(|s| (*s).to_owned()).collect();
            issuer
        };
        let mut config = GatewayConfig::new(vec![
            issuer("https://a.test", &["use"]),
            issuer("https://b.test", &["use", "read"]),
        ]);
        config.upstream.engine = engine;
        config.resource.scopes_supported = configured.iter().map(|s| (*s).to_owned()).collect();
        let rule = |subjects: Subjects, targets: &[&str]| {
            Rule::new("deployers", subjects, targets, &[EndpointClass::Inference])
        };
        let deployers = Subjects {
            scopes: vec!["deploy".into(), "use".into()],
            ..Subjects::default()
        };
        config.access.rules = vec![match engine {
            Engine::Mcp => rule(deployers.of_issuer("https://a.test"), &["tool:deploy"]),
            _ => rule(deployers.of_issuer("https://a.test"), &["*"]),
        }];
        Runtime::build(config, None, &Shared::new()).unwrap()
    }

    #[tokio::test]
    async fn the_metadata_names_required_scopes_then_an_mcp_servers_rule_scopes() {
        assert_eq!(
            scopes_supported(&runtime(Engine::Vllm, &[])),
            ["use", "read"]
        );
        assert_eq!(
            scopes_supported(&runtime(Engine::Mcp, &[])),
            ["use", "read", "deploy"]
        );
        // What the config says, when it says anything, whatever the engine.
        assert_eq!(scopes_supported(&runtime(Engine::Mcp, &["x"])), ["x"]);
    }

    #[tokio::test]
    async fn an_mcp_servers_challenge_names_only_the_required_scopes() {
        assert_eq!(
            challenge_scope(&runtime(Engine::Mcp, &["x"])).as_deref(),
            Some("use read")
        );
        assert_eq!(challenge_scope(&runtime(Engine::Ollama, &[])), None);
    }
}
