//! Token exchange before quota admission: when the caller's issuer has
//! `tokenExchange`, the verified token is exchanged (RFC 8693, cached) and
//! the downstream token is handed to `identity_headers`, which sets it in
//! the configured header (`Authorization` by default) after removing every
//! client-sent copy. A failed exchange answers 403 (refused) or 503/502
//! (IdP down or answering nonsense): the request is never forwarded without
//! it. It runs before admission so that no quota slot is held while the IdP
//! is waited on (each exchange is bounded by its `timeout`).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use super::authenticate::SubjectToken;
use super::{BoxFuture, call_boxed, runtime_of};
use crate::body::Body;
use crate::claims::Identity;
use crate::error::GatewayError;
use crate::exchange::{ExchangeError, Source};

/// The exchanged token and the header it goes in, for `identity_headers`.
#[derive(Clone)]
pub struct Exchanged {
    pub header: HeaderName,
    pub value: HeaderValue,
}

impl std::fmt::Debug for Exchanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Exchanged")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ExchangeLayer;

impl<S> Layer<S> for ExchangeLayer {
    type Service = Exchange<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Exchange { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Exchange<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for Exchange<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let exchanger = match (
            runtime_of(&request),
            request.extensions().get::<Arc<Identity>>(),
        ) {
            (Ok(runtime), Some(identity)) => runtime.exchangers.get(&identity.iss).cloned(),
            _ => None,
        };
        let Some(exchanger) = exchanger else {
            return call_boxed(&mut inner, request);
        };
        let Some(SubjectToken(subject)) = request.extensions_mut().remove::<SubjectToken>() else {
            return Box::pin(std::future::ready(Err(GatewayError::Internal)));
        };
        Box::pin(async move {
            let runtime = runtime_of(&request)?;
            let (result, source) = exchanger.exchange(&subject).await;
            runtime.metrics.token_exchange(match (&result, source) {
                (Ok(_), Source::Cache) => "hit",
                (Ok(_), Source::Exchange) => "exchanged",
                (Err(ExchangeError::Refused(_)), Source::Exchange) => "refused",
                (Err(ExchangeError::Refused(_)), Source::Cache) => "refused_cached",
                (Err(ExchangeError::Unavailable), Source::Exchange) => "unavailable",
                (Err(ExchangeError::Unavailable), Source::Cache) => "unavailable_cached",
                (Err(ExchangeError::BadResponse(_)), Source::Exchange) => "bad_response",
                (Err(ExchangeError::BadResponse(_)), Source::Cache) => "bad_response_cached",
            });
            let token = result.map_err(GatewayError::Exchange)?;
            let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
                return Err(GatewayError::Exchange(ExchangeError::BadResponse(
                    "the token is not header-safe".into(),
                )));
            };
            value.set_sensitive(true);
            request.extensions_mut().insert(Exchanged {
                header: exchanger.header().clone(),
                value,
            });
            call_boxed(&mut inner, request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exchanged_token_stays_out_of_debug() {
        let exchanged = Exchanged {
            header: HeaderName::from_static("x-downstream-token"),
            value: HeaderValue::from_static("Bearer s3cret-token"),
        };
        let text = format!("{exchanged:?}");
        assert!(text.contains("x-downstream-token"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
