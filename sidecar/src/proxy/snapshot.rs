//! Pins each request to the config generation current when it arrived, so a
//! reload never changes the rules half-way through a request.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::Request;
use tower::{Layer, Service};

use crate::runtime::Runtime;

#[derive(Debug, Clone)]
pub struct SnapshotLayer {
    current: Arc<ArcSwap<Runtime>>,
}

impl SnapshotLayer {
    pub fn new(current: Arc<ArcSwap<Runtime>>) -> Self {
        Self { current }
    }
}

impl<S> Layer<S> for SnapshotLayer {
    type Service = Snapshot<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Snapshot {
            inner,
            current: self.current.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot<S> {
    inner: S,
    current: Arc<ArcSwap<Runtime>>,
}

impl<S, B> Service<Request<B>> for Snapshot<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.current.load_full());
        self.inner.call(request)
    }
}
