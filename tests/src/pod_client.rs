//! The in-cluster test client: `attach-pod-client serve` runs in a pod and
//! makes HTTP requests, TCP connections and DNS lookups from the pod network
//! on behalf of a test on the host, which calls it over the pod's IP
//! ([`PodClient`]). Requests thus reach Services the way any other pod's
//! do: through cluster DNS, kube-proxy and the bridge.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::HarnessError;

/// The port `serve` listens on in the pod.
pub const PORT: u16 = 8080;

/// An HTTP request to make from the pod.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HttpCall {
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: Option<String>,
    /// Whole-request timeout (default 10 s).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// A file in the pod whose contents are sent as the bearer token: a
    /// projected ServiceAccount token, read at each call (the kubelet
    /// rotates it). The test never sees the token.
    #[serde(default)]
    pub bearer_file: Option<String>,
}

impl HttpCall {
    /// `method url`, no headers, no body.
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_owned(),
            url: url.to_owned(),
            ..Self::default()
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Sends the token in the pod's file `path` as the bearer token.
    pub fn bearer_file(mut self, path: &str) -> Self {
        self.bearer_file = Some(path.to_owned());
        self
    }

    /// Sets a JSON body.
    pub fn json(mut self, body: &serde_json::Value) -> Self {
        self.body = Some(body.to_string());
        self.header("content-type", "application/json")
    }
}

/// What the pod got back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpResult {
    pub status: u16,
    /// Lower-case names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// A TCP connection attempt from the pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectResult {
    pub connected: bool,
    pub error: Option<String>,
}

/// A line sent over TCP from the pod, and the reply's first bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExchangeResult {
    pub reply: String,
    pub error: Option<String>,
}

/// A DNS lookup from the pod (the pod's resolv.conf, as any program's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveResult {
    pub addresses: Vec<IpAddr>,
    pub error: Option<String>,
}

/// Makes `call`; transport errors come back as `Err`.
pub async fn perform(call: &HttpCall) -> Result<HttpResult, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(call.timeout_ms.unwrap_or(10_000)))
        .build()
        .map_err(|e| e.to_string())?;
    let method = Method::from_bytes(call.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut request = client.request(method, &call.url);
    for (name, value) in &call.headers {
        request = request.header(name, value);
    }
    if let Some(path) = &call.bearer_file {
        let token = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        request = request.bearer_auth(token.trim());
    }
    if let Some(body) = &call.body {
        request = request.body(body.clone());
    }
    let response = request.send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let body = response.text().await.map_err(|e| format!("{e:?}"))?;
    Ok(HttpResult {
        status,
        headers,
        body,
    })
}

/// Tries a TCP connection to `address` (`host:port`).
pub async fn connect(address: &str, timeout: Duration) -> ConnectResult {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => ConnectResult {
            connected: true,
            error: None,
        },
        Ok(Err(e)) => ConnectResult {
            connected: false,
            error: Some(e.to_string()),
        },
        Err(_) => ConnectResult {
            connected: false,
            error: Some(format!("timed out after {timeout:?}")),
        },
    }
}

/// Connects to `address`, sends `line`, and returns the first bytes of
/// the reply (up to 256), e.g. a Redis `PING`.
pub async fn exchange(address: &str, line: &str, timeout: Duration) -> ExchangeResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(line.as_bytes()).await?;
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(reply)) => ExchangeResult { reply, error: None },
        Ok(Err(e)) => ExchangeResult {
            reply: String::new(),
            error: Some(e.to_string()),
        },
        Err(_) => ExchangeResult {
            reply: String::new(),
            error: Some(format!("timed out after {timeout:?}")),
        },
    }
}

/// Looks `name` up.
pub async fn resolve(name: &str) -> ResolveResult {
    match tokio::net::lookup_host((name, 0)).await {
        Ok(addrs) => ResolveResult {
            addresses: addrs.map(|a| a.ip()).collect(),
            error: None,
        },
        Err(e) => ResolveResult {
            addresses: Vec::new(),
            error: Some(e.to_string()),
        },
    }
}

#[derive(Debug, Deserialize)]
struct ConnectCall {
    address: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ResolveCall {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ExchangeCall {
    address: String,
    line: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Serves the client's API on `listener` until the task ends:
/// `POST /http` ([`HttpCall`] -> [`HttpResult`], 502 with the error),
/// `POST /connect` (`{address, timeout_ms}` -> [`ConnectResult`]),
/// `POST /resolve` (`{name}` -> [`ResolveResult`]), `POST /exchange`
/// (`{address, line, timeout_ms}` -> [`ExchangeResult`]), `GET /healthz`.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handle);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn json_reply<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string(value) {
        Ok(body) => reply(StatusCode::OK, body),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(reply(StatusCode::BAD_REQUEST, "unreadable body".into()));
    };
    let bad = |e: serde_json::Error| reply(StatusCode::BAD_REQUEST, e.to_string());
    let response = match (parts.method, parts.uri.path()) {
        (Method::GET, "/healthz") => reply(StatusCode::OK, "ok".into()),
        (Method::POST, "/http") => match serde_json::from_slice::<HttpCall>(&body) {
            Ok(call) => match perform(&call).await {
                Ok(result) => json_reply(&result),
                Err(e) => reply(StatusCode::BAD_GATEWAY, e),
            },
            Err(e) => bad(e),
        },
        (Method::POST, "/connect") => match serde_json::from_slice::<ConnectCall>(&body) {
            Ok(call) => {
                let timeout = Duration::from_millis(call.timeout_ms.unwrap_or(3000));
                json_reply(&connect(&call.address, timeout).await)
            }
            Err(e) => bad(e),
        },
        (Method::POST, "/resolve") => match serde_json::from_slice::<ResolveCall>(&body) {
            Ok(call) => json_reply(&resolve(&call.name).await),
            Err(e) => bad(e),
        },
        (Method::POST, "/exchange") => match serde_json::from_slice::<ExchangeCall>(&body) {
            Ok(call) => {
                let timeout = Duration::from_millis(call.timeout_ms.unwrap_or(3000));
                json_reply(&exchange(&call.address, &call.line, timeout).await)
            }
            Err(e) => bad(e),
        },
        _ => reply(StatusCode::NOT_FOUND, "not found".into()),
    };
    Ok(response)
}

/// The test's handle on a running client pod.
#[derive(Debug, Clone)]
pub struct PodClient {
    base: String,
    http: reqwest::Client,
}

impl PodClient {
    /// The client serving at `pod_ip`:[`PORT`].
    pub fn new(pod_ip: &str) -> Self {
        Self {
            base: format!("http://{pod_ip}:{PORT}"),
            http: reqwest::Client::new(),
        }
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, HarnessError> {
        let url = format!("{}{path}", self.base);
        let http_err = |source| HarnessError::Http {
            what: url.clone(),
            source,
        };
        let response = self
            .http
            .post(&url)
            .json(body)
            .send()
            .await
            .map_err(http_err)?;
        let status = response.status();
        let text = response.text().await.map_err(http_err)?;
        if !status.is_success() {
            return Err(HarnessError::Status {
                what: url,
                status: status.as_u16(),
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(|source| HarnessError::Json { what: url, source })
    }

    /// Makes `call` from the pod.
    pub async fn http(&self, call: &HttpCall) -> Result<HttpResult, HarnessError> {
        self.post("/http", call).await
    }

    /// Tries a TCP connection from the pod.
    pub async fn connect(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<ConnectResult, HarnessError> {
        let body = serde_json::json!({
            "address": address,
            "timeout_ms": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        });
        self.post("/connect", &body).await
    }

    /// Sends `line` to `address` from the pod; returns the reply's start.
    pub async fn exchange(
        &self,
        address: &str,
        line: &str,
        timeout: Duration,
    ) -> Result<ExchangeResult, HarnessError> {
        let body = serde_json::json!({
            "address": address,
            "line": line,
            "timeout_ms": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        });
        self.post("/exchange", &body).await
    }

    /// Looks `name` up from the pod.
    pub async fn resolve(&self, name: &str) -> Result<ResolveResult, HarnessError> {
        self.post("/resolve", &serde_json::json!({"name": name}))
            .await
    }
}
