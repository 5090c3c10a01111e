//! Cleans the client's headers before anything else reads one or the gateway
//! sets one, so no client header can remove, replace or impersonate a header
//! the gateway sets or judges by:
//!
//! 1. A `Connection` header naming a header the gateway sets or depends on
//!    (`Host`, `Authorization`, `Content-Length`, `Content-Type`,
//!    `Content-Encoding`, `Transfer-Encoding`, `X-Request-Id`,
//!    `X-Forwarded-*`, `Forwarded`, `X-Attach-*`, a token exchange header) is
//!    refused with 400: a proxy that honoured it would drop that header after
//!    the gateway set it.
//! 2. Hop-by-hop headers go: those `Connection` names, and `Connection`,
//!    `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
//!    `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`.
//! 3. `X-Forwarded-*`, `Forwarded` and `X-Real-IP` go, unless the client's
//!    address is in `trustedProxies`.
//! 4. `X-Amzn-SageMaker-*` go: vLLM's SageMaker route takes the model to run
//!    from `X-Amzn-SageMaker-Adapter-Identifier`, over the body's.
//!
//! Header names are compared as any upstream might read them: without case,
//! with `_` for `-` (WSGI/CGI servers map both to `HTTP_X_...`), and with
//! surrounding white space ignored. (`X-Attach-*` in every such spelling is
//! removed by `strip_identity`.)

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use http::header::CONNECTION;
use http::{HeaderMap, HeaderName, Request};
use tower::{Layer, Service};

use super::{ClientAddr, runtime_of};
use crate::error::GatewayError;
use crate::runtime::Runtime;

/// Why a request's headers were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the Connection header names {0:?}, a header the gateway sets")]
    ConnectionNamesGatewayHeader(String),
}

/// Headers the gateway sets, replaces or judges by (normalised spelling).
const GATEWAY_OWNED: [&str; 7] = [
    "host",
    "authorization",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "x-request-id",
];

/// RFC 9110 §7.6.1 connection-specific headers, and `Upgrade`.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A header name as any upstream might read it: lower case, `_` as `-`,
/// without surrounding white space. (Borrowed when already so, as the names
/// the server parsed usually are.)
pub fn normalized(name: &str) -> std::borrow::Cow<'_, str> {
    let name = name.trim();
    if name.bytes().all(|b| b != b'_' && !b.is_ascii_uppercase()) {
        return std::borrow::Cow::Borrowed(name);
    }
    std::borrow::Cow::Owned(
        name.chars()
            .map(|c| {
                if c == '_' {
                    '-'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect(),
    )
}

fn is_forwarding(normalized: &str) -> bool {
    normalized.starts_with("x-forwarded-") || normalized == "forwarded" || normalized == "x-real-ip"
}

fn is_gateway_owned(normalized: &str, extra: &[String]) -> bool {
    GATEWAY_OWNED.contains(&normalized)
        || is_forwarding(normalized)
        || normalized.starts_with(super::strip_identity::PREFIX)
        || extra.iter().any(|e| e == normalized)
}

/// Cleans `headers` in place (see the module docs). `trusted` says whether
/// the client is a trusted proxy; `extra` lists more gateway-owned header
/// names (normalised), such as token exchange headers.
pub fn clean(headers: &mut HeaderMap, trusted: bool, extra: &[String]) -> Result<(), HeaderError> {
    let named: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|name| normalized(&String::from_utf8_lossy(name)).into_owned())
        .filter(|name| !name.is_empty())
        .collect();
    if let Some(owned) = named.iter().find(|n| is_gateway_owned(n, extra)) {
        return Err(HeaderError::ConnectionNamesGatewayHeader(
            owned.chars().take(64).collect(),
        ));
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = normalized(name.as_str());
            HOP_BY_HOP.contains(&&*n)
                || named.iter().any(|m| *m == *n)
                || (!trusted && is_forwarding(&n))
                || n.starts_with("x-amzn-sagemaker-")
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ClientHeadersLayer;

impl<S> Layer<S> for ClientHeadersLayer {
    type Service = ClientHeaders<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientHeaders { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ClientHeaders<S> {
    inner: S,
}

fn trusted(runtime: &Runtime, client: Option<&ClientAddr>) -> bool {
    let proxies = &runtime.config.trusted_proxies;
    !proxies.is_empty()
        && client.is_some_and(|ClientAddr(addr)| {
            let ip = addr.ip().to_canonical();
            proxies.iter().any(|net| net.contains(&ip))
        })
}

/// Token exchange headers (lower case), which the gateway sets.
fn exchange_headers(runtime: &Runtime) -> Vec<String> {
    runtime
        .config
        .issuers
        .iter()
        .filter_map(|i| i.token_exchange.as_ref())
        .map(|e| normalized(&e.header).into_owned())
        .collect()
}

impl<S, B> Service<Request<B>> for ClientHeaders<S>
where
    S: Service<Request<B>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Either<std::future::Ready<Result<S::Response, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let runtime: Arc<Runtime> = match runtime_of(&request) {
            Ok(runtime) => runtime,
            Err(e) => return Either::Left(std::future::ready(Err(e))),
        };
        let trusted = trusted(&runtime, request.extensions().get::<ClientAddr>());
        let extra = exchange_headers(&runtime);
        if let Err(e) = clean(request.headers_mut(), trusted, &extra) {
            return Either::Left(std::future::ready(Err(GatewayError::BadHeader(e))));
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_may_not_name_what_the_gateway_sets() {
        for named in [
            "x-attach-user",
            "X-Attach-Groups",
            "x_attach_claims",
            " X-ATTACH-TENANT ",
            "host",
            "Authorization",
            "content-length",
            "x-forwarded-for",
            "X_Forwarded_Host",
            "forwarded",
            // Upper case with nothing else to normalise: still read as
            // the name it is.
            "FORWARDED",
            "HOST",
            "x-request-id",
            "x-downstream-token",
        ] {
            let mut h = headers(&[("connection", &format!("keep-alive, {named}"))]);
            let err = clean(&mut h, false, &["x-downstream-token".into()]).unwrap_err();
            assert!(
                matches!(err, HeaderError::ConnectionNamesGatewayHeader(_)),
                "{named}"
            );
        }
    }

    #[test]
    fn hop_by_hop_headers_go_first() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret-hop, SECRETHOP, __"),
            ("secrethop", "1"),
            // `_` is read as `-` wherever it is, a name of nothing else too.
            ("--", "1"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("x_secret_hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("content-type", "application/json"),
        ]);
        clean(&mut h, false, &[]).unwrap();
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn forwarding_headers_are_kept_only_from_trusted_proxies() {
        let pairs = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x_forwarded_for", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-amzn-sagemaker-adapter-identifier", "big"),
            ("X_Amzn_SageMaker_Adapter_Alias", "big"),
            ("accept", "*/*"),
        ];
        let mut h = headers(&pairs);
        clean(&mut h, false, &[]).unwrap();
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
        let mut h = headers(&pairs);
        clean(&mut h, true, &[]).unwrap();
        assert_eq!(h.len(), 7, "a trusted proxy's forwarding headers stay");
        assert!(!h.contains_key("x-amzn-sagemaker-adapter-identifier"));
    }
}
