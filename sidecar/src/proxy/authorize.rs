//! Applies the access policy to an authenticated request, on one canonical
//! form of it (see [`crate::canonical`]):
//!
//! 1. the path is normalised and classified with the engine's endpoint
//!    table; the model receives the table's spelling of it;
//! 2. where the decision needs the model, it is read where the engine reads
//!    it: from the JSON body (read whole up to the body limit, checked and
//!    canonicalised; the model receives the canonical body), or from the
//!    path (`GET /v1/models/{model}`); names are canonicalised;
//! 3. a rule must allow caller, class and model, or the answer is 403 naming
//!    the kind of check that failed. Endpoints that describe one model
//!    (`POST /api/show`, `GET /v1/models/{model}`) also need the model to be
//!    one the caller may use for inference, and `GET /v1/models/{model}`
//!    answers for a model the caller may not use exactly as the engine
//!    answers for one it does not have;
//! 4. model lists (`/api/tags`, `/api/ps`, `/v1/models`) are trimmed to the
//!    models the caller may use.
//!
//! Requests on unauthenticated (probe) paths skip the policy.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::authenticate::Unauthenticated;
use super::body_budget::BodyPermit;
use super::{BoxFuture, call_boxed, runtime_of};
use crate::audit::AuditTrail;
use crate::body::{Body, BoxError, boxed, full};
use crate::canonical::{
    self, BodyError, CanonicalBody, Engine, JudgedModel, ModelName, canonical_name,
};
use crate::claims::Identity;
use crate::error::GatewayError;
use crate::keys::KeyGrant;
use crate::policy::endpoint::{Endpoint, ModelSource};
use crate::policy::model_list::filter_models;
use crate::policy::{DenyKind, EndpointClass, classify, normalize_path};
use crate::rescue::Reason;
use crate::runtime::Runtime;

/// Marks a request whose body the gateway read whole (within the body
/// limit) and rebuilt. Its canonical form may be a little longer than what
/// the client sent (a model's `:latest`, an added `stream_options`), so
/// forwarding does not measure it against the limit again.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyReadWhole;

/// The largest model list read for filtering.
pub(super) const MAX_MODEL_LIST_BYTES: usize = 8 * 1024 * 1024;

/// What the policy decided, for later layers (quotas, metering, audit).
#[derive(Debug, Clone)]
pub struct Authorized {
    pub class: EndpointClass,
    /// The endpoint as classified: where its model came from, which of its
    /// body's fields meter.
    pub endpoint: Endpoint,
    /// The model judged, canonical.
    pub model: Option<JudgedModel>,
    pub rule: String,
    /// The canonical body, when the decision read the body: its bytes are
    /// what the model receives, its value and metering fields what was
    /// judged.
    pub body: Option<Arc<CanonicalBody>>,
    /// The path forwarded (normalised, in the endpoint table's spelling).
    pub path: String,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorizeLayer;

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Boxed here, outside the future, so the future's type is concrete.
        let request = request.map(boxed);
        Box::pin(async move {
            if request.extensions().get::<Unauthenticated>().is_some() {
                return call_boxed(&mut inner, request).await;
            }
            let runtime = runtime_of(&request)?;
            let identity = request
                .extensions()
                .get::<Arc<Identity>>()
                .cloned()
                .ok_or(GatewayError::Internal)?;
            if runtime.config.upstream.engine == Engine::Mcp {
                return super::authorize_mcp::authorize(&mut inner, runtime, identity, request)
                    .await;
            }

            let (mut parts, body) = request.into_parts();
            let normalized = normalize_path(parts.uri.path()).map_err(GatewayError::BadPath)?;
            let engine = runtime.config.upstream.engine;
            let endpoint = classify(engine, &parts.method, &normalized);
            let class = endpoint.class;
            let mut path = endpoint.path.clone();

            // Held until the answer's headers: the buffered bytes count
            // against the global cap while this request holds them.
            let mut permit = runtime.body_budget.permit();
            let (body, canonical_body, name) = match endpoint.model {
                ModelSource::Body | ModelSource::BodyOrName => {
                    let canonical =
                        read_canonical(&runtime, &endpoint, &parts.headers, body, &mut permit)
                            .await?;
                    // The forwarded body is the canonical one, whole.
                    parts
                        .headers
                        .insert(CONTENT_LENGTH, HeaderValue::from(canonical.bytes.len()));
                    parts.headers.remove(TRANSFER_ENCODING);
                    parts.headers.remove(CONTENT_ENCODING);
                    parts.extensions.insert(BodyReadWhole);
                    let name = canonical.model.clone();
                    (
                        full(canonical.bytes.clone()),
                        Some(Arc::new(canonical)),
                        name,
                    )
                }
                ModelSource::PathSegment => {
                    let (prefix, raw) = path.rsplit_once('/').unwrap_or(("", ""));
                    let raw = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
                    let name = canonical_name(engine, &raw)
                        .map_err(|e| GatewayError::BadBody(BodyError::Name(e)))?;
                    path = format!(
                        "{prefix}/{}",
                        percent_encoding::utf8_percent_encode(name.as_str(), SEGMENT)
                    );
                    (body, None, Some(name))
                }
                ModelSource::None | ModelSource::List => (body, None, None),
            };
            set_path(&mut parts, &path)?;

            let model = match name {
                Some(name) => Some(JudgedModel {
                    served: runtime.served_models.serves(&name, &runtime.upstream).await,
                    name,
                }),
                None => None,
            };
            let model_name = model.as_ref().map(|m| m.name.as_str());
            let trail = parts.extensions.get::<Arc<AuditTrail>>().cloned();
            if let Some(trail) = &trail {
                trail.endpoint(class.as_str(), model_name);
            }
            // A personal API key narrows its identity to some models.
            let grant = parts.extensions.get::<KeyGrant>().cloned();
            let key_allows = |m: &str| grant.as_ref().is_none_or(|g| g.allows(m));
            let decided = runtime
                .policy
                .decide(&identity, class, model_name)
                .and_then(|rule| {
                    // An endpoint that describes one model reveals only a
                    // model the caller may use.
                    let describes = matches!(
                        endpoint.model,
                        ModelSource::BodyOrName | ModelSource::PathSegment
                    );
                    match model_name {
                        Some(m) if !key_allows(m) => Err(DenyKind::Model),
                        Some(m) if describes && !runtime.policy.may_use(&identity, m) => {
                            Err(DenyKind::Model)
                        }
                        _ => Ok(rule),
                    }
                });
            let rule = match (decided, endpoint.model, &model) {
                (Ok(rule), _, _) => rule.to_owned(),
                (Err(DenyKind::Model), ModelSource::PathSegment, Some(model)) => {
                    return Ok(not_found(engine, &model.name));
                }
                (Err(kind), _, _) => return Err(GatewayError::Forbidden(kind)),
            };
            if let Some(trail) = &trail {
                trail.authorized(class.as_str(), model_name, &rule);
            }
            let lists_models = parts.method == Method::GET
                && endpoint.model == ModelSource::List
                && runtime.config.access.filter_model_lists;
            // Only the full lists say what the backend serves (`/api/ps`
            // lists the loaded ones).
            let full_list = matches!(endpoint.path.as_str(), "/api/tags" | "/v1/models");
            parts.extensions.insert(Authorized {
                class,
                endpoint: endpoint.clone(),
                model,
                rule,
                body: canonical_body,
                path,
            });

            let response = call_boxed(&mut inner, Request::from_parts(parts, body)).await?;
            drop(permit);
            if !lists_models || !response.status().is_success() {
                return Ok(response);
            }
            let (mut parts, body) = response.into_parts();
            let mut permit = runtime.body_budget.permit();
            let bytes = collect_limited(body, MAX_MODEL_LIST_BYTES as u64, &mut permit, u64::MAX)
                .await
                .map_err(|_| GatewayError::UpstreamUnavailable)?;
            if full_list {
                runtime.served_models.observe_list(&bytes);
            }
            // A list the gateway cannot read is not passed on unfiltered;
            // names are judged in their canonical form, and a name outside
            // the engine's grammar is never shown.
            let filtered = filter_models(&bytes, |listed| {
                canonical_name(engine, listed).is_ok_and(|name| {
                    runtime.policy.may_use(&identity, name.as_str()) && key_allows(name.as_str())
                })
            })
            .ok_or(GatewayError::UpstreamUnavailable)?;
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(filtered.len()));
            Ok(Response::from_parts(parts, full(filtered)))
        })
    }
}

/// Characters re-encoded in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b':')
    .remove(b'~');

pub(super) fn set_path(parts: &mut http::request::Parts, path: &str) -> Result<(), GatewayError> {
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    let path_and_query = match uri.path_and_query.as_ref().and_then(|p| p.query()) {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    uri.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| GatewayError::BadRequest("unparseable path"))?,
    );
    parts.uri = http::Uri::from_parts(uri).map_err(|_| GatewayError::Internal)?;
    Ok(())
}

/// Reads a whole request body, uncompressed, within the body limit, the
/// read timeout and the global budget of buffered bytes.
pub(super) async fn read_whole(
    runtime: &Runtime,
    headers: &http::HeaderMap,
    body: Body,
    permit: &mut BodyPermit,
) -> Result<Bytes, GatewayError> {
    canonical::check_content_encoding(headers.get(CONTENT_ENCODING).map(HeaderValue::as_bytes))
        .map_err(GatewayError::BadBody)?;
    let limits = &runtime.config.limits;
    let limit = limits.max_request_body_bytes;
    let read = collect_limited(body, limit, permit, limits.max_buffered_body_bytes);
    let bytes = match tokio::time::timeout(limits.body_read_timeout, read).await {
        Ok(read) => read,
        Err(_) => Err(ReadError::TimedOut),
    }
    .map_err(|e| match e {
        ReadError::TooLarge => GatewayError::PayloadTooLarge { limit },
        ReadError::Failed => GatewayError::BadRequest("the request body could not be read"),
        ReadError::TimedOut => {
            count(runtime, "body_timeout");
            GatewayError::BodyTimeout
        }
        ReadError::Overloaded => {
            count(runtime, "buffered_body_bytes");
            GatewayError::Overloaded("too many request bytes buffered")
        }
    })?;
    Ok(bytes)
}

/// Reads the whole body and puts it in canonical form.
async fn read_canonical(
    runtime: &Runtime,
    endpoint: &Endpoint,
    headers: &http::HeaderMap,
    body: Body,
    permit: &mut BodyPermit,
) -> Result<CanonicalBody, GatewayError> {
    let bytes = read_whole(runtime, headers, body, permit).await?;
    let context = canonical::Context {
        engine: runtime.config.upstream.engine,
        endpoint,
        default_model: runtime.default_model.as_ref(),
    };
    canonical::canonicalize(context, &bytes).map_err(|e| match e {
        BodyError::MissingModel => GatewayError::Forbidden(DenyKind::MissingModel),
        e => GatewayError::BadBody(e),
    })
}

/// The engine's answer for a model it does not have, for a model the caller
/// may not use: nothing tells the two apart. (Ollama's `GET /v1/models/{model}`:
/// `ShowHandler`'s 404, rewritten by its OpenAI `RetrieveWriter`.)
fn not_found(engine: Engine, name: &ModelName) -> Response<Body> {
    let body = match engine {
        // Go's encoder writes the fields in struct order; canonical Ollama
        // names hold nothing JSON would escape.
        Engine::Ollama => format!(
            "{{\"error\":{{\"message\":\"model '{name}' not found\",\"type\":\"api_error\",\"param\":null,\"code\":null}}}}\n"
        ),
        // Only Ollama has this route; others never classify it.
        Engine::Vllm | Engine::Openai | Engine::Mcp => r#"{"detail":"Not Found"}"#.to_owned(),
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.extensions_mut().insert(Reason("denied_model"));
    response
}

/// Why a body could not be read whole.
#[derive(Debug, Clone, Copy)]
pub(super) enum ReadError {
    TooLarge,
    Failed,
    /// The global cap on buffered body bytes is reached.
    Overloaded,
    /// `limits.bodyReadTimeout` passed.
    TimedOut,
}

fn count(runtime: &Runtime, reason: &'static str) {
    runtime
        .metrics
        .load_shed
        .get_or_create(&crate::metrics::ReasonLabels { reason })
        .inc();
}

/// Reads a whole body of at most `limit` bytes, taking each chunk from the
/// global body budget first (`permit`, capped at `max_buffered`). The
/// future is boxed here, where its type is concrete, so callers stay `Send`
/// without higher-ranked lifetime trouble.
pub(super) fn collect_limited<'a>(
    mut body: Body,
    limit: u64,
    permit: &'a mut BodyPermit,
    max_buffered: u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, ReadError>> + Send + 'a>> {
    Box::pin(async move {
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ReadError::Failed)?;
            if let Ok(data) = frame.into_data() {
                if (buf.len() as u64).saturating_add(data.len() as u64) > limit {
                    return Err(ReadError::TooLarge);
                }
                if !permit.grow(data.len() as u64, max_buffered) {
                    return Err(ReadError::Overloaded);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    })
}
