//! A response body that passes the model's answer through, reads its usage
//! on the way (see [`UsageMeter`]), and reports it exactly once: when the
//! answer ends, or, when the client goes away mid-answer, once the rest of
//! the answer has been read (and dropped) to its usage, within a bound.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use super::usage::{Usage, UsageMeter};
use crate::body::{Body, BoxError};

/// Called once with the usage (`estimated` when the answer carried none).
pub type OnDone = Box<dyn FnOnce(Usage) + Send>;

/// The metered body.
pub struct MeteredBody {
    inner: Body,
    meter: UsageMeter,
    on_done: Option<OnDone>,
    tail: Option<Bytes>,
    /// How long the rest of an answer is read after the client left.
    drain_for: Duration,
}

impl MeteredBody {
    /// Meters `inner`; `drain_for` bounds the read of the rest of the
    /// answer once the client has gone (zero: charge what was seen).
    pub fn new(inner: Body, meter: UsageMeter, on_done: OnDone, drain_for: Duration) -> Self {
        Self {
            inner,
            meter,
            on_done: Some(on_done),
            tail: None,
            drain_for,
        }
    }

    fn done(&mut self, usage: Usage) {
        if let Some(on_done) = self.on_done.take() {
            on_done(usage);
        }
    }
}

impl HttpBody for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(tail) = this.tail.take() {
            return Poll::Ready(Some(Ok(Frame::data(tail))));
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.meter.feed(data);
                        if out.is_empty() {
                            continue; // held back until its event is complete
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) => {
                    let usage = this.meter.usage();
                    this.done(usage);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let (tail, usage) = this.meter.finish();
                    this.done(usage);
                    if tail.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.tail.is_none() && self.on_done.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Stripping an event changes the length: never claim an exact one.
        let mut hint = SizeHint::new();
        hint.set_lower(0);
        hint
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        let Some(on_done) = self.on_done.take() else {
            return;
        };
        // Either the server stopped polling once `Content-Length` bytes were
        // sent (a whole answer), or the client went away mid-answer. The
        // model does not know: it goes on and reports its usage at the end.
        // Read the rest (the request keeps its slot meanwhile) and charge
        // that, or, past the bound, what was seen and the estimate.
        // (A whole answer, or a zero bound, ends at once there.)
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let inner = std::mem::replace(&mut self.inner, crate::body::empty());
                let meter = std::mem::replace(&mut self.meter, UsageMeter::opaque());
                runtime.spawn(drain(inner, meter, on_done, self.drain_for));
            }
            Err(_) => {
                let (_, usage) = self.meter.finish();
                on_done(usage);
            }
        }
    }
}

/// Reads what is left of an answer nobody receives, for its usage, for at
/// most `limit`, then reports.
async fn drain(mut inner: Body, mut meter: UsageMeter, on_done: OnDone, limit: Duration) {
    let read = async {
        while let Some(frame) = inner.frame().await {
            match frame.map(Frame::into_data) {
                Ok(Ok(data)) => {
                    meter.feed(data);
                }
                Ok(Err(_)) => {} // trailers
                Err(_) => return,
            }
        }
    };
    // Past the limit the rest is dropped with `inner`: the model sees the
    // connection close.
    let _ = tokio::time::timeout(limit, read).await;
    let (_, usage) = meter.finish();
    on_done(usage);
}
