//! A panic in any layer below this one becomes a 500 answer instead of a
//! dropped connection. Unwinding drops the request's state on the way, so
//! everything it held is released by its guards (quota admission, in-flight
//! count, buffered-bytes permit). No arithmetic on outside input is meant to
//! panic; this is the net under that rule.

use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures::FutureExt;
use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::body::Body;
use crate::error::GatewayError;

#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for CatchPanic<S>
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
        let called = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)));
        let future = match called {
            Ok(future) => future,
            Err(_) => {
                tracing::error!("a request panicked; answering 500");
                return Box::pin(std::future::ready(Err(GatewayError::Internal)));
            }
        };
        Box::pin(async move {
            match AssertUnwindSafe(future).catch_unwind().await {
                Ok(result) => result,
                Err(_) => {
                    tracing::error!("a request panicked; answering 500");
                    Err(GatewayError::Internal)
                }
            }
        })
    }
}
