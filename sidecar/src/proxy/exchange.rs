//! Token exchange before forwarding: when the caller's issuer has
//! `tokenExchange`, the verified token is exchanged (RFC 8693, cached) and
//! the downstream token is set in the configured header (`Authorization` by
//! default). A failed exchange answers 403 (refused) or 503/502 (IdP down
//! or answering nonsense): the request is never forwarded without it.

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
            let result = exchanger.exchange(&subject).await;
            runtime.metrics.token_exchange(match &result {
                Ok((_, Source::Cache)) => "hit",
                Ok((_, Source::Exchange)) => "exchanged",
                Err(ExchangeError::Refused(_)) => "refused",
                Err(ExchangeError::Unavailable) => "unavailable",
                Err(ExchangeError::BadResponse(_)) => "bad_response",
            });
            let (token, _) = result.map_err(GatewayError::Exchange)?;
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(exchanger.header().as_bytes()),
                HeaderValue::from_str(&format!("Bearer {token}")),
            ) else {
                return Err(GatewayError::Exchange(ExchangeError::BadResponse(
                    "the token is not header-safe".into(),
                )));
            };
            let mut value = value;
            value.set_sensitive(true);
            request.headers_mut().insert(name, value);
            call_boxed(&mut inner, request).await
        })
    }
}
