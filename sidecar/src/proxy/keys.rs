//! `/.attach/keys`: users mint, list and revoke their own personal API
//! keys; the backend's key administrators list and revoke anyone's. Every
//! call needs a token from the identity provider: a key never manages keys
//! (a key that could mint keys could outlive itself forever).
//!
//! ```text
//! POST   /.attach/keys            {"name", "expiresIn", "models"} -> 201, the key (shown once)
//! GET    /.attach/keys[?all=true] -> {"keys": [...]}  (all: administrators only)
//! DELETE /.attach/keys/<id>       -> the revoked key's description
//! ```
//!
//! Requests for any other path pass on untouched.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde::Serialize;
use tower::{Layer, Service};

use super::authorize::read_whole;
use super::{BoxFuture, call_boxed, runtime_of};
use crate::audit::AuditTrail;
use crate::body::{Body, boxed, full};
use crate::claims::Identity;
use crate::error::GatewayError;
use crate::keys::store::MintRequest;
use crate::keys::{KeyGrant, KeysError};
use crate::rescue::Reason;
use crate::runtime::Runtime;

/// The collection's path.
pub const PATH: &str = "/.attach/keys";

/// What a request to `/.attach/keys` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Mint,
    List { all: bool },
    Revoke(String),
}

/// Reads a request's method, path and query as a key call: `None` when the
/// path is not under `/.attach/keys`, `Err` for a method it does not answer.
fn call_of(method: &Method, path: &str, query: Option<&str>) -> Option<Result<Call, KeysError>> {
    let rest = path.strip_prefix(PATH)?;
    let call = match (method, rest) {
        (&Method::POST, "") => Ok(Call::Mint),
        (&Method::GET, "") => Ok(Call::List {
            all: query.is_some_and(|q| q.split('&').any(|p| p == "all=true")),
        }),
        (&Method::DELETE, id) if id.len() > 1 && id.starts_with('/') => {
            Ok(Call::Revoke(id[1..].to_owned()))
        }
        (_, "") => Err(KeysError::Method),
        (_, id) if id.starts_with('/') => Err(KeysError::Method),
        // `/.attach/keysfoo` is no key path.
        _ => return None,
    };
    Some(call)
}

fn json(
    status: StatusCode,
    value: &impl Serialize,
    reason: &'static str,
) -> Result<Response<Body>, GatewayError> {
    let body = serde_json::to_vec(value).map_err(|_| GatewayError::Internal)?;
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.extensions_mut().insert(Reason(reason));
    Ok(response)
}

/// Whether `identity` is one of the backend's key administrators: a person
/// in person. An agent acting for an administrator does not administer
/// everyone's keys.
fn is_admin(runtime: &Runtime, identity: &Identity) -> bool {
    let admins = &runtime.config.api_keys.admins;
    identity.is_human() && admins.names_anyone() && admins.matches(identity)
}

async fn answer(
    runtime: Arc<Runtime>,
    request: Request<Body>,
    call: Call,
) -> Result<Response<Body>, GatewayError> {
    let keys = runtime
        .keys
        .clone()
        .ok_or(GatewayError::Keys(KeysError::Disabled))?;
    if request.extensions().get::<KeyGrant>().is_some() {
        return Err(GatewayError::Keys(KeysError::KeyCannotManage));
    }
    let identity = request
        .extensions()
        .get::<Arc<Identity>>()
        .cloned()
        .ok_or(GatewayError::Internal)?;
    let trail = request.extensions().get::<Arc<AuditTrail>>().cloned();
    match call {
        Call::Mint => {
            if runtime.exchangers.contains_key(&identity.iss) {
                return Err(GatewayError::Keys(KeysError::BadRequest(
                    "this backend exchanges tokens for the model, which a key cannot do: use a token from the identity provider".into(),
                )));
            }
            let (parts, body) = request.into_parts();
            let mut permit = runtime.body_budget.permit();
            let bytes = read_whole(&runtime, &parts.headers, body, &mut permit).await?;
            let asked: MintRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
                MintRequest::default()
            } else {
                serde_json::from_slice(&bytes).map_err(|e| {
                    GatewayError::Keys(KeysError::BadRequest(format!(
                        "the body is not a key request: {e}"
                    )))
                })?
            };
            let minted = keys
                .mint(&identity, asked)
                .await
                .map_err(GatewayError::Keys)?;
            if let Some(trail) = &trail {
                trail.api_key(&minted.info.id);
            }
            tracing::info!(id = %minted.info.id, user = %identity.user, "API key minted");
            json(StatusCode::CREATED, &minted, "api_key_minted")
        }
        Call::List { all } => {
            if all && !is_admin(&runtime, &identity) {
                return Err(GatewayError::Keys(KeysError::NotAdmin));
            }
            let owner = (!all).then_some(&*identity);
            let listed = keys.list(owner).await.map_err(GatewayError::Keys)?;
            json(
                StatusCode::OK,
                &serde_json::json!({ "keys": listed }),
                "api_keys_listed",
            )
        }
        Call::Revoke(id) => {
            let admin = is_admin(&runtime, &identity);
            let revoked = keys
                .revoke(&id, &identity, admin)
                .await
                .map_err(GatewayError::Keys)?;
            if let Some(trail) = &trail {
                trail.api_key(&revoked.id);
            }
            tracing::info!(id = %revoked.id, by = %identity.user, "API key revoked");
            json(StatusCode::OK, &revoked, "api_key_revoked")
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct KeysLayer;

impl<S> Layer<S> for KeysLayer {
    type Service = Keys<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Keys { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Keys<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Keys<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let request = request.map(boxed);
        let Some(call) = call_of(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        ) else {
            return call_boxed(&mut self.inner, request);
        };
        Box::pin(async move {
            let runtime = runtime_of(&request)?;
            answer(runtime, request, call.map_err(GatewayError::Keys)?).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_and_methods_are_read_exactly() {
        let get = Method::GET;
        type Case<'a> = (
            &'a Method,
            &'a str,
            Option<&'a str>,
            Option<Result<Call, KeysError>>,
        );
        let cases: &[Case<'_>] = &[
            (&Method::POST, "/.attach/keys", None, Some(Ok(Call::Mint))),
            (
                &get,
                "/.attach/keys",
                None,
                Some(Ok(Call::List { all: false })),
            ),
            (
                &get,
                "/.attach/keys",
                Some("all=true"),
                Some(Ok(Call::List { all: true })),
            ),
            (
                &get,
                "/.attach/keys",
                Some("x=1&all=true"),
                Some(Ok(Call::List { all: true })),
            ),
            (
                &get,
                "/.attach/keys",
                Some("all=1"),
                Some(Ok(Call::List { all: false })),
            ),
            (
                &Method::DELETE,
                "/.attach/keys/abc",
                None,
                Some(Ok(Call::Revoke("abc".into()))),
            ),
            (
                &Method::DELETE,
                "/.attach/keys",
                None,
                Some(Err(KeysError::Method)),
            ),
            (
                &Method::DELETE,
                "/.attach/keys/",
                None,
                Some(Err(KeysError::Method)),
            ),
            (
                &Method::PUT,
                "/.attach/keys",
                None,
                Some(Err(KeysError::Method)),
            ),
            (
                &get,
                "/.attach/keys/abc",
                None,
                Some(Err(KeysError::Method)),
            ),
            (&get, "/.attach/keysx", None, None),
            (&get, "/v1/models", None, None),
            (&Method::POST, "/.attach/key", None, None),
        ];
        for (method, path, query, want) in cases {
            assert_eq!(
                &call_of(method, path, *query),
                want,
                "{method} {path} {query:?}"
            );
        }
    }
}
