//! The edge of the stack: turns a [`GatewayError`] into its HTTP answer, with
//! a small JSON body (`{"error": ..., "message": ...}`) that never echoes the
//! token, and the RFC 6750 `WWW-Authenticate` challenge for auth failures.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::body::{Body, full};
use crate::error::GatewayError;
use crate::jwt::AuthError;

/// Why a response was produced, for the metrics layer. Set on every response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason(pub &'static str);

/// Builds the answer for `error`.
pub fn rescue(error: &GatewayError) -> Response<Body> {
    use crate::exchange::ExchangeError;
    let (status, code) = match error {
        GatewayError::Auth { error, .. } => match error {
            AuthError::KeysUnavailable | AuthError::ApiKeyStoreUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            }
            AuthError::InsufficientScope { .. } => (StatusCode::FORBIDDEN, "insufficient_scope"),
            AuthError::MissingToken => (StatusCode::UNAUTHORIZED, "unauthorized"),
            _ => (StatusCode::UNAUTHORIZED, "invalid_token"),
        },
        GatewayError::DenyAll(_) | GatewayError::Forbidden(_) => {
            (StatusCode::FORBIDDEN, "forbidden")
        }
        GatewayError::BadPath(_)
        | GatewayError::BadRequest(_)
        | GatewayError::BadBody(_)
        | GatewayError::BadMessage(_)
        | GatewayError::BadHeader(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        GatewayError::QuotaExceeded(_) => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
        GatewayError::QuotaUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "quota_unavailable"),
        GatewayError::QuotaStoreFull => (StatusCode::SERVICE_UNAVAILABLE, "quota_store_full"),
        GatewayError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        GatewayError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
        GatewayError::PayloadTooLarge { .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        }
        GatewayError::UpstreamUnavailable => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
        GatewayError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        GatewayError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        GatewayError::Keys(e) => e.status(),
        GatewayError::Exchange(e) => match e {
            ExchangeError::Refused(_) => (StatusCode::FORBIDDEN, "token_exchange_refused"),
            ExchangeError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "token_exchange_unavailable",
            ),
            ExchangeError::BadResponse(_) => (StatusCode::BAD_GATEWAY, "token_exchange_failed"),
        },
    };
    let mut body = serde_json::json!({ "error": code, "message": error.to_string() });
    if let GatewayError::Forbidden(kind) = error {
        // Which kind of check failed; never the rules themselves.
        body["denied_by"] = kind.as_str().into();
    }
    if let GatewayError::BadBody(e) = error {
        // What was wrong with the body, for the client to fix.
        body["reason"] = e.code().into();
    }
    if let GatewayError::BadMessage(e) = error {
        body["reason"] = e.code().into();
    }
    if let GatewayError::BadHeader(_) = error {
        body["reason"] = "connection_names_gateway_header".into();
    }
    if let GatewayError::QuotaExceeded(r) = error {
        body["limit"] = r.limit_name.clone().into();
        body["kind"] = r.kind.as_str().into();
        body["retry_after"] = r.retry_after.into();
    }
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let GatewayError::Auth {
        error,
        resource_metadata,
        scope,
    } = error
    {
        if let Some(challenge) = challenge(error, resource_metadata.as_deref(), scope.as_deref()) {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        if matches!(
            error,
            AuthError::KeysUnavailable | AuthError::ApiKeyStoreUnavailable
        ) {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
    }
    if matches!(
        error,
        GatewayError::PayloadTooLarge { .. }
            | GatewayError::BadRequest(_)
            | GatewayError::BadHeader(_)
            | GatewayError::BadBody(crate::canonical::BodyError::ContentEncoding(_))
            | GatewayError::BodyTimeout
            | GatewayError::Overloaded(_)
    ) {
        // The rest of the request body was not read: this connection cannot
        // carry another request, and the client must not try.
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if matches!(
        error,
        GatewayError::QuotaUnavailable
            | GatewayError::Keys(crate::keys::KeysError::Unavailable)
            | GatewayError::Overloaded(_)
            | GatewayError::Exchange(ExchangeError::Unavailable)
    ) {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if matches!(error, GatewayError::QuotaStoreFull) {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("60"));
    }
    if let GatewayError::QuotaExceeded(r) = error {
        // RFC 9110 Retry-After, and the IETF RateLimit-Policy / RateLimit
        // fields (draft-ietf-httpapi-ratelimit-headers).
        let policy = match r.window {
            0 => format!("\"{}\";q={}", r.limit_name, r.quota),
            w => format!("\"{}\";q={};w={w}", r.limit_name, r.quota),
        };
        let state = format!("\"{}\";r=0;t={}", r.limit_name, r.retry_after);
        for (name, value) in [
            (RETRY_AFTER.as_str(), r.retry_after.to_string()),
            ("ratelimit-policy", policy),
            ("ratelimit", state),
        ] {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
    }
    response.extensions_mut().insert(Reason(error.reason()));
    response
}

/// The RFC 6750 §3 challenge. A request without a token gets no `error`
/// attribute; a refused token gets `invalid_token` and a short description;
/// a token without a required scope gets `insufficient_scope`.
fn challenge(
    error: &AuthError,
    resource_metadata: Option<&str>,
    scope: Option<&str>,
) -> Option<HeaderValue> {
    let mut value = String::from(r#"Bearer realm="attach-gateway""#);
    // The scopes to ask for, where the challenge names none of its own.
    let scope = scope
        .filter(|s| !s.is_empty() && !matches!(error, AuthError::InsufficientScope { .. }))
        .map(|s| format!(r#", scope="{}""#, quote_safe(s)))
        .unwrap_or_default();
    match error {
        AuthError::MissingToken => value.push_str(&scope),
        AuthError::KeysUnavailable | AuthError::ApiKeyStoreUnavailable => return None,
        AuthError::InsufficientScope { required } => {
            value.push_str(r#", error="insufficient_scope""#);
            value.push_str(&format!(r#", scope="{}""#, quote_safe(&required.join(" "))));
        }
        other => {
            value.push_str(r#", error="invalid_token""#);
            value.push_str(&format!(
                r#", error_description="{}""#,
                quote_safe(&other.to_string())
            ));
            value.push_str(&scope);
        }
    }
    if let Some(url) = resource_metadata {
        value.push_str(&format!(r#", resource_metadata="{}""#, quote_safe(url)));
    }
    HeaderValue::from_str(&value).ok()
}

/// Drops anything that could break out of a quoted-string.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"' && *c != '\\')
        .collect()
}

/// The layer that applies [`rescue`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner }
    }
}

/// Turns the inner service's errors into responses.
#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            Ok(match future.await {
                Ok(response) => response,
                Err(error) => rescue(&error),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(error: AuthError) -> Response<Body> {
        rescue(&GatewayError::Auth {
            error,
            resource_metadata: Some(
                "https://llm.example/.well-known/oauth-protected-resource".into(),
            ),
            scope: None,
        })
    }

    fn www(r: &Response<Body>) -> &str {
        r.headers()[WWW_AUTHENTICATE].to_str().unwrap()
    }

    #[test]
    fn missing_token_gets_a_bare_challenge() {
        let r = auth(AuthError::MissingToken);
        assert_eq!(r.status(), 401);
        assert_eq!(
            www(&r),
            r#"Bearer realm="attach-gateway", resource_metadata="https://llm.example/.well-known/oauth-protected-resource""#
        );
    }

    #[test]
    fn bad_token_gets_invalid_token_and_a_description() {
        let r = auth(AuthError::Expired);
        assert_eq!(r.status(), 401);
        assert!(www(&r).contains(r#"error="invalid_token", error_description="token expired""#));
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn insufficient_scope_is_403_with_the_scope() {
        let r = auth(AuthError::InsufficientScope {
            required: vec!["llm.invoke".into()],
        });
        assert_eq!(r.status(), 403);
        assert!(www(&r).contains(r#"error="insufficient_scope", scope="llm.invoke""#));
    }

    /// An MCP server's 401 names the scopes every token needs, so a
    /// client's login asks for them; an `insufficient_scope` names only
    /// its own.
    #[test]
    fn a_challenge_names_the_scopes_to_ask_for() {
        let with_scope = |error| {
            rescue(&GatewayError::Auth {
                error,
                resource_metadata: None,
                scope: Some("mcp:use".into()),
            })
        };
        let r = with_scope(AuthError::MissingToken);
        assert_eq!(www(&r), r#"Bearer realm="attach-gateway", scope="mcp:use""#);
        let r = with_scope(AuthError::Expired);
        assert!(www(&r).ends_with(r#", scope="mcp:use""#), "{}", www(&r));
        let r = with_scope(AuthError::InsufficientScope {
            required: vec!["mcp:deploy".into()],
        });
        assert!(!www(&r).contains("mcp:use"), "{}", www(&r));
    }

    #[test]
    fn no_keys_is_503_with_retry_after() {
        let r = auth(AuthError::KeysUnavailable);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[RETRY_AFTER], "5");
    }

    #[test]
    fn upstream_failures_map_to_502_and_504() {
        assert_eq!(rescue(&GatewayError::UpstreamUnavailable).status(), 502);
        assert_eq!(rescue(&GatewayError::UpstreamTimeout).status(), 504);
        assert_eq!(
            rescue(&GatewayError::PayloadTooLarge { limit: 1 }).status(),
            413
        );
    }
}
