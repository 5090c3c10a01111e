//! Quota admission and charging. A request is admitted only if every budget
//! that applies to the caller (and model) has room for its estimate (see
//! [`crate::quota::estimate`]); otherwise 429 with `Retry-After`. The
//! admission is an RAII hold, moved into the metered answer: the real usage
//! is charged when the answer ends, and the prompt plus what was streamed
//! when the client goes away; a request dropped before its answer (client
//! gone, timeout, panic) releases it too.
//!
//! A streamed OpenAI request that did not ask for usage has
//! `stream_options.include_usage` added to its canonical body (see
//! [`crate::canonical`]), and the usage-only final event is removed on the
//! way back.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response};
use tower::{Layer, Service};

use super::authenticate::Unauthenticated;
use super::authorize::Authorized;
use super::observe::Arrived;
use super::{BoxFuture, call_boxed, runtime_of};
use crate::audit::AuditTrail;
use crate::body::Body;
use crate::canonical::Engine;
use crate::claims::Identity;
use crate::error::GatewayError;
use crate::metrics::TokenLabels;
use crate::metrics::gen_ai::{self, Answer, Operation};
use crate::policy::EndpointClass;
use crate::quota::checks;
use crate::quota::estimate::{Estimate, estimate};
use crate::quota::metered_body::{Ended, MeteredBody};
use crate::quota::store::NotAdmitted;
use crate::quota::usage::{Shape, UsageMeter};

#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitLayer;

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admit { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Admit<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for Admit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = BoxFuture<Result<Response<Body>, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if request.extensions().get::<Unauthenticated>().is_some() {
            return Box::pin(inner.call(request));
        }
        let (Ok(runtime), Some(identity), Some(authorized)) = (
            runtime_of(&request),
            request.extensions().get::<Arc<Identity>>().cloned(),
            request.extensions().get::<Authorized>().cloned(),
        ) else {
            return Box::pin(std::future::ready(Err(GatewayError::Internal)));
        };
        let checks = checks(
            &runtime.config.quotas.limits,
            &identity,
            runtime.config.upstream.engine,
            authorized.model.as_ref(),
        );
        let store = runtime.quota_store.clone();
        // What the request may cost: reserved at admission, and charged
        // when no usage comes back.
        let estimate = match (authorized.class, &authorized.body) {
            (EndpointClass::Inference, Some(body)) => estimate(
                &authorized.path,
                &body.value,
                body.metering.max_output_tokens,
                runtime.config.quotas.default_max_output_tokens,
            ),
            _ => Estimate::default(),
        };

        // The canonical body asked the model for usage where the client did not.
        let added_usage = authorized.body.as_ref().is_some_and(|b| b.usage_added);
        let trail = request.extensions().get::<Arc<AuditTrail>>().cloned();
        let arrived = Arrived::of(&request);

        Box::pin(async move {
            let started = std::time::Instant::now();
            let admitted = store.admit(checks, estimate.reservation()).await;
            if admitted.as_ref().is_ok_and(Option::is_some) || admitted.is_err() {
                runtime
                    .metrics
                    .quota_store_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            let mut admission = match admitted {
                Ok(admission) => admission,
                Err(NotAdmitted::Refused(refusal)) => {
                    return Err(GatewayError::QuotaExceeded(refusal));
                }
                Err(NotAdmitted::Unavailable) => return Err(GatewayError::QuotaUnavailable),
                Err(NotAdmitted::Full) => return Err(GatewayError::QuotaStoreFull),
            };
            if let Some(trail) = &trail {
                trail.event("admitted");
            }
            // From here the model has the prompt: a request dropped on any
            // path (client gone, cancelled, panicked) is charged for it.
            if let Some(admission) = &mut admission {
                admission.charge_on_drop(estimate.prompt);
            }
            let response = match call_boxed(&mut inner, request).await {
                Ok(response) => response,
                Err(e) => {
                    // Nothing was generated; a model that timed out had
                    // the prompt.
                    if let Some(admission) = admission {
                        let charge = match e {
                            GatewayError::UpstreamTimeout => estimate.prompt,
                            _ => 0,
                        };
                        admission.settle(charge);
                    }
                    return Err(e);
                }
            };
            let (mut parts, body) = response.into_parts();
            let status = parts.status.as_u16();
            // Only inference answers carry usage (an MCP tool's answer is
            // not a model's: a `usage` member in it is the tool's data).
            let model_answer = authorized.class == EndpointClass::Inference
                && runtime.config.upstream.engine != Engine::Mcp;
            let shape = if model_answer {
                Shape::from_content_type(
                    parts
                        .headers
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok()),
                )
            } else {
                Shape::Opaque
            };
            if added_usage && shape == Shape::Sse {
                // One event is removed: the length is no longer known.
                parts.headers.remove(CONTENT_LENGTH);
            }
            if let Some(trail) = &trail {
                trail.defer();
            }
            let metrics = runtime.metrics.clone();
            let user = runtime
                .config
                .metrics
                .user_labels
                .then(|| identity.user.clone());
            // Served models by name; made-up names share one label.
            let model = authorized
                .model
                .as_ref()
                .map(|m| m.label().to_owned())
                .unwrap_or_default();
            let gen_ai = model_answer.then(|| {
                let config = &runtime.config;
                let operation = Operation {
                    gen_ai_operation_name: gen_ai::operation_name(&authorized.path),
                    gen_ai_provider_name: gen_ai::provider_name(config.upstream.engine),
                    gen_ai_request_model: model.clone(),
                    attach_backend: config.metrics.backend.clone(),
                };
                let tenant = config
                    .metrics
                    .tenant_labels
                    .then(|| identity.tenant.clone().unwrap_or_default());
                (operation, tenant)
            });
            let streamed = matches!(shape, Shape::Sse | Shape::NdJson);
            let meter = UsageMeter::new(shape, added_usage, estimate.prompt);
            let on_done = Box::new(move |ended: Ended| {
                let usage = ended.usage;
                if let Some((operation, tenant)) = gen_ai {
                    let error_type = if ended.broke_off {
                        Some("stream_error".to_owned())
                    } else {
                        (status >= 400).then(|| status.to_string())
                    };
                    metrics.gen_ai.record(&Answer {
                        operation,
                        user: user.clone(),
                        tenant,
                        input_tokens: usage.prompt,
                        output_tokens: usage.completion,
                        duration: arrived.elapsed(),
                        first_chunk: ended
                            .first_chunk
                            .filter(|_| streamed)
                            .map(|at| at.saturating_duration_since(arrived)),
                        error_type,
                    });
                }
                if let Some(admission) = admission {
                    admission.settle(usage.total());
                }
                for (kind, count) in [("prompt", usage.prompt), ("completion", usage.completion)] {
                    metrics
                        .tokens
                        .get_or_create(&TokenLabels {
                            model: model.clone(),
                            kind,
                            user: user.clone(),
                            estimated: usage.estimated,
                        })
                        .inc_by(count);
                }
                if let Some(trail) = trail {
                    trail.finish(status, "forwarded", Some(usage));
                }
            });
            let drain_for = runtime.config.quotas.drain_after_client_left;
            let body = crate::body::boxed(MeteredBody::new(body, meter, on_done, drain_for));
            Ok(Response::from_parts(parts, body))
        })
    }
}
