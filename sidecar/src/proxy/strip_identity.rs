//! Removes every `X-Attach-*` header the client sent, before anything else
//! looks at the request: only the gateway speaks for the caller's identity.
//! Every spelling an upstream could read as one goes: any case, `_` for `-`
//! (`X_Attach_User` is `HTTP_X_ATTACH_USER` to a WSGI/CGI server).

use std::task::{Context, Poll};

use http::{HeaderMap, Request};
use tower::{Layer, Service};

/// The prefix of every identity header the gateway sets.
pub const PREFIX: &str = "x-attach-";

#[derive(Debug, Clone, Copy, Default)]
pub struct StripIdentityLayer;

impl<S> Layer<S> for StripIdentityLayer {
    type Service = StripIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StripIdentity { inner }
    }
}

#[derive(Debug, Clone)]
pub struct StripIdentity<S> {
    inner: S,
}

/// Removes every header whose name, read as [`super::client_headers::normalized`],
/// starts with `x-attach-`.
pub fn strip(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|name| super::client_headers::normalized(name.as_str()).starts_with(PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

impl<S, B> Service<Request<B>> for StripIdentity<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        strip(request.headers_mut());
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_every_client_sent_identity_header_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Attach-User", "admin".parse().unwrap());
        headers.append("x-attach-groups", "admins".parse().unwrap());
        headers.append("x-attach-groups", "root".parse().unwrap());
        headers.insert("X-ATTACH-CLAIMS", "e30".parse().unwrap());
        headers.insert("x-attach-anything-new", "1".parse().unwrap());
        headers.insert("X_Attach_User", "admin".parse().unwrap());
        headers.insert("x-attach_groups", "admins".parse().unwrap());
        headers.insert("x_ATTACH-claims", "e30".parse().unwrap());
        headers.insert("x-attachment", "kept".parse().unwrap());
        headers.insert("x_attachment", "kept".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        strip(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(headers.contains_key("x-attachment"));
        assert!(headers.contains_key("x_attachment"));
        assert!(headers.contains_key("content-type"));
    }
}
