//! Authenticates every request before the model sees it: extracts the
//! credential, verifies it, and attaches the caller's [`Identity`] to the
//! request. Only `GET`/`HEAD` on a configured unauthenticated path (probes)
//! passes without one.
//!
//! The credential is the `Authorization: Bearer` token, or the value of
//! `X-Api-Key`/`Api-Key` (what Anthropic's SDKs, Claude Code and Azure-style
//! clients send); where several are sent they must be the same, or the
//! request is refused: the gateway never picks one. A credential with the
//! API key prefix is a personal API key, checked against the key store and
//! never handed to the JWT verifier; anything else is a JWT.

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
use crate::keys::{KeyGrant, KeyRefusal, format};
use crate::proxy::identity_headers::API_KEY_HEADERS;
use crate::proxy::protected_resource::{challenge_scope, metadata_url};
use crate::runtime::Runtime;

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

/// The request's one credential: the bearer token, or the API key headers'
/// value, which must all agree with each other and with the bearer token.
pub fn credential(headers: &HeaderMap) -> Result<String, AuthError> {
    let bearer = bearer_token(headers);
    let mut keyed = None::<String>;
    for value in API_KEY_HEADERS
        .iter()
        .flat_map(|name| headers.get_all(name))
    {
        let value = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
        if value.is_empty() || value.contains(' ') {
            return Err(AuthError::Malformed);
        }
        match &keyed {
            Some(seen) if seen != value => return Err(AuthError::ConflictingCredentials),
            Some(_) => {}
            None => keyed = Some(value.to_owned()),
        }
    }
    match (bearer, keyed) {
        (Ok(token), Some(key)) if token != key => Err(AuthError::ConflictingCredentials),
        (Ok(token), _) => Ok(token),
        // Another scheme (Basic, ...) or none: the key headers decide.
        (Err(AuthError::MissingToken), Some(key)) => Ok(key),
        (Err(error), _) => Err(error),
    }
}

/// What a credential proved: the identity, and for a personal API key,
/// what narrows it.
async fn verify(
    runtime: &Runtime,
    credential: &str,
) -> Result<(Arc<Identity>, Option<KeyGrant>), AuthError> {
    if !format::is_key(credential) {
        return runtime.verifier.verify(credential).await.map(|i| (i, None));
    }
    let store = runtime.keys.as_ref().ok_or(AuthError::ApiKeysDisabled)?;
    let verified = store
        .verify(credential)
        .await
        .map_err(|refusal| match refusal {
            KeyRefusal::Unknown => AuthError::ApiKeyUnknown,
            KeyRefusal::Expired => AuthError::ApiKeyExpired,
            KeyRefusal::OtherBackend => AuthError::ApiKeyOtherBackend,
            KeyRefusal::Unavailable => AuthError::ApiKeyStoreUnavailable,
        })?;
    if runtime.exchangers.contains_key(&verified.identity.iss) {
        return Err(AuthError::ApiKeyNotExchangeable);
    }
    Ok((verified.identity, Some(verified.grant)))
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
            // An owned copy, so no borrow of the request lives across the
            // await.
            let credential = credential(request.headers());
            if let (Ok(credential), Some(trail)) =
                (&credential, request.extensions().get::<Arc<AuditTrail>>())
                && let Some(key) = format::parse(credential)
            {
                // The id a key claims, refused or not: a revoked key still
                // in use shows up in the audit log by its id.
                trail.api_key(key.id);
            }
            let verified = match &credential {
                Ok(credential) => verify(&runtime, credential).await,
                Err(error) => Err(error.clone()),
            };
            let (identity, grant) = match verified {
                Ok(verified) => verified,
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
            match grant {
                Some(grant) => {
                    request.extensions_mut().insert(grant);
                }
                None => {
                    if runtime.exchangers.contains_key(&identity.iss)
                        && let Ok(token) = credential
                    {
                        // For the exchange layer: the subject token, verified.
                        request
                            .extensions_mut()
                            .insert(SubjectToken(Arc::from(token)));
                    }
                }
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

    #[test]
    fn one_credential_is_read_from_the_headers_that_may_carry_it() {
        type Case = (
            &'static [(&'static str, &'static str)],
            Result<&'static str, AuthError>,
        );
        let cases: &[Case] = &[
            (&[("authorization", "Bearer t")], Ok("t")),
            (&[("x-api-key", "k")], Ok("k")),
            (&[("api-key", "k")], Ok("k")),
            (&[("x-api-key", " k ")], Ok("k")),
            // The same credential in several headers (Claude Code's
            // apiKeyHelper sends both): one credential.
            (
                &[("authorization", "Bearer k"), ("x-api-key", "k")],
                Ok("k"),
            ),
            (&[("x-api-key", "k"), ("api-key", "k")], Ok("k")),
            (&[("x-api-key", "k"), ("x-api-key", "k")], Ok("k")),
            // Another scheme is no bearer token: the key header decides.
            (
                &[("authorization", "Basic dTpw"), ("x-api-key", "k")],
                Ok("k"),
            ),
            (
                &[("authorization", "Basic dTpw")],
                Err(AuthError::MissingToken),
            ),
            (&[], Err(AuthError::MissingToken)),
            // Different credentials: neither is chosen.
            (
                &[("authorization", "Bearer t"), ("x-api-key", "k")],
                Err(AuthError::ConflictingCredentials),
            ),
            (
                &[("x-api-key", "k"), ("api-key", "j")],
                Err(AuthError::ConflictingCredentials),
            ),
            (
                &[("x-api-key", "k"), ("x-api-key", "j")],
                Err(AuthError::ConflictingCredentials),
            ),
            (&[("x-api-key", "")], Err(AuthError::Malformed)),
            (&[("x-api-key", "a b")], Err(AuthError::Malformed)),
            (
                &[("authorization", "Bearer a b"), ("x-api-key", "a")],
                Err(AuthError::Malformed),
            ),
        ];
        for (headers, want) in cases {
            let mut map = HeaderMap::new();
            for (name, value) in *headers {
                map.append(*name, HeaderValue::from_static(value));
            }
            let got = credential(&map);
            assert_eq!(got.as_deref().map_err(Clone::clone), *want, "{headers:?}");
        }
    }
}
