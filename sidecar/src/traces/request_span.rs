//! One request's spans. They are made lazily: a request refused before it
//! reaches the model gets its server span only when its answer is known
//! (with the start time of its arrival), and a request that is not audited
//! (a probe) gets none.
//!
//! - The server span, `"{method} {endpoint}"`, from arrival until the
//!   answer's last byte, carries what the audit line says: `user.id` (or
//!   its hash), `attach.tenant`, `attach.agent`, `attach.decision`,
//!   `attach.reason`, `attach.rule`, `gen_ai.request.model`, the token
//!   usage and the status; its events mark the phases (`authenticated`,
//!   `authorized`, `admitted`, `answered`).
//! - The client span, `"{gen_ai.operation.name} {model}"`, from the moment
//!   the request leaves for the model until the answer ends; the model gets
//!   its context in `traceparent` (and the caller's `tracestate`).

use std::sync::Mutex;
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};
use sha2::{Digest, Sha256};

use crate::audit::AuditRecord;

/// The spans of one request.
#[derive(Debug)]
pub struct RequestSpan {
    tracer: SdkTracer,
    /// The caller's trace, if it sent a valid `traceparent`.
    parent: Context,
    method: String,
    arrived: SystemTime,
    hash_user_id: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Phase events not yet on a span (it is made lazily).
    events: Vec<(&'static str, SystemTime)>,
    /// The server span, once made.
    server: Option<Context>,
    /// The span of the model's part.
    client: Option<Span>,
    done: bool,
}

/// What the client span is called and says, known where the request leaves.
#[derive(Debug, Clone, Default)]
pub struct ModelCall {
    /// `gen_ai.operation.name` for inference, else `None`.
    pub operation: Option<&'static str>,
    pub provider: &'static str,
    pub model: Option<String>,
    pub address: String,
}

impl RequestSpan {
    pub(super) fn new(
        tracer: SdkTracer,
        headers: &http::HeaderMap,
        method: &http::Method,
        hash_user_id: bool,
    ) -> Self {
        Self {
            tracer,
            parent: TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
            method: method.as_str().to_owned(),
            arrived: SystemTime::now(),
            hash_user_id,
            state: Mutex::new(State::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }

    /// Marks a phase of the request, now.
    pub fn event(&self, name: &'static str) {
        self.with(|state| match &state.server {
            Some(server) => {
                server
                    .span()
                    .add_event_with_timestamp(name, SystemTime::now(), Vec::new())
            }
            None => state.events.push((name, SystemTime::now())),
        });
    }

    /// The server span's context, made now if it was not.
    fn server(&self, state: &mut State, endpoint: Option<&str>) -> Context {
        if let Some(server) = &state.server {
            return server.clone();
        }
        let name = format!("{} {}", self.method, endpoint.unwrap_or("request"));
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(self.arrived)
            .with_attributes([KeyValue::new("http.request.method", self.method.clone())])
            .start_with_context(&self.tracer, &self.parent);
        for (name, at) in state.events.drain(..) {
            span.add_event_with_timestamp(name, at, Vec::new());
        }
        let cx = self.parent.with_span(span);
        state.server = Some(cx.clone());
        cx
    }

    /// Starts the client span and puts its context in the headers going to
    /// the model (`traceparent`, and the caller's `tracestate`), in place of
    /// whatever the caller sent.
    pub fn leave_for(&self, upstream: &ModelCall, endpoint: &str, headers: &mut http::HeaderMap) {
        self.with(|state| {
            if state.done {
                return;
            }
            let server = self.server(state, Some(endpoint));
            let name = match (upstream.operation, &upstream.model) {
                (Some(op), Some(model)) => format!("{op} {model}"),
                (Some(op), None) => op.to_owned(),
                (None, _) => self.method.clone(),
            };
            let mut attributes = vec![
                KeyValue::new("gen_ai.provider.name", upstream.provider),
                KeyValue::new("server.address", upstream.address.clone()),
            ];
            if let Some(op) = upstream.operation {
                attributes.push(KeyValue::new("gen_ai.operation.name", op));
            }
            if let Some(model) = &upstream.model {
                attributes.push(KeyValue::new("gen_ai.request.model", model.clone()));
            }
            let span = self
                .tracer
                .span_builder(name)
                .with_kind(SpanKind::Client)
                .with_attributes(attributes)
                .start_with_context(&self.tracer, &server);
            headers.remove("traceparent");
            headers.remove("tracestate");
            let cx = server.with_remote_span_context(span.span_context().clone());
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
            state.client = Some(span);
        });
    }

    /// Ends the spans with what the audit record says; once.
    pub fn finish(&self, record: &AuditRecord) {
        self.with(|state| {
            if std::mem::replace(&mut state.done, true) {
                return;
            }
            let server = self.server(state, record.endpoint);
            let now = SystemTime::now();
            let usage = usage_attributes(record);
            if let Some(mut client) = state.client.take() {
                client.set_attributes(usage.clone());
                if record.status >= 500 || record.reason == "client_closed" {
                    client.set_status(Status::error(record.reason));
                }
                client.end_with_timestamp(now);
            }
            let span = server.span();
            span.set_attributes(self.record_attributes(record));
            span.set_attributes(usage);
            if record.status >= 500 {
                span.set_status(Status::error(record.reason));
            }
            span.end_with_timestamp(now);
        });
    }

    /// Ends nothing and sends nothing: the request is not traced after all.
    pub fn discard(&self) {
        self.with(|state| state.done = true);
    }

    fn record_attributes(&self, record: &AuditRecord) -> Vec<KeyValue> {
        let mut out = vec![
            KeyValue::new("http.response.status_code", i64::from(record.status)),
            KeyValue::new("attach.decision", record.decision),
            KeyValue::new("attach.reason", record.reason),
            KeyValue::new("attach.request_id", record.request_id.clone()),
        ];
        if let Some(user) = &record.user {
            let id = if self.hash_user_id {
                hash(user)
            } else {
                user.clone()
            };
            out.push(KeyValue::new("user.id", id));
        }
        let optional = [
            ("attach.tenant", &record.tenant),
            ("attach.client", &record.client),
            ("attach.rule", &record.rule),
            ("gen_ai.request.model", &record.model),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                out.push(KeyValue::new(key, value.clone()));
            }
        }
        if let Some(agents) = &record.agent {
            out.push(KeyValue::new("attach.agent", agents.join(",")));
        }
        if let Some(endpoint) = record.endpoint {
            out.push(KeyValue::new("attach.endpoint", endpoint));
        }
        out
    }
}

impl Drop for RequestSpan {
    /// A request dropped unfinished and undiscarded (which the audit trail
    /// prevents) still ends its spans rather than leaking them open.
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut client) = state.client.take() {
            client.end();
        }
    }
}

fn usage_attributes(record: &AuditRecord) -> Vec<KeyValue> {
    let mut out = Vec::new();
    if let Some(n) = record.prompt_tokens {
        out.push(KeyValue::new(
            "gen_ai.usage.input_tokens",
            i64::try_from(n).unwrap_or(i64::MAX),
        ));
    }
    if let Some(n) = record.completion_tokens {
        out.push(KeyValue::new(
            "gen_ai.usage.output_tokens",
            i64::try_from(n).unwrap_or(i64::MAX),
        ));
    }
    if let Some(estimated) = record.tokens_estimated {
        out.push(KeyValue::new("attach.usage.estimated", estimated));
    }
    out
}

/// The hex SHA-256 of a user id.
fn hash(user: &str) -> String {
    Sha256::digest(user.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
