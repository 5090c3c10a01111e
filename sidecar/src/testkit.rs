//! A whole gateway over real sockets, in process, for tests: a model on
//! loopback, locally signed tokens, and the gateway bound to free ports.
#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

use crate::claims::Preset;
use crate::config::{GatewayConfig, IssuerConfig};
use crate::gateway::{ConfigSource, Gateway};
use crate::quota::QuotaLimit;
use crate::runtime::Runtime;

pub(crate) const ISSUER: &str = "https://idp.test/";
pub(crate) const AUDIENCE: &str = "attach-gateway";

/// This crate's folder in the clone under test: the run-time
/// `CARGO_MANIFEST_DIR` that cargo sets for the tests it runs, over the one
/// compiled in, which names the clone the binary was built in (a target
/// directory shared between clones can hand one clone another's build).
pub(crate) fn crate_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

/// A key in `testdata/keys`.
pub(crate) fn pem(name: &str) -> Vec<u8> {
    let path = crate_dir().join(format!("testdata/keys/{name}.pem"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem("rsa-trusted")).unwrap()
}

pub(crate) fn token(sub: &str) -> String {
    let now = crate::jwt::verifier::unix_now();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    jsonwebtoken::encode(
        &header,
        &json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now + 600, "iat": now}),
        &rsa_key(),
    )
    .unwrap()
}

pub(crate) fn jwks() -> Value {
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa_key(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("rsa-1".into());
    json!({"keys": [jwk]})
}

/// The model: `/api/chat` streams two NDJSON lines, or, steered by
/// headers, holds after the first (`x-hold`), waits before its headers
/// (`x-header-delay-ms`), or drops the connection unanswered (`x-close`).
pub(crate) struct Model {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
    pub release: Arc<Notify>,
}

pub(crate) async fn model() -> Model {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (count, rel) = (requests.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (count, rel) = (count.clone(), rel.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    // The gateway's own model-list fetches are not requests.
                    if req.uri().path() != "/api/tags" {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    let rel = rel.clone();
                    async move { answer(req, rel).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Model {
        url,
        requests,
        release,
    }
}

type ModelBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

pub(crate) async fn answer(
    req: Request<Incoming>,
    release: Arc<Notify>,
) -> Result<Response<ModelBody>, std::io::Error> {
    let headers = req.headers().clone();
    let _ = req.into_body().collect().await;
    if headers.contains_key("x-close") {
        return Err(std::io::Error::other("hang up"));
    }
    if let Some(ms) = headers
        .get("x-header-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let hold = headers.contains_key("x-hold");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(
                b"{\"done\":false,\"message\":{\"content\":\"hi\"}}\n",
            ))))
            .await;
        if hold {
            release.notified().await;
        }
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(
                b"{\"done\":true,\"prompt_eval_count\":5,\"eval_count\":3}\n",
            ))))
            .await;
    });
    let mut rx = rx;
    let body = StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut response = Response::new(body.boxed_unsync());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/x-ndjson".parse().unwrap(),
    );
    Ok(response)
}

/// A running gateway with one user slot (`concurrent: 1`).
pub(crate) struct Running {
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub current: Arc<arc_swap::ArcSwap<Runtime>>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    pub fn runtime(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Slots held now (0 when nothing leaked).
    pub fn held(&self) -> u64 {
        self.runtime().quota_store.local().in_flight()
    }

    /// Waits until every slot, reservation and in-flight count is free.
    pub async fn all_released(&self) {
        for _ in 0..200 {
            let rt = self.runtime();
            if rt.quota_store.local().in_flight() == 0
                && rt.quota_store.local().reserved() == 0
                && rt.metrics.in_flight.get() == 0
                && rt.metrics.quota_admissions_in_flight.get() == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rt = self.runtime();
        panic!(
            "leaked: slots {}, reserved {}, in flight {}, admissions {}",
            rt.quota_store.local().in_flight(),
            rt.quota_store.local().reserved(),
            rt.metrics.in_flight.get(),
            rt.metrics.quota_admissions_in_flight.get()
        );
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.done).await;
    }
}

pub(crate) async fn start(model: &Model, tune: impl FnOnce(&mut GatewayConfig)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks().to_string()).unwrap();
    let mut issuer = IssuerConfig::new(ISSUER, vec![AUDIENCE.into()], Preset::Generic);
    issuer.jwks_file = Some(jwks_path);
    let mut config = GatewayConfig::new(vec![issuer]);
    config.listen.address = [127, 0, 0, 1].into();
    config.listen.port = 0;
    config.admin.address = [127, 0, 0, 1].into();
    config.admin.port = 0;
    config.upstream.url = model.url.clone();
    config.audit.enabled = false;
    config.quotas.limits = vec![QuotaLimit {
        concurrent: Some(1),
        tokens_per_minute: Some(1_000_000),
        ..QuotaLimit::named("per-user")
    }];
    tune(&mut config);
    let gateway = Gateway::bind(config, ConfigSource::Fixed).await.unwrap();
    let addr = gateway.proxy_addr().unwrap();
    let current = gateway.current();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(gateway.run(1, async move {
        let _ = stopped.await;
    }));
    for _ in 0..200 {
        if current.load().verifier.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(current.load().verifier.is_ready());
    Running {
        url: format!("http://{addr}"),
        addr,
        current,
        stop: Some(stop),
        done,
        _dir: dir,
    }
}

pub(crate) fn chat(extra: &[(&str, &str)]) -> Vec<u8> {
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).to_string();
    let mut head = format!(
        "POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        token("alice"),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// Sends a chat request over HTTP/1.1 and reads until `until` shows up.
pub(crate) async fn send_raw(
    addr: std::net::SocketAddr,
    request: &[u8],
    until: &str,
) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut seen = Vec::new();
    if until.is_empty() {
        return (stream, String::new());
    }
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the gateway answered in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&seen).contains(until) {
            return (stream, String::from_utf8_lossy(&seen).into_owned());
        }
    }
}

pub(crate) async fn status_of(addr: std::net::SocketAddr, extra: &[(&str, &str)]) -> u16 {
    let (_, text) = send_raw(addr, &chat(extra), "\r\n\r\n").await;
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

/// A person's verified identity: `user` in `groups`, of [`ISSUER`].
pub(crate) fn identity(user: &str, groups: &[&str]) -> crate::claims::Identity {
    crate::claims::Identity {
        iss: ISSUER.into(),
        sub: format!("sub-{user}"),
        user: user.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        roles: Vec::new(),
        scopes: Vec::new(),
        tenant: None,
        client: None,
        actors: Vec::new(),
        machine: false,
        exp: 0,
        pod: None,
        node: None,
        claims: serde_json::Map::new(),
        rendered_headers: Default::default(),
    }
}

/// A server closing connections idle for its keep-alive (5s, as uvicorn
/// and cpp-httplib do), answering `{}` otherwise. The close and a request
/// sent just then cross: the server drops the request unread. It is played
/// here as any request arriving on a connection idle for 4s or more being
/// dropped, so the race is hit every time, not once in a while. Returns
/// its address and how many requests it dropped.
pub(crate) async fn keep_alive_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    const CLOSING: Duration = Duration::from_secs(4);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = dropped.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let dropped = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut idle_since = None::<std::time::Instant>;
                // One GET per read: the clients send no body.
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    if idle_since.is_some_and(|at| at.elapsed() >= CLOSING) {
                        dropped.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                    idle_since = Some(std::time::Instant::now());
                }
            });
        }
    });
    (addr, dropped)
}
