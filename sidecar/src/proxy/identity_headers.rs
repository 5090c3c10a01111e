//! Tells the model who is calling, in headers it can trust because the
//! gateway stripped every client-sent copy first:
//!
//! | header             | value |
//! |--------------------|-------|
//! | `X-Attach-Issuer`  | the token's issuer: user, group, tenant, client and agent names are unique only within it, so a subject is `X-Attach-Issuer` + `X-Attach-User` |
//! | `X-Attach-User`    | the mapped user claim (default `sub`) |
//! | `X-Attach-Groups`  | groups, comma-separated |
//! | `X-Attach-Tenant`  | the tenant |
//! | `X-Attach-Client`  | the calling client (`azp` / `client_id`) |
//! | `X-Attach-Agent`   | who acts when it is not the user: the actor chain (current actor first: `act`, or the client that obtained a person's token for them), or the machine client acting alone; absent for a person acting directly |
//! | `X-Attach-Claims`  | base64url (no padding) of a JSON object: `iss`, `sub`, `user`, `groups`, `roles`, `scopes`, `tenant`, `client`, `exp`, `pod` and `node` (a ServiceAccount token bound to a pod), and `claims` (the raw claims listed in `identity.forwardClaims`) |
//!
//! Text values are percent-encoded where they hold `%`, `,`, control or
//! non-ASCII characters, so any value is header-safe and lists split cleanly
//! on `,`. The caller's `Authorization` header is removed unless
//! `identity.forwardAuthorization` is set, and with it the API-key headers
//! clients also put their credential in ([`API_KEY_HEADERS`]: Anthropic's
//! SDK and Claude Code's `apiKeyHelper` send the token in `X-Api-Key` too,
//! Azure OpenAI clients in `Api-Key`); so is every header a token
//! exchange of any issuer writes (`tokenExchange.header`), on every request
//! (those with no exchange, and probes, too): only the gateway sets it, with
//! the token it exchanged. `Cookie` is always removed: the gateway judges
//! tokens, never cookies, and a browser's cookies are credentials for
//! another site (Open WebUI, forwarding its user's token, sends its own
//! session cookie along), which no model server reads.

use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tower::{Layer, Service};

use super::exchange::Exchanged;
use crate::claims::Identity;
use crate::keys::KeyGrant;
use crate::runtime::Runtime;

pub const ISSUER: HeaderName = HeaderName::from_static("x-attach-issuer");
pub const USER: HeaderName = HeaderName::from_static("x-attach-user");
pub const GROUPS: HeaderName = HeaderName::from_static("x-attach-groups");
pub const TENANT: HeaderName = HeaderName::from_static("x-attach-tenant");
pub const CLIENT: HeaderName = HeaderName::from_static("x-attach-client");
pub const CLAIMS: HeaderName = HeaderName::from_static("x-attach-claims");
pub const AGENT: HeaderName = HeaderName::from_static("x-attach-agent");

/// Names the personal API key a request was authenticated with.
pub const KEY_ID_HEADER: HeaderName = HeaderName::from_static("x-attach-key-id");

/// Headers clients carry their API key or token in besides
/// `Authorization`: the model never gets the caller's credential in them.
pub const API_KEY_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
];

/// Encoded in header text: controls (and, implicitly, non-ASCII), `%` so
/// that decoding is unambiguous, and `,` which separates list items.
const UNSAFE: &AsciiSet = &CONTROLS.add(b'%').add(b',');

fn encode(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&utf8_percent_encode(value, UNSAFE).to_string()).ok()
}

/// The identity headers of one identity, ready to copy onto requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered(Vec<(HeaderName, HeaderValue)>);

/// Renders the identity headers of `identity`.
pub fn render(identity: &Identity) -> Rendered {
    let mut out = Vec::with_capacity(7);
    if let Some(v) = encode(&identity.iss) {
        out.push((ISSUER, v));
    }
    if let Some(v) = encode(&identity.user) {
        out.push((USER, v));
    }
    let groups: Vec<String> = identity
        .groups
        .iter()
        .map(|g| utf8_percent_encode(g, UNSAFE).to_string())
        .collect();
    if let Ok(v) = HeaderValue::from_str(&groups.join(",")) {
        out.push((GROUPS, v));
    }
    if let Some(v) = identity.tenant.as_deref().and_then(encode) {
        out.push((TENANT, v));
    }
    if let Some(v) = identity.client.as_deref().and_then(encode) {
        out.push((CLIENT, v));
    }
    let agents: Vec<String> = identity
        .agents()
        .iter()
        .map(|a| utf8_percent_encode(a, UNSAFE).to_string())
        .collect();
    if !agents.is_empty()
        && let Ok(v) = HeaderValue::from_str(&agents.join(","))
    {
        out.push((AGENT, v));
    }
    if let Ok(json) = serde_json::to_vec(identity)
        && let Ok(v) = HeaderValue::from_str(&URL_SAFE_NO_PAD.encode(json))
    {
        out.push((CLAIMS, v));
    }
    Rendered(out)
}

/// Sets the identity headers for `identity`, rendering them on first use.
pub fn set_identity(headers: &mut HeaderMap, identity: &Identity) {
    let rendered = identity.rendered_headers.get_or_init(|| render(identity));
    for (name, value) in &rendered.0 {
        headers.insert(name.clone(), value.clone());
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityHeadersLayer;

impl<S> Layer<S> for IdentityHeadersLayer {
    type Service = IdentityHeaders<S>;
    fn layer(&self, inner: S) -> Self::Service {
        IdentityHeaders { inner }
    }
}

#[derive(Debug, Clone)]
pub struct IdentityHeaders<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for IdentityHeaders<S>
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
        let runtime = request.extensions().get::<Arc<Runtime>>().cloned();
        // A personal API key is never forwarded: unlike a token, it is no
        // credential the model could check, and it does not expire soon.
        let forward_authorization = runtime
            .as_ref()
            .is_some_and(|r| r.config.identity.forward_authorization)
            && request.extensions().get::<KeyGrant>().is_none();
        let headers = request.headers_mut();
        headers.remove(COOKIE);
        if !forward_authorization {
            headers.remove(AUTHORIZATION);
            for name in API_KEY_HEADERS {
                headers.remove(name);
            }
        }
        if let Some(runtime) = &runtime {
            // Downstream-token headers come only from the gateway's own
            // exchange (Authorization follows forwardAuthorization above).
            for exchanger in runtime.exchangers.values() {
                if exchanger.header() != AUTHORIZATION {
                    headers.remove(exchanger.header());
                }
            }
        }
        if let Some(Exchanged { header, value }) = request.extensions_mut().remove::<Exchanged>() {
            request.headers_mut().insert(header, value);
        }
        if let Some(identity) = request.extensions().get::<Arc<Identity>>().cloned() {
            set_identity(request.headers_mut(), &identity);
        }
        if let Some(grant) = request.extensions().get::<KeyGrant>()
            && let Ok(id) = HeaderValue::from_str(&grant.id)
        {
            // The id only (public, base62): which key the identity came by.
            request.headers_mut().insert(KEY_ID_HEADER, id);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    fn identity() -> Identity {
        Identity {
            iss: "https://idp".into(),
            sub: "s-1".into(),
            user: "zoë,admin".into(),
            groups: vec!["ai-power-users".into(), "a,b".into()],
            roles: vec!["llm-user".into()],
            scopes: vec![],
            tenant: Some("acme".into()),
            client: Some("attach-cli".into()),
            actors: vec![],
            machine: false,
            exp: 42,
            pod: None,
            node: None,
            claims: Map::new(),
            rendered_headers: Default::default(),
        }
    }

    #[test]
    fn values_are_header_safe_and_lists_split_cleanly() {
        let mut h = HeaderMap::new();
        set_identity(&mut h, &identity());
        assert_eq!(h[ISSUER], "https://idp");
        assert_eq!(h[USER], "zo%C3%AB%2Cadmin");
        assert_eq!(h[GROUPS], "ai-power-users,a%2Cb");
        assert_eq!(h[TENANT], "acme");
        assert_eq!(h[CLIENT], "attach-cli");
        assert!(h.get(AGENT).is_none(), "a human acting directly");
        let mut agent = identity();
        agent.actors = vec!["summariser".into(), "planner,1".into()];
        let mut h = HeaderMap::new();
        set_identity(&mut h, &agent);
        assert_eq!(h[AGENT], "summariser,planner%2C1");
    }

    #[test]
    fn claims_header_is_base64url_json_of_the_identity() {
        let mut h = HeaderMap::new();
        set_identity(&mut h, &identity());
        let raw = URL_SAFE_NO_PAD.decode(h[CLAIMS].as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(v["user"], "zoë,admin");
        assert_eq!(v["groups"][1], "a,b");
        assert_eq!(v["exp"], 42);
        assert_eq!(v["iss"], "https://idp");
    }
}
