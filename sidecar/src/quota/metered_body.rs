//! A response body that passes the model's answer through, reads its usage
//! on the way (see [`UsageMeter`]), and reports it exactly once: when the
//! answer ends, or when the client goes away mid-stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::usage::{Usage, UsageMeter};
use crate::body::{Body, BoxError};

/// Called once with the usage and whether the answer ran to its end.
pub type OnDone = Box<dyn FnOnce(Usage, bool) + Send>;

/// The metered body.
pub struct MeteredBody {
    inner: Body,
    meter: UsageMeter,
    on_done: Option<OnDone>,
    tail: Option<Bytes>,
}

impl MeteredBody {
    pub fn new(inner: Body, meter: UsageMeter, on_done: OnDone) -> Self {
        Self {
            inner,
            meter,
            on_done: Some(on_done),
            tail: None,
        }
    }

    fn done(&mut self, usage: Usage, complete: bool) {
        if let Some(on_done) = self.on_done.take() {
            on_done(usage, complete);
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
                    this.done(usage, false);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let (tail, usage) = this.meter.finish();
                    this.done(usage, true);
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
        if self.on_done.is_none() {
            return;
        }
        // Either the server stopped polling once `Content-Length` bytes were
        // sent (a whole answer), or the client went away mid-stream. Either
        // way, charge what was seen, parsing what is still buffered.
        let (_, usage) = self.meter.finish();
        let complete = !usage.estimated;
        self.done(usage, complete);
    }
}
