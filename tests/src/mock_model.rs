//! A stand-in model server that speaks the Ollama and OpenAI shapes,
//! streaming included, and records what it received, so tests can check what
//! the gateway forwarded.
//!
//! Request headers steer it:
//! - `x-mock-chunks: N` streams N content chunks (default 3);
//! - `x-mock-usage: N` reports N completion tokens (default: the chunks);
//! - `x-mock-delay-ms: N` waits N ms between chunks;
//! - `x-mock-header-delay-ms: N` waits N ms before the response headers;
//! - `x-mock-hold: 1` sends the first chunk, then waits for [`MockModel::release`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify, mpsc};

/// What the mock received.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Default)]
struct State {
    seen: Mutex<Vec<SeenRequest>>,
    count: AtomicUsize,
    release: Notify,
}

/// A running mock model. It stops when dropped.
#[derive(Debug)]
pub struct MockModel {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockModel {
    /// Starts on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests reached the model.
    pub fn request_count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub async fn seen(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().await.clone()
    }

    /// The last request received.
    pub async fn last(&self) -> Option<SeenRequest> {
        self.state.seen.lock().await.last().cloned()
    }

    /// Lets held streams (`x-mock-hold`) continue.
    pub fn release(&self) {
        self.state.release.notify_waiters();
    }
}

/// Where the `attach-mock-model` binary listens: `--listen` if given; else
/// vLLM's `--host` (default all addresses) and `--port` (default 8000) if
/// either is given; else Ollama's `OLLAMA_HOST` (`[scheme://]host[:port]`,
/// port 11434 by default); else `127.0.0.1:11434`.
pub fn listen_address(
    listen: Option<SocketAddr>,
    host: Option<&str>,
    port: Option<u16>,
    ollama_host: Option<&str>,
) -> Result<SocketAddr, String> {
    let parse = |host: &str, port: u16| -> Result<SocketAddr, String> {
        let ip: std::net::IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|e| format!("bad bind address {host:?}: {e}"))?;
        Ok(SocketAddr::new(ip, port))
    };
    if let Some(listen) = listen {
        return Ok(listen);
    }
    if host.is_some() || port.is_some() {
        return parse(host.unwrap_or("0.0.0.0"), port.unwrap_or(8000));
    }
    let Some(value) = ollama_host.filter(|v| !v.is_empty()) else {
        return Ok(SocketAddr::from(([127, 0, 0, 1], 11434)));
    };
    let value = value.split_once("://").map_or(value, |(_, rest)| rest);
    let value = value.trim_end_matches('/');
    match value.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => {
            let port = port
                .parse()
                .map_err(|e| format!("bad OLLAMA_HOST port {port:?}: {e}"))?;
            parse(host, port)
        }
        _ => parse(value, 11434),
    }
}

/// Serves until the task is aborted; used by the `attach-mock-model` binary too.
pub async fn serve(listener: TcpListener) {
    accept_loop(listener, Arc::new(State::default())).await;
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

type MockBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

async fn handle(
    request: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // The gateway reading which models are served is not a request a test
    // sent: it is neither counted nor recorded.
    let gateway_list_read = parts
        .headers
        .get(http::header::USER_AGENT)
        .is_some_and(|ua| ua.as_bytes() == attach_sidecar::served_models::USER_AGENT.as_bytes());
    if !gateway_list_read {
        state.count.fetch_add(1, Ordering::SeqCst);
        state.seen.lock().await.push(SeenRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    if let Some(ms) = header_u64(&parts.headers, "x-mock-header-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = json_body["model"]
        .as_str()
        .unwrap_or("llama3.2:1b")
        .to_owned();
    let stream = json_body["stream"].as_bool();
    let plan = StreamPlan {
        chunks: header_u64(&parts.headers, "x-mock-chunks").unwrap_or(3),
        usage: header_u64(&parts.headers, "x-mock-usage"),
        delay: Duration::from_millis(header_u64(&parts.headers, "x-mock-delay-ms").unwrap_or(0)),
        hold: parts.headers.contains_key("x-mock-hold"),
        state: state.clone(),
    };
    let response = match (parts.method.clone(), parts.uri.path()) {
        (Method::GET | Method::HEAD, "/") => text("Ollama is running"),
        (Method::GET, "/health") => text("ok"),
        (Method::GET, "/api/version") => json_response(json!({"version": "0.12.0"})),
        (Method::POST, "/api/show") => {
            json_response(json!({"details": {"family": "llama"}, "model_info": {}}))
        }
        (Method::GET, "/api/tags") => json_response(json!({"models": [
            {"name": "llama3.2:1b", "model": "llama3.2:1b"},
            {"name": "llama3.1:70b", "model": "llama3.1:70b"},
            {"name": "qwen2.5:0.5b", "model": "qwen2.5:0.5b"},
        ]})),
        (Method::GET, "/v1/models") => json_response(json!({"object": "list", "data": [
            {"id": "llama3.2:1b", "object": "model"},
            {"id": "llama3.1:70b", "object": "model"},
            {"id": "qwen2.5:0.5b", "object": "model"},
        ]})),
        (Method::POST, "/api/chat" | "/api/generate") => {
            let chat = parts.uri.path() == "/api/chat";
            if stream == Some(false) {
                json_response(ollama_final(
                    &model,
                    chat,
                    plan.chunks,
                    plan.completion_tokens(),
                    true,
                ))
            } else {
                ollama_stream(model, chat, plan)
            }
        }
        (Method::POST, "/v1/chat/completions" | "/v1/completions") => {
            if stream == Some(true) {
                let include_usage =
                    json_body["stream_options"]["include_usage"].as_bool() == Some(true);
                openai_stream(model, include_usage, plan)
            } else {
                json_response(json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello ".repeat(plan.chunks as usize)}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": plan.completion_tokens(), "total_tokens": 11 + plan.completion_tokens()},
                }))
            }
        }
        // Anthropic's Messages API, as Ollama serves it (not streamed).
        (Method::POST, "/v1/messages") => json_response(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "hello ".repeat(plan.chunks as usize)}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 11, "output_tokens": plan.completion_tokens()},
        })),
        (Method::POST, "/v1/embeddings" | "/api/embed" | "/api/embeddings") => {
            json_response(json!({
                "object": "list", "model": model,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            }))
        }
        (_, "/echo") => json_response(json!({
            "method": parts.method.as_str(),
            "headers": parts.headers.iter()
                .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.to_str().unwrap_or("").to_owned())))
                .collect::<serde_json::Map<_, _>>(),
            "bodyBytes": body.len(),
        })),
        (_, "/api/pull" | "/api/delete" | "/api/create" | "/api/copy" | "/api/push") => {
            json_response(json!({"status": "success"}))
        }
        _ => {
            let mut r = text("404 page not found");
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    Ok(response)
}

struct StreamPlan {
    chunks: u64,
    /// Completion tokens to report, when not the chunk count.
    usage: Option<u64>,
    delay: Duration,
    hold: bool,
    state: Arc<State>,
}

impl StreamPlan {
    fn completion_tokens(&self) -> u64 {
        self.usage.unwrap_or(self.chunks)
    }
}

fn text(body: &str) -> Response<MockBody> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())).boxed_unsync());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static"),
    );
    r
}

fn json_response(v: Value) -> Response<MockBody> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed_unsync());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    r
}

fn ollama_final(model: &str, chat: bool, chunks: u64, usage: u64, whole: bool) -> Value {
    let mut v = json!({
        "model": model, "created_at": "2026-01-01T00:00:00Z", "done": true, "done_reason": "stop",
        "total_duration": 1000, "prompt_eval_count": 11, "eval_count": usage,
    });
    let content = if whole {
        "hello ".repeat(chunks as usize)
    } else {
        String::new()
    };
    if chat {
        v["message"] = json!({"role": "assistant", "content": content});
    } else {
        v["response"] = json!(content);
    }
    v
}

/// Sends `lines` as body chunks, pacing them by the plan.
fn streamed(
    lines: Vec<String>,
    plan: StreamPlan,
    content_type: &'static str,
) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for (i, line) in lines.into_iter().enumerate() {
            if i > 0 {
                if plan.hold && i == 1 {
                    plan.state.release.notified().await;
                }
                if !plan.delay.is_zero() {
                    tokio::time::sleep(plan.delay).await;
                }
            }
            if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream_from(rx)).boxed_unsync();
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        content_type.parse().expect("static"),
    );
    r
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn ollama_stream(model: String, chat: bool, plan: StreamPlan) -> Response<MockBody> {
    let mut lines = Vec::new();
    for _ in 0..plan.chunks {
        let mut v = json!({"model": model, "created_at": "2026-01-01T00:00:00Z", "done": false});
        if chat {
            v["message"] = json!({"role": "assistant", "content": "hello "});
        } else {
            v["response"] = json!("hello ");
        }
        lines.push(format!("{v}\n"));
    }
    lines.push(format!(
        "{}\n",
        ollama_final(&model, chat, plan.chunks, plan.completion_tokens(), false)
    ));
    streamed(lines, plan, "application/x-ndjson")
}

fn openai_stream(model: String, include_usage: bool, plan: StreamPlan) -> Response<MockBody> {
    let mut lines = Vec::new();
    for i in 0..plan.chunks {
        let v = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {"content": "hello "}, "finish_reason":
                if i + 1 == plan.chunks { json!("stop") } else { Value::Null }}]});
        lines.push(format!("data: {v}\n\n"));
    }
    if include_usage {
        let v = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": plan.completion_tokens(), "total_tokens": 11 + plan.completion_tokens()}});
        lines.push(format!("data: {v}\n\n"));
    }
    lines.push("data: [DONE]\n\n".to_owned());
    streamed(lines, plan, "text/event-stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_where_the_injection_says() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        for (listen, host, port, ollama, want) in [
            (None, None, None, None, "127.0.0.1:11434"),
            (None, None, None, Some("127.0.0.1:11500"), "127.0.0.1:11500"),
            (
                None,
                None,
                None,
                Some("http://0.0.0.0:11434"),
                "0.0.0.0:11434",
            ),
            (None, None, None, Some("0.0.0.0"), "0.0.0.0:11434"),
            (None, Some("127.0.0.1"), Some(8001), None, "127.0.0.1:8001"),
            (None, None, Some(8000), None, "0.0.0.0:8000"),
            // vLLM's flags win over a stray OLLAMA_HOST.
            (
                None,
                Some("127.0.0.1"),
                Some(9),
                Some("0.0.0.0:1"),
                "127.0.0.1:9",
            ),
            (
                Some(addr("127.0.0.1:7")),
                Some("0.0.0.0"),
                Some(8),
                None,
                "127.0.0.1:7",
            ),
        ] {
            assert_eq!(
                listen_address(listen, host, port, ollama).unwrap(),
                addr(want),
                "{listen:?} {host:?} {port:?} {ollama:?}"
            );
        }
        assert!(listen_address(None, None, None, Some("model-host:1")).is_err());
        assert!(listen_address(None, None, None, Some("127.0.0.1:x")).is_err());
    }
}
