//! Every connection bound, tripped over a real socket: the connection is
//! cut (or the request refused) and the metric says which bound it was.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::testkit::*;

/// The value of `attach_<name>_total{reason="<reason>"}`.
fn counted(gw: &Running, name: &str, reason: &str) -> u64 {
    let prefix = format!("attach_{name}_total{{reason=\"{reason}\"}} ");
    gw.runtime()
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

/// Reads until the peer closes; returns what it sent. Fails after `within`.
/// Waits (up to 2 s) until the metric reads `n`: the connection's task
/// counts it just after the socket closes.
async fn until_counted(gw: &Running, name: &str, reason: &str, n: u64) {
    for _ in 0..100 {
        if counted(gw, name, reason) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted(gw, name, reason), n, "{name}{{reason={reason}}}");
}

async fn closed_within(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    let read = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "still open after {within:?}");
    seen
}

async fn still_open(stream: &mut TcpStream, for_: Duration) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(for_, stream.read(&mut buf))
        .await
        .is_err()
}

#[tokio::test]
async fn a_silent_connection_or_a_half_http2_preface_is_cut_at_the_first_bytes_deadline() {
    let model = model().await;
    let gw = start(&model, |c| {
        c.limits.first_bytes_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    closed_within(&mut silent, Duration::from_secs(3)).await;
    let mut half = TcpStream::connect(gw.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    closed_within(&mut half, Duration::from_secs(3)).await;
    until_counted(&gw, "connections_closed", "first_bytes_timeout", 2).await;
    gw.stop().await;
}

#[tokio::test]
async fn http1_headers_must_arrive_in_time() {
    let model = model().await;
    let gw = start(&model, |c| {
        c.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /api/tags HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut slow, Duration::from_secs(3)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    until_counted(&gw, "connections_closed", "header_read_timeout", 1).await;
    gw.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_over_http1_and_http2() {
    let model = model().await;
    let gw = start(&model, |c| {
        c.limits.idle_timeout = Duration::from_millis(300);
    })
    .await;
    // HTTP/1.1 keep-alive, idle after one answer.
    let (mut h1, _) = send_raw(gw.addr, &chat(&[]), "\"done\":true").await;
    closed_within(&mut h1, Duration::from_secs(3)).await;
    // HTTP/2: one answer, then GOAWAY and close.
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let response = send
        .send_request(
            Request::get(format!("{}/api/version", gw.url))
                .header("authorization", format!("Bearer {}", token("alice")))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .unwrap()
        .unwrap();
    until_counted(&gw, "connections_closed", "idle_timeout", 2).await;
    gw.stop().await;
}

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// HPACK for `GET http://x/`: indexed :method GET, :scheme http, :path /,
/// and :authority x as a literal with an indexed name (RFC 7541).
const GET_ROOT: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x01, b'x'];

/// Reads frames until a GOAWAY; returns its error code.
async fn goaway(stream: &mut TcpStream) -> Option<u32> {
    let bytes = closed_within(stream, Duration::from_secs(5)).await;
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        let kind = bytes[at + 3];
        let payload = &bytes[(at + 9).min(bytes.len())..(at + 9 + len).min(bytes.len())];
        if kind == GOAWAY && payload.len() >= 8 {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
        at += 9 + len;
    }
    None
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_gets_a_goaway() {
    let model = model().await;
    let gw = start(&model, |_| {}).await;
    let mut attack = TcpStream::connect(gw.addr).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, GET_ROOT));
        bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = attack.write_all(&bytes).await;
    assert_eq!(goaway(&mut attack).await, Some(ENHANCE_YOUR_CALM));
    until_counted(&gw, "connections_closed", "http2_enhance_your_calm", 1).await;
    gw.stop().await;
}

#[tokio::test]
async fn an_http2_continuation_flood_gets_a_goaway() {
    let model = model().await;
    let gw = start(&model, |_| {}).await;
    let mut attack = TcpStream::connect(gw.addr).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frame(HEADERS, END_STREAM, 1, GET_ROOT));
    for _ in 0..100_000 {
        // A literal header that never ends: one byte per frame.
        bytes.extend(frame(CONTINUATION, 0, 1, &[0x40]));
    }
    let _ = attack.write_all(&bytes).await;
    assert_eq!(goaway(&mut attack).await, Some(ENHANCE_YOUR_CALM));
    until_counted(&gw, "connections_closed", "http2_enhance_your_calm", 1).await;
    gw.stop().await;
}

#[tokio::test]
async fn an_http2_peer_that_never_answers_pings_is_dropped() {
    let model = model().await;
    let gw = start(&model, |c| {
        c.limits.http2_keep_alive_interval = Duration::from_millis(200);
        c.limits.http2_keep_alive_timeout = Duration::from_millis(200);
    })
    .await;
    let mut mute = TcpStream::connect(gw.addr).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    mute.write_all(&bytes).await.unwrap();
    closed_within(&mut mute, Duration::from_secs(5)).await;
    until_counted(&gw, "connections_closed", "http2_keep_alive", 1).await;
    gw.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let model = model().await;
    let gw = start(&model, |c| {
        c.limits.max_connections = 2;
    })
    .await;
    let mut a = TcpStream::connect(gw.addr).await.unwrap();
    let mut b = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    closed_within(&mut c, Duration::from_secs(2)).await;
    assert!(still_open(&mut a, Duration::from_millis(200)).await);
    assert!(still_open(&mut b, Duration::from_millis(10)).await);
    until_counted(&gw, "connections_closed", "max_connections", 1).await;
    drop((a, b));
    // Room again once they are gone.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, text) = send_raw(gw.addr, &chat(&[]), "\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    gw.stop().await;
}

fn post_head(length: usize) -> Vec<u8> {
    format!(
        "POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        token("alice")
    )
    .into_bytes()
}

#[tokio::test]
async fn bodies_past_the_global_buffer_cap_get_503_and_a_slow_body_408() {
    let model = model().await;
    let gw = start(&model, |c| {
        c.limits.max_buffered_body_bytes = 1000;
        c.limits.body_read_timeout = Duration::from_millis(500);
    })
    .await;
    // 600 bytes of a 700-byte body arrive, then nothing: they stay buffered.
    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    first.write_all(&post_head(700)).await.unwrap();
    first.write_all(&[b' '; 600]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.runtime().body_budget.used(), 600);
    // A second body cannot fit beside it: 503 at once, not out of memory.
    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    second.write_all(&post_head(700)).await.unwrap();
    second.write_all(&[b' '; 600]).await.unwrap();
    let answer = String::from_utf8_lossy(&closed_within(&mut second, Duration::from_secs(2)).await)
        .into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    until_counted(&gw, "load_shed", "buffered_body_bytes", 1).await;
    // The first, never finished, times out: 408, and its bytes are freed.
    let answer = String::from_utf8_lossy(&closed_within(&mut first, Duration::from_secs(3)).await)
        .into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    until_counted(&gw, "load_shed", "body_timeout", 1).await;
    assert_eq!(gw.runtime().body_budget.used(), 0);
    assert_eq!(gw.runtime().metrics.buffered_body_bytes.get(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn past_max_in_flight_requests_the_answer_is_503_at_once() {
    let model = model().await;
    let gw = start(&model, |c| {
        c.limits.max_in_flight_requests = 1;
        c.quotas.limits.clear();
    })
    .await;
    let (_held, _) = send_raw(gw.addr, &chat(&[("x-hold", "1")]), "\"hi\"").await;
    let started = std::time::Instant::now();
    let (_, text) = send_raw(gw.addr, &chat(&[]), "\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after: 1"));
    assert!(started.elapsed() < Duration::from_secs(2), "not queued");
    until_counted(&gw, "load_shed", "in_flight", 1).await;
    model.release.notify_waiters();
    // Once the held answer ends, its place (and the refused request's) is
    // free again: a leaked permit would shed every request from now on.
    let mut status = 0;
    for _ in 0..100 {
        status = status_of(gw.addr, &[]).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "the in-flight count came back down");
    assert_eq!(status_of(gw.addr, &[]).await, 200);
    gw.stop().await;
}
