//! The whole gateway over real sockets, in process: every way a request can
//! end releases what its admission holds (the concurrency slot, the token
//! reservation, the in-flight count), with the in-memory store. The same
//! paths against Redis run in `tests/tests/quota_release.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::body::Body;
use crate::testkit::*;

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_starts_frees_its_slot() {
    let model = model().await;
    let gw = start(&model, |_| {}).await;
    let (stream, _) = send_raw(gw.addr, &chat(&[("x-header-delay-ms", "500")]), "").await;
    for _ in 0..100 {
        if model.requests.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.held(), 1, "the request holds the slot");
    drop(stream); // gone before the response headers
    gw.all_released().await;
    assert_eq!(status_of(gw.addr, &[]).await, 200, "the slot is free again");
    gw.stop().await;
}

/// `attach_tokens_total` summed over the series `estimated` says.
fn tokens(gw: &Running, estimated: bool) -> u64 {
    let label = format!("estimated=\"{estimated}\"");
    gw.runtime()
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("attach_tokens_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_holds_its_slot_until_the_model_ends_and_pays_its_usage() {
    let model = model().await;
    let gw = start(&model, |_| {}).await;
    let (stream, _) = send_raw(gw.addr, &chat(&[("x-hold", "1")]), "\"hi\"").await;
    assert_eq!(gw.held(), 1);
    assert_eq!(status_of(gw.addr, &[]).await, 429, "one slot, taken");
    drop(stream);
    // The model goes on answering nobody: the slot stays taken, or leaving
    // would be a way around the concurrency limit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.held(), 1, "the model still works for the gone client");
    model.release.notify_waiters();
    gw.all_released().await;
    // The usage the model reported at the end: 5 prompt + 3 completion.
    assert_eq!((tokens(&gw, false), tokens(&gw, true)), (8, 0));
    assert_eq!(status_of(gw.addr, &[]).await, 200);
    gw.stop().await;
}

#[tokio::test]
async fn past_the_drain_bound_a_gone_client_pays_the_prompt_plus_what_was_streamed() {
    for drain in [Duration::ZERO, Duration::from_millis(300)] {
        let model = model().await;
        let gw = start(&model, |c| c.quotas.drain_after_client_left = drain).await;
        let (stream, _) = send_raw(gw.addr, &chat(&[("x-hold", "1")]), "\"hi\"").await;
        assert_eq!(gw.held(), 1);
        drop(stream);
        // The model never ends: the slot is freed at the bound all the same.
        gw.all_released().await;
        // Prompt estimate ("hello": 2, plus 4 for the message) + one chunk.
        assert_eq!(
            (tokens(&gw, false), tokens(&gw, true)),
            (0, 7),
            "drain bound {drain:?}"
        );
        model.release.notify_waiters();
        gw.stop().await;
    }
}

#[tokio::test]
async fn http2_resets_before_and_after_the_headers_free_the_slot() {
    let model = model().await;
    let gw = start(&model, |_| {}).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = |extra: &str| {
        Request::post(format!("{}/api/chat", gw.url))
            .header("authorization", format!("Bearer {}", token("alice")))
            .header(extra, "500")
            .body(Full::new(Bytes::from(
                json!({"model": "m", "messages": []}).to_string(),
            )))
            .unwrap()
    };
    // Before the headers: the response future is dropped (RST_STREAM).
    let pending = send.send_request(request("x-header-delay-ms"));
    let _ = tokio::time::timeout(Duration::from_millis(200), pending).await;
    gw.all_released().await;
    // After the headers: the body is dropped mid-stream (RST_STREAM).
    send.ready().await.unwrap();
    let response = send.send_request(request("x-hold")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(gw.held(), 1);
    drop(body);
    // The slot is freed when the model's answer ends.
    model.release.notify_waiters();
    gw.all_released().await;
    gw.stop().await;
}

#[tokio::test]
async fn an_upstream_error_and_a_timeout_free_the_slot() {
    let model = model().await;
    let gw = start(&model, |c| {
        c.upstream.response_header_timeout = Duration::from_millis(200);
    })
    .await;
    assert_eq!(status_of(gw.addr, &[("x-close", "1")]).await, 502);
    gw.all_released().await;
    assert_eq!(
        status_of(gw.addr, &[("x-header-delay-ms", "2000")]).await,
        504
    );
    gw.all_released().await;
    assert_eq!(status_of(gw.addr, &[]).await, 200);
    // Each admission asked the quota store once, and was timed.
    let timed = gw.runtime().metrics.encode().lines().find_map(|l| {
        l.strip_prefix("attach_quota_store_duration_seconds_count ")?
            .parse::<u64>()
            .ok()
    });
    assert_eq!(timed, Some(3));
    gw.stop().await;
}

/// A model that failed generated nothing, and is charged nothing; one that
/// timed out had the prompt, and its estimate is charged ("hello": 2, plus
/// 4 for the message): with a budget of 6 tokens a minute, the request
/// after a failure passes and the one after a timeout does not.
#[tokio::test]
async fn a_model_that_timed_out_is_charged_the_prompt_and_one_that_failed_nothing() {
    use crate::quota::clock::{Clock, SystemClock};
    let minute = || SystemClock.now() / 60;
    for _ in 0..3 {
        let model = model().await;
        let gw = start(&model, |c| {
            c.upstream.response_header_timeout = Duration::from_millis(200);
            c.quotas.limits[0].tokens_per_minute = Some(6);
        })
        .await;
        let before = minute();
        let failed = status_of(gw.addr, &[("x-close", "1")]).await;
        gw.all_released().await;
        let after_failure = status_of(gw.addr, &[("x-header-delay-ms", "2000")]).await;
        gw.all_released().await;
        let after_timeout = status_of(gw.addr, &[]).await;
        gw.stop().await;
        // A window that rolled over mid-test proves nothing: again.
        if minute() != before {
            continue;
        }
        assert_eq!((failed, after_failure, after_timeout), (502, 504, 429));
        return;
    }
    panic!("three minute boundaries in a row");
}

#[tokio::test]
async fn drain_at_shutdown_frees_the_slots_of_streams_it_cuts() {
    let model = model().await;
    let gw = start(&model, |c| {
        c.limits.drain_timeout = Duration::from_millis(300);
    })
    .await;
    let (_stream, _) = send_raw(gw.addr, &chat(&[("x-hold", "1")]), "\"hi\"").await;
    assert_eq!(gw.held(), 1);
    let store = gw.runtime().quota_store.clone();
    let metrics = gw.runtime().metrics.clone();
    gw.stop().await;
    for _ in 0..100 {
        if store.local().in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.local().in_flight(), 0, "the cut stream's slot");
    assert_eq!(store.local().reserved(), 0);
    assert_eq!(metrics.quota_admissions_in_flight.get(), 0);
}

/// An upstream that panics: the panic stands for one in any layer below
/// admission, where slots are held.
#[derive(Clone)]
struct Panics;

impl tower::Service<Request<Body>> for Panics {
    type Response = Response<Body>;
    type Error = crate::error::GatewayError;
    type Future = super::BoxFuture<Result<Response<Body>, crate::error::GatewayError>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<Body>) -> Self::Future {
        Box::pin(async {
            let outside: u64 = u64::MAX;
            // The kind of arithmetic on outside input the rules forbid.
            #[allow(clippy::arithmetic_side_effects)]
            let _ = std::hint::black_box(outside) + 1;
            panic!("arithmetic overflow");
        })
    }
}

#[tokio::test]
async fn a_panic_in_a_layer_answers_500_and_releases_every_hold() {
    let model = model().await;
    let gw = start(&model, |_| {}).await;
    // The same config generation, served by a stack whose innermost
    // service panics.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = gw.runtime().metrics.clone();
    let service = super::stack_with(gw.current.clone(), metrics.clone(), Panics);
    let context = crate::server::ServerContext::new(gw.current.clone(), metrics.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(crate::server::serve(
        "panics",
        listener,
        service,
        context,
        async move {
            let _ = stopped.await;
        },
    ));
    for _ in 0..3 {
        let (_, text) = send_raw(addr, &chat(&[]), "\r\n\r\n").await;
        assert!(text.starts_with("HTTP/1.1 500"), "{text}");
        gw.all_released().await;
    }
    assert!(
        metrics
            .encode()
            .contains("attach_requests_total{status=\"500\",reason=\"internal\"} 3")
    );
    let _ = stop.send(());
    let _ = served.await;
    gw.stop().await;
}
