//! A response body that passes the model's answer through, reads its usage
//! on the way (see [`UsageMeter`]), and reports it exactly once: when the
//! answer ends, or, when the client goes away mid-answer, once the rest of
//! the answer has been read (and dropped) to its usage, within a bound.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;

use super::usage::{Usage, UsageMeter};
use crate::body::{Body, BoxError};

/// How an answer ended: reported once.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// The usage (`estimated` when the answer carried none).
    pub usage: Usage,
    /// When its first bytes went to the client (none: it had none).
    pub first_chunk: Option<Instant>,
    /// The model's answer broke off with an error.
    pub broke_off: bool,
}

/// Called once, when the answer ends.
pub type OnDone = Box<dyn FnOnce(Ended) + Send>;

/// The metered body.
pub struct MeteredBody {
    inner: Body,
    meter: UsageMeter,
    on_done: Option<OnDone>,
    tail: Option<Bytes>,
    /// How long the rest of an answer is read after the client left.
    drain_for: Duration,
    first_chunk: Option<Instant>,
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
            first_chunk: None,
        }
    }

    fn done(&mut self, usage: Usage, broke_off: bool) {
        if let Some(on_done) = self.on_done.take() {
            on_done(Ended {
                usage,
                first_chunk: self.first_chunk,
                broke_off,
            });
        }
    }

    /// Hands `data` to the client, noting when the first bytes went.
    fn send(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.first_chunk.is_none() && !data.is_empty() {
            self.first_chunk = Some(Instant::now());
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
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
            return this.send(tail);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.meter.feed(data);
                        if this.inner.is_end_stream() {
                            // The last of the answer. A server that sends
                            // `Content-Length` bytes never polls for the
                            // end: charge now, before it writes these out,
                            // so that the client's next request already
                            // sees the charge.
                            let (tail, usage) = this.meter.finish();
                            let (now, later) = match (out.is_empty(), tail.is_empty()) {
                                (true, _) => (tail, None),
                                (false, true) => (out, None),
                                (false, false) => (out, Some(tail)),
                            };
                            if this.first_chunk.is_none() && !now.is_empty() {
                                this.first_chunk = Some(Instant::now());
                            }
                            this.done(usage, false);
                            this.tail = later;
                            if now.is_empty() {
                                return Poll::Ready(None);
                            }
                            return this.send(now);
                        }
                        if out.is_empty() {
                            continue; // held back until its event is complete
                        }
                        return this.send(out);
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) => {
                    let usage = this.meter.usage();
                    this.done(usage, true);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let (tail, usage) = this.meter.finish();
                    if this.first_chunk.is_none() && !tail.is_empty() {
                        this.first_chunk = Some(Instant::now());
                    }
                    this.done(usage, false);
                    if tail.is_empty() {
                        return Poll::Ready(None);
                    }
                    return this.send(tail);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.tail.is_none() && self.on_done.is_none()
    }

    // `size_hint` is the trait's: no exact length is ever claimed, since
    // stripping an event changes the length.
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        let Some(on_done) = self.on_done.take() else {
            return;
        };
        // The client went away mid-answer. The model does not know: it goes
        // on and reports its usage at the end. Read the rest (the request
        // keeps its slot meanwhile) and charge that, or, past the bound,
        // what was seen and the estimate.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let inner = std::mem::replace(&mut self.inner, crate::body::empty());
                let meter = std::mem::replace(&mut self.meter, UsageMeter::opaque());
                let first_chunk = self.first_chunk;
                let report = Box::new(move |usage, broke_off| {
                    on_done(Ended {
                        usage,
                        first_chunk,
                        broke_off,
                    });
                });
                runtime.spawn(drain(inner, meter, report, self.drain_for));
            }
            Err(_) => {
                let (_, usage) = self.meter.finish();
                on_done(Ended {
                    usage,
                    first_chunk: self.first_chunk,
                    broke_off: false,
                });
            }
        }
    }
}

/// Reads what is left of an answer nobody receives, for its usage, for at
/// most `limit`, then reports.
async fn drain(
    mut inner: Body,
    mut meter: UsageMeter,
    report: Box<dyn FnOnce(Usage, bool) + Send>,
    limit: Duration,
) {
    let read = async {
        while let Some(frame) = inner.frame().await {
            match frame.map(Frame::into_data) {
                Ok(Ok(data)) => {
                    meter.feed(data);
                }
                Ok(Err(_)) => {} // trailers
                Err(_) => return true,
            }
        }
        false
    };
    // Past the limit the rest is dropped with `inner`: the model sees the
    // connection close.
    let broke_off = tokio::time::timeout(limit, read).await.unwrap_or(false);
    let (_, usage) = meter.finish();
    report(usage, broke_off);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed step is a failed test

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::quota::usage::Shape;

    /// An answer in chunks that, like a `Content-Length` body, knows it
    /// has ended as soon as its last chunk is read.
    struct Chunks(VecDeque<Bytes>);

    impl Chunks {
        fn body(parts: &[&'static str]) -> Body {
            let parts = parts.iter().map(|p| Bytes::from_static(p.as_bytes()));
            crate::body::boxed(Self(parts.collect()))
        }
    }

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    type Seen = Arc<Mutex<Option<Ended>>>;

    fn metered(inner: Body, shape: Shape) -> (MeteredBody, Seen) {
        let seen: Seen = Arc::default();
        let report = seen.clone();
        let on_done: OnDone = Box::new(move |ended| {
            let previous = report.lock().unwrap().replace(ended);
            assert!(previous.is_none(), "reported twice");
        });
        let meter = UsageMeter::new(shape, true, 7);
        let body = MeteredBody::new(inner, meter, on_done, Duration::from_secs(5));
        (body, seen)
    }

    /// The usage reported, which must have been.
    fn charged(seen: &Seen, when: &str) -> Usage {
        let ended = seen.lock().unwrap().take();
        ended.unwrap_or_else(|| panic!("not {when}")).usage
    }

    async fn data(body: &mut MeteredBody) -> Bytes {
        body.frame().await.unwrap().unwrap().into_data().unwrap()
    }

    const ANSWER: [&str; 2] = [
        r#"{"usage":{"prompt"#,
        r#"_tokens":11,"completion_tokens":3}}"#,
    ];

    #[tokio::test]
    async fn the_last_chunk_of_an_answer_is_charged_before_the_server_writes_it() {
        // A server sending `Content-Length` bytes stops polling after the
        // last one: the charge must be in place before it writes them, so
        // before the client can have read the answer and sent its next
        // request.
        let (mut body, seen) = metered(Chunks::body(&ANSWER), Shape::Json);
        assert_eq!(data(&mut body).await, ANSWER[0]);
        assert!(seen.lock().unwrap().is_none(), "not charged mid-answer");
        assert_eq!(data(&mut body).await, ANSWER[1]);
        let usage = charged(&seen, "charged with the last chunk");
        assert_eq!((usage.prompt, usage.completion), (11, 3));
        assert!(!usage.estimated);
        assert!(body.is_end_stream(), "the server may let go of it");
        drop(body);
        assert!(seen.lock().unwrap().is_none(), "charged once");
    }

    #[tokio::test]
    async fn a_stream_whose_last_chunk_ends_mid_event_is_charged_and_sent_whole() {
        const EVENTS: [&str; 2] = [
            "data: {\"choices\":[{}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3}}\n\n\
             data: {\"choices\":[{}]}\n\ndata: [DONE]",
        ];
        let (mut body, seen) = metered(Chunks::body(&EVENTS), Shape::Sse);
        assert_eq!(data(&mut body).await, EVENTS[0]);
        // The added usage event is dropped, the complete event sent, and
        // the unterminated `[DONE]` held until the end, then sent too.
        assert_eq!(data(&mut body).await, "data: {\"choices\":[{}]}\n\n");
        let usage = charged(&seen, "charged with the last chunk");
        assert_eq!(usage.total(), 14);
        assert!(!body.is_end_stream(), "bytes are still held");
        assert_eq!(data(&mut body).await, "data: [DONE]");
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_last_chunk_that_is_all_held_back_comes_out_at_the_end() {
        const EVENTS: [&str; 3] = ["data: {\"choices\":[{}]}\n\n", "data: [DO", "NE]"];
        let (mut body, seen) = metered(Chunks::body(&EVENTS), Shape::Sse);
        assert_eq!(data(&mut body).await, EVENTS[0]);
        assert_eq!(data(&mut body).await, "data: [DONE]");
        assert!(seen.lock().unwrap().take().unwrap().usage.estimated);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_answer_is_charged_the_models_usage_once_it_ends() {
        let (mut body, seen) = metered(Chunks::body(&ANSWER), Shape::Json);
        data(&mut body).await;
        drop(body); // the client left after the first chunk
        assert!(seen.lock().unwrap().is_none(), "the rest is still read");
        for _ in 0..100 {
            if seen.lock().unwrap().is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let usage = charged(&seen, "charged after the drain");
        assert_eq!((usage.prompt, usage.completion), (11, 3));
        assert!(!usage.estimated, "the rest of the answer was read");
    }

    #[tokio::test]
    async fn the_report_says_when_the_first_bytes_went_and_whether_the_model_broke_off() {
        let before = Instant::now();
        let (head, rest) = ANSWER[1].split_at(5);
        let (mut body, seen) = metered(Chunks::body(&[ANSWER[0], head, rest]), Shape::Json);
        data(&mut body).await;
        let after_first = Instant::now();
        data(&mut body).await;
        data(&mut body).await;
        let ended = seen.lock().unwrap().take().unwrap();
        let first = ended.first_chunk.expect("bytes went");
        assert!(before <= first && first <= after_first);
        assert!(!ended.broke_off);

        // An answer in one chunk: its first bytes are its last.
        let (mut body, seen) = metered(Chunks::body(&[ANSWER[0]]), Shape::Json);
        data(&mut body).await;
        assert!(seen.lock().unwrap().take().unwrap().first_chunk.is_some());
        // A stream whose only bytes are held to its end, which it only
        // tells by ending.
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"data: [DONE]")))];
        let open = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let (mut body, seen) = metered(crate::body::boxed(open), Shape::Sse);
        assert_eq!(data(&mut body).await, "data: [DONE]");
        assert!(seen.lock().unwrap().take().unwrap().first_chunk.is_some());
        // ... and when it held the end of a stream that had sent before.
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"data: {}\n\n"))),
            Ok(Frame::data(Bytes::from_static(b"data: [DONE]"))),
        ];
        let open = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let (mut body, seen) = metered(crate::body::boxed(open), Shape::Sse);
        data(&mut body).await;
        let after_first = Instant::now();
        assert_eq!(data(&mut body).await, "data: [DONE]");
        let first = seen.lock().unwrap().take().unwrap().first_chunk.unwrap();
        assert!(first <= after_first, "the first bytes, not the last");
        // A stream that ends without a byte.
        let none: Vec<Result<Frame<Bytes>, BoxError>> = Vec::new();
        let empty = http_body_util::StreamBody::new(futures::stream::iter(none));
        let (mut body, seen) = metered(crate::body::boxed(empty), Shape::Sse);
        assert!(body.frame().await.is_none());
        assert_eq!(seen.lock().unwrap().take().unwrap().first_chunk, None);

        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![Err("reset".into())];
        let broken = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let (mut body, seen) = metered(crate::body::boxed(broken), Shape::Json);
        assert!(body.frame().await.unwrap().is_err());
        let ended = seen.lock().unwrap().take().unwrap();
        assert!(ended.broke_off);
        assert_eq!(ended.first_chunk, None, "nothing went");
    }
}
