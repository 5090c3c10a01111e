//! Load shedding: past `limits.maxInFlightRequests` requests in flight
//! (from arrival until their answer ends), a new request is answered 503
//! with `Retry-After` at once instead of queueing behind the others. The
//! count is an RAII permit carried by the answer's body.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::{BoxFuture, runtime_of};
use crate::body::Body;
use crate::error::GatewayError;
use crate::metrics::ReasonLabels;

/// Requests in flight in this process, shared by every worker.
#[derive(Debug, Clone, Default)]
pub struct LoadShedLayer {
    in_flight: Arc<AtomicU64>,
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            in_flight: self.in_flight.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    in_flight: Arc<AtomicU64>,
}

/// One request's place among those in flight.
struct Permit(Arc<AtomicU64>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S, B> Service<Request<B>> for LoadShed<S>
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
        let Ok(runtime) = runtime_of(&request) else {
            return Box::pin(std::future::ready(Err(GatewayError::Internal)));
        };
        let max = runtime.config.limits.max_in_flight_requests;
        let taken = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let permit = Permit(self.in_flight.clone());
        if taken >= max {
            drop(permit);
            runtime
                .metrics
                .load_shed
                .get_or_create(&ReasonLabels {
                    reason: "in_flight",
                })
                .inc();
            return Box::pin(std::future::ready(Err(GatewayError::Overloaded(
                "too many requests in flight",
            ))));
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(crate::body::guard_response(response, permit))
        })
    }
}
