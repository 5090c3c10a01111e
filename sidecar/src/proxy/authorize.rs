//! Applies the access policy to an authenticated request:
//!
//! 1. the path is normalised, and the normalised path is what the model gets;
//! 2. the endpoint class is read from method and path;
//! 3. for inference (and `POST /api/show`) the model is read from the JSON
//!    body, which is read whole up to the body limit and then forwarded
//!    byte for byte;
//! 4. a rule must allow caller, class and model, or the answer is 403 naming
//!    the kind of check that failed;
//! 5. `GET /api/tags` and `GET /v1/models` answers are trimmed to the models
//!    the caller may use.
//!
//! Requests on unauthenticated (probe) paths skip the policy.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::authenticate::Unauthenticated;
use super::{BoxFuture, call_boxed, runtime_of};
use crate::audit::AuditTrail;
use crate::body::{Body, BoxError, boxed, full};
use crate::claims::Identity;
use crate::error::GatewayError;
use crate::policy::model_list::{filter_models, requested_model};
use crate::policy::{DenyKind, EndpointClass, classify, normalize_path};

/// The largest model list read for filtering.
const MAX_MODEL_LIST_BYTES: usize = 8 * 1024 * 1024;

/// What the policy decided, for later layers (quotas, audit).
#[derive(Debug, Clone)]
pub struct Authorized {
    pub class: EndpointClass,
    pub model: Option<String>,
    pub rule: String,
    /// The request body, when it was read whole to find the model.
    pub body: Option<Bytes>,
    /// The normalised path.
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

            let (mut parts, body) = request.into_parts();
            let path = normalize_path(parts.uri.path()).map_err(GatewayError::BadPath)?;
            let class = classify(&parts.method, &path);
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            let path_and_query = match uri.path_and_query.as_ref().and_then(|p| p.query()) {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            uri.path_and_query = Some(
                path_and_query
                    .parse()
                    .map_err(|_| GatewayError::BadRequest("unparseable path"))?,
            );
            parts.uri = http::Uri::from_parts(uri).map_err(|_| GatewayError::Internal)?;

            let names_model = class == EndpointClass::Inference
                || (class == EndpointClass::Read && parts.method == Method::POST);
            // Held until the answer's headers: the buffered bytes count
            // against the global cap while this request holds them.
            let mut permit = runtime.body_budget.permit();
            let (body, buffered, model) = if names_model {
                let limits = &runtime.config.limits;
                let limit = limits.max_request_body_bytes;
                let read =
                    collect_limited(body, limit, &mut permit, limits.max_buffered_body_bytes);
                let bytes = match tokio::time::timeout(limits.body_read_timeout, read).await {
                    Ok(read) => read,
                    Err(_) => Err(ReadError::TimedOut),
                }
                .map_err(|e| match e {
                    ReadError::TooLarge => GatewayError::PayloadTooLarge { limit },
                    ReadError::Failed => {
                        GatewayError::BadRequest("the request body could not be read")
                    }
                    ReadError::TimedOut => {
                        count(&runtime, "body_timeout");
                        GatewayError::BodyTimeout
                    }
                    ReadError::Overloaded => {
                        count(&runtime, "buffered_body_bytes");
                        GatewayError::Overloaded("too many request bytes buffered")
                    }
                })?;
                let model = requested_model(&bytes)
                    .ok_or(GatewayError::Forbidden(DenyKind::MissingModel))?;
                (full(bytes.clone()), Some(bytes), Some(model))
            } else {
                (body, None, None)
            };
            let trail = parts.extensions.get::<Arc<AuditTrail>>().cloned();
            if let Some(trail) = &trail {
                trail.endpoint(class.as_str(), model.as_deref());
            }
            let rule = runtime
                .policy
                .decide(&identity, class, model.as_deref())
                .map_err(GatewayError::Forbidden)?
                .to_owned();
            if let Some(trail) = &trail {
                trail.authorized(class.as_str(), model.as_deref(), &rule);
            }
            let lists_models = parts.method == Method::GET
                && runtime.config.access.filter_model_lists
                && matches!(
                    path.to_ascii_lowercase().as_str(),
                    "/api/tags" | "/v1/models"
                );
            parts.extensions.insert(Authorized {
                class,
                model,
                rule,
                body: buffered,
                path: path.clone(),
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
            // A list the gateway cannot read is not passed on unfiltered.
            let filtered = filter_models(&bytes, |model| runtime.policy.may_use(&identity, model))
                .ok_or(GatewayError::UpstreamUnavailable)?;
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(filtered.len()));
            Ok(Response::from_parts(parts, full(filtered)))
        })
    }
}

/// Why a body could not be read whole.
#[derive(Debug, Clone, Copy)]
enum ReadError {
    TooLarge,
    Failed,
    /// The global cap on buffered body bytes is reached.
    Overloaded,
    /// `limits.bodyReadTimeout` passed.
    TimedOut,
}

fn count(runtime: &crate::runtime::Runtime, reason: &'static str) {
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
fn collect_limited<'a>(
    mut body: Body,
    limit: u64,
    permit: &'a mut crate::proxy::body_budget::BodyPermit,
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
