//! The HTTP client for talking to identity providers: discovery documents
//! and JWKS. HTTPS through rustls with the Mozilla root set compiled in (so
//! the gateway needs no CA bundle in its image); plain HTTP only where the
//! config allowed it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;

/// The largest discovery or JWKS document read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// How long one fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept: below the 5s keep-alive of
/// many servers (and the idle timeouts of the load balancers in front of
/// IdPs), so that a connection the server is closing is never picked for a
/// request it would drop unread.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL {url}: {message}")]
    Url { url: String, message: String },
    #[error("{url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("{url} timed out after {}s", FETCH_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: body over {MAX_DOCUMENT_BYTES} bytes or unreadable: {message}")]
    Body { url: String, message: String },
    #[error("{url}: not the expected JSON: {message}")]
    Json { url: String, message: String },
}

/// The gateway's own small pooled HTTPS client: IdP documents, token
/// exchange, and span export.
#[derive(Clone, Debug)]
pub struct IdpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl IdpClient {
    /// Builds the client with rustls and the compiled-in web PKI roots.
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let connector = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
        {
            Ok(builder) => builder.https_or_http().enable_http1().wrap_connector(http),
            // The ring provider supports rustls's safe defaults, so this is
            // unreachable in practice; fall back to the crate's defaults.
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_or_http()
                .enable_http1()
                .wrap_connector(http),
        };
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .build(connector),
        }
    }

    /// GETs `url` and parses its JSON body into `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, FetchError> {
        let request = request(http::Method::GET, url, None)?;
        let (status, body) = self.send(url, request).await?;
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| FetchError::Json {
            url: url.to_owned(),
            message: e.to_string(),
        })
    }

    /// POSTs a form to `url` with HTTP Basic client authentication (RFC 6749
    /// §2.3.1); returns the status and the JSON body, whatever the status
    /// (OAuth errors come as JSON with 4xx). Neither the form nor the
    /// credentials appear in errors.
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        client: (&str, &str),
    ) -> Result<(http::StatusCode, serde_json::Value), FetchError> {
        self.post(url, form, Some(client)).await
    }

    /// POSTs a form to `url` as a public client, which names itself in the
    /// form (`client_id`) and has no secret (RFC 6749 §2.3, §3.2.1): a CLI
    /// on a person's machine. Otherwise as [`IdpClient::post_form`], but an
    /// empty body is `null` (RFC 7009 revocation answers 200 with none).
    pub async fn post_public_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<(http::StatusCode, serde_json::Value), FetchError> {
        self.post(url, form, None).await
    }

    async fn post(
        &self,
        url: &str,
        form: &[(&str, &str)],
        client: Option<(&str, &str)>,
    ) -> Result<(http::StatusCode, serde_json::Value), FetchError> {
        use base64::Engine;
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = request(http::Method::POST, url, Some(Bytes::from(body)))?;
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        if let Some((id, secret)) = client {
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                form_encode(id),
                form_encode(secret)
            ));
            if let Ok(value) = http::HeaderValue::from_str(&format!("Basic {credentials}")) {
                headers.insert(http::header::AUTHORIZATION, value);
            }
        }
        let (status, body) = self.send(url, request).await?;
        if client.is_none() && body.is_empty() {
            return Ok((status, serde_json::Value::Null));
        }
        let json = serde_json::from_slice(&body).map_err(|e| FetchError::Json {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
        Ok((status, json))
    }

    /// Sends `request` as it is and returns the answer whatever its status,
    /// its body capped and the whole exchange timed out like a document's.
    pub async fn send_request(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, FetchError> {
        let url = request.uri().to_string();
        let (parts, body) = request.into_parts();
        let (head, body) = self
            .send_parts(&url, http::Request::from_parts(parts, Full::new(body)))
            .await?;
        Ok(http::Response::from_parts(head, body))
    }

    async fn send(
        &self,
        url: &str,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(http::StatusCode, Bytes), FetchError> {
        self.send_parts(url, request)
            .await
            .map(|(head, body)| (head.status, body))
    }

    async fn send_parts(
        &self,
        url: &str,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(http::response::Parts, Bytes), FetchError> {
        let fetch = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| FetchError::Transport {
                        url: url.to_owned(),
                        message: error_chain(&e),
                    })?;
            let (head, body) = response.into_parts();
            Limited::new(body, MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map(|b| (head, b.to_bytes()))
                .map_err(|e| FetchError::Body {
                    url: url.to_owned(),
                    message: e.to_string(),
                })
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| FetchError::Timeout {
                url: url.to_owned(),
            })?
    }
}

fn request(
    method: http::Method,
    url: &str,
    body: Option<Bytes>,
) -> Result<http::Request<Full<Bytes>>, FetchError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| FetchError::Url {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("attach-gateway/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| FetchError::Url {
            url: url.to_owned(),
            message: e.to_string(),
        })
}

/// `application/x-www-form-urlencoded` (also what RFC 6749 §2.3.1 asks of
/// client ids and secrets in Basic credentials).
fn form_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Default for IdpClient {
    fn default() -> Self {
        Self::new()
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[tokio::test]
    async fn a_connection_the_server_is_closing_for_idleness_is_never_reused() {
        // With hyper-util's 90s default, the second fetch went out on the
        // connection the server was closing, and failed.
        let (addr, dropped) = crate::testkit::keep_alive_server().await;
        let client = IdpClient::new();
        let url = format!("http://{addr}/jwks");
        client.get_json::<serde_json::Value>(&url).await.unwrap();
        tokio::time::sleep(Duration::from_millis(4_200)).await;
        let second = client.get_json::<serde_json::Value>(&url).await;
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        assert_eq!(second.unwrap(), serde_json::json!({}));
    }
}
