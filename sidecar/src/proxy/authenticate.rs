//! Authenticates every request before the model sees it: extracts the bearer
//! token, verifies it, and attaches the caller's [`Identity`] to the request.
//! Only `GET`/`HEAD` on a configured unauthenticated path (probes) passes
//! without a token.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use tower::{Layer, Service};

use super::{BoxFuture, runtime_of};
use crate::audit::AuditTrail;
use crate::body::Body;
use crate::claims::Identity;
use crate::error::GatewayError;
use crate::jwt::AuthError;
use crate::proxy::protected_resource::{challenge_scope, metadata_url};

/// Marks a request forwarded without a token (an unauthenticated path).
#[derive(Debug, Clone, Copy)]
pub struct Unauthenticated;

/// The one `Authorization` header of a request.
fn bearer_header(headers: &HeaderMap) -> Result<HeaderValue, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Ok(value.clone()),
        (Some(_), Some(_)) => Err(AuthError::Malformed),
        (None, _) => Err(AuthError::MissingToken),
    }
}

/// The verified inbound token, kept only when its issuer exchanges tokens.
#[derive(Clone)]
pub struct SubjectToken(pub Arc<str>);

/// The token of an `Authorization: Bearer` header value (RFC 6750 §2.1).
fn bearer_token_of(value: &HeaderValue) -> Result<&str, AuthError> {
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, ...) is no bearer token at all.
        return Err(AuthError::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// The bearer token of a request's `Authorization` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<String, AuthError> {
    bearer_token_of(&bearer_header(headers)?).map(str::to_owned)
}

#[derive(Debug, Clone, Copy, Default)]
pub struct AuthenticateLayer;

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticate { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let runtime = runtime_of(&request)?;
            let probe = matches!(*request.method(), Method::GET | Method::HEAD)
                && runtime.unauthenticated_paths.contains(request.uri().path());
            if probe {
                request.extensions_mut().insert(Unauthenticated);
                let mut response = inner.call(request).await?;
                response
                    .extensions_mut()
                    .insert(super::audit_trail::NotAudited);
                return Ok(response);
            }
            // An owned (refcounted) copy of the header, so no borrow of the
            // request lives across the await.
            let header = bearer_header(request.headers());
            let verified = match header
                .as_ref()
                .map_err(Clone::clone)
                .and_then(bearer_token_of)
            {
                Ok(token) => runtime.verifier.verify(token).await,
                Err(error) => Err(error),
            };
            let identity: Arc<Identity> = match verified {
                Ok(identity) => identity,
                Err(error) => {
                    return Err(GatewayError::Auth {
                        error,
                        resource_metadata: metadata_url(&runtime, &request),
                        scope: challenge_scope(&runtime),
                    });
                }
            };
            if runtime.config.deny_all {
                return Err(GatewayError::DenyAll(
                    "its configuration could not be resolved (see the LLMBackend's status)",
                ));
            }
            if let Some(trail) = request.extensions().get::<Arc<AuditTrail>>() {
                trail.identity(&identity);
            }
            if runtime.exchangers.contains_key(&identity.iss)
                && let Ok(header) = &header
                && let Ok(token) = bearer_token_of(header)
            {
                // For the exchange layer: the subject token, already verified.
                request
                    .extensions_mut()
                    .insert(SubjectToken(Arc::from(token)));
            }
            request.extensions_mut().insert(identity);
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn extracts_bearer_tokens() {
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def.ghi"])),
            Ok("abc.def.ghi".to_owned())
        );
        assert_eq!(
            bearer_token(&headers(&["bearer abc"])),
            Ok("abc".to_owned())
        );
        assert_eq!(
            bearer_token(&headers(&["BEARER   abc  "])),
            Ok("abc".to_owned())
        );
    }

    #[test]
    fn refuses_what_is_not_one_bearer_token() {
        assert_eq!(bearer_token(&headers(&[])), Err(AuthError::MissingToken));
        assert_eq!(
            bearer_token(&headers(&["Basic dXNlcjpwYXNz"])),
            Err(AuthError::MissingToken)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer"])),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer "])),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer a b"])),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthError::Malformed)
        );
    }
}
