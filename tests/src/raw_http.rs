//! A client that sends exactly what a test says (any header name a client
//! could send, a raw body, a chunked body), over HTTP/1.1 or h2c (HTTP/2
//! with prior knowledge), so the same case can be tried both ways.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::HarnessError;

/// The protocol a request is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 over cleartext, prior knowledge.
    H2c,
}

impl Protocol {
    /// Both, for tests that run every case each way.
    pub const ALL: [Self; 2] = [Self::Http1, Self::H2c];
}

/// A request body.
#[derive(Debug, Clone)]
pub enum RawBody {
    Empty,
    /// Sent with `Content-Length`.
    Full(Bytes),
    /// Sent in these pieces without a length: chunked on HTTP/1.1, several
    /// DATA frames on h2c.
    Chunked(Vec<Bytes>),
}

/// An answer, read whole.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// One client per protocol.
#[derive(Debug, Clone)]
pub struct RawClient {
    http1: Client<HttpConnector, Body>,
    h2c: Client<HttpConnector, Body>,
}

impl Default for RawClient {
    fn default() -> Self {
        Self::new()
    }
}

impl RawClient {
    pub fn new() -> Self {
        Self {
            http1: Client::builder(TokioExecutor::new()).build_http(),
            h2c: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// Sends one request. Header names are sent as given (lower-cased:
    /// HTTP/2 requires it, and HTTP/1.1 ignores case).
    pub async fn send(
        &self,
        protocol: Protocol,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: RawBody,
    ) -> Result<RawResponse, HarnessError> {
        let other = |what: String| HarnessError::Other(what);
        let method: Method = method
            .parse()
            .map_err(|_| other(format!("bad method {method}")))?;
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| other(format!("bad header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| other(format!("bad header value {value:?}")))?;
            request = request.header(name, value);
        }
        let body: Body = match body {
            RawBody::Empty => Full::new(Bytes::new()).boxed(),
            RawBody::Full(bytes) => Full::new(bytes).boxed(),
            RawBody::Chunked(pieces) => {
                let frames = pieces
                    .into_iter()
                    .map(|p| Ok::<_, Infallible>(Frame::data(p)));
                StreamBody::new(futures::stream::iter(frames)).boxed()
            }
        };
        let request = request
            .body(body)
            .map_err(|e| other(format!("request: {e}")))?;
        let client = match protocol {
            Protocol::Http1 => &self.http1,
            Protocol::H2c => &self.h2c,
        };
        let response = client
            .request(request)
            .await
            .map_err(|e| other(format!("{url} over {protocol:?}: {e:?}")))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| other(format!("{url} body: {e}")))?
            .to_bytes();
        Ok(RawResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}
