//! Counts every answer by status and reason, and the requests in flight: a
//! request counts from arrival until its answer's body ends, and the count
//! is an RAII guard, so a client that leaves (or a cancelled or panicking
//! request) is never left counted. It also marks each request with the
//! moment it arrived ([`Arrived`]), which later layers measure from.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::BoxFuture;
use crate::body::Body;
use crate::metrics::{Metrics, RequestLabels};
use crate::rescue::Reason;

/// When a request arrived at the gateway.
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub std::time::Instant);

impl Arrived {
    /// The request's arrival, or now for a request that was not observed.
    pub fn of<B>(request: &Request<B>) -> std::time::Instant {
        request
            .extensions()
            .get::<Self>()
            .map_or_else(std::time::Instant::now, |a| a.0)
    }
}

#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request
            .extensions_mut()
            .insert(Arrived(std::time::Instant::now()));
        let metrics = self.metrics.clone();
        let in_flight = InFlight::new(&metrics);
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            if let Ok(response) = &result {
                let reason = response
                    .extensions()
                    .get::<Reason>()
                    .map_or("forwarded", |r| r.0);
                metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        status: response.status().as_u16(),
                        reason,
                    })
                    .inc();
            }
            result.map(|response| crate::body::guard_response(response, in_flight))
        })
    }
}

/// One request counted in `attach_in_flight_requests` while it lives.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    fn new(metrics: &Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
