//! Prometheus metrics, served on the admin port at `/metrics`.
//!
//! One registry lives for the whole process, so counters survive config
//! reloads. The OpenTelemetry GenAI instruments ([`gen_ai`]) live in a
//! second one, without the `attach_` prefix.

pub mod gen_ai;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `attach_requests_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The HTTP status answered.
    pub status: u16,
    /// Why: `forwarded`, `unauthenticated_path`, or the refusal's reason.
    pub reason: &'static str,
}

/// `attach_verify_duration_seconds` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerifyLabels {
    /// `hit` when the verified-token cache answered, else `miss`.
    pub cache: &'static str,
}

/// `attach_jwks_refresh_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksLabels {
    pub issuer: String,
    /// `ok` or `error`.
    pub result: &'static str,
    /// `background`, `unknown_kid` or `initial`.
    pub trigger: &'static str,
}

/// Labels naming an issuer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    pub issuer: String,
}

/// `attach_claims_ignored_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// A configured issuer.
    pub issuer: String,
    /// The mapped field: `groups`, `roles`, `scopes`, `tenant`, `client`.
    pub claim: &'static str,
}

/// `attach_tokens_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    /// `prompt` or `completion`.
    pub kind: &'static str,
    /// Only with `metrics.userLabels`.
    pub user: Option<String>,
    /// Whether the count is an estimate (no usage reported).
    pub estimated: bool,
}

/// `attach_config_reloads_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels naming a kind of event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Labels naming why something happened.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Labels naming a quota store.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub store: &'static str,
}

/// Labels of an MCP message: its method (`(unknown)` for a method the
/// gateway does not know), the target of a call (a served one by name,
/// else `(unlisted)`; empty for other messages), and the decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct McpLabels {
    pub method: String,
    pub target: String,
    pub decision: &'static str,
}

/// Labels naming a config setting.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SettingLabels {
    pub setting: &'static str,
}

fn latency_histogram() -> Histogram {
    // 10 µs .. ~10 s
    Histogram::new(exponential_buckets(0.000_01, 4.0, 11))
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    gen_ai_registry: Registry,
    /// The OpenTelemetry GenAI instruments.
    pub gen_ai: gen_ai::GenAi,
    /// `attach_request_overhead_seconds`: from a request's arrival to its
    /// forwarding, what the gateway adds before the model sees it.
    pub request_overhead: Histogram,
    pub requests: Family<RequestLabels, Counter>,
    pub verify_duration: Family<VerifyLabels, Histogram, fn() -> Histogram>,
    pub jwks_refreshes: Family<JwksLabels, Counter>,
    pub jwks_keys: Family<IssuerLabels, Gauge>,
    pub upstream_duration: Histogram,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub in_flight: Gauge,
    pub tokens: Family<TokenLabels, Counter>,
    pub quota_store_duration: Histogram,
    /// `attach_quota_store_errors_total{kind}`: `unavailable`,
    /// `out_of_memory` (Redis at maxmemory), `memory_full`.
    pub quota_store_errors: Family<KindLabels, Counter>,
    /// Admissions holding a slot and a reservation now (0 when idle).
    pub quota_admissions_in_flight: Gauge,
    /// `attach_quota_store_up{store="redis"}`: 1 while the shared store
    /// answers (only with a shared store).
    quota_store_up: Family<StoreLabels, Gauge>,
    /// Requests admitted against the local store because Redis was
    /// unreachable and `failMode` is `open`.
    pub quota_fail_open: Counter,
    /// `attach_token_exchanges_total{result}`.
    pub token_exchanges: Family<ResultLabels, Counter>,
    /// `attach_claims_ignored_total{issuer,claim}`.
    pub claims_ignored: Family<ClaimLabels, Counter>,
    /// Client connections open now.
    pub connections_open: Gauge,
    /// `attach_connections_closed_total{reason}`: connections the gateway
    /// cut at a bound.
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// `attach_load_shed_total{reason}`: requests answered 503 at once.
    pub load_shed: Family<ReasonLabels, Counter>,
    /// Request-body bytes buffered now, across all requests.
    pub buffered_body_bytes: Gauge,
    /// Audit lines dropped because the writer fell behind.
    pub audit_dropped: Counter,
    /// `attach_trace_exports_total{result}`: span batches sent to the
    /// collector, `ok` or `error`.
    pub trace_exports: Family<ResultLabels, Counter>,
    /// `attach_config_restart_required{setting}`: 1 while a changed setting
    /// waits for a restart.
    pub restart_required: Family<SettingLabels, Gauge>,
    /// Cached verifications dropped because their key left the key set.
    pub token_cache_revoked: Counter,
    /// `attach_mcp_messages_total{method,target,decision}`.
    pub mcp_messages: Family<McpLabels, Counter>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("attach");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by status and reason",
            requests.clone(),
        );
        let verify_duration =
            Family::<VerifyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "verify_duration_seconds",
            "Time to authenticate a request's token",
            verify_duration.clone(),
        );
        let jwks_refreshes = Family::<JwksLabels, Counter>::default();
        registry.register(
            "jwks_refresh",
            "JWKS fetches, by issuer, result and trigger",
            jwks_refreshes.clone(),
        );
        let jwks_keys = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "jwks_keys",
            "Signing keys currently loaded, by issuer",
            jwks_keys.clone(),
        );
        let upstream_duration = latency_histogram();
        registry.register(
            "upstream_duration_seconds",
            "Time from forwarding a request to the model's response headers",
            upstream_duration.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config file reloads, by result (a refused reload keeps the last good config)",
            config_reloads.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests in flight, from arrival until their answer ends or the client leaves",
            in_flight.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "LLM tokens charged, by model and kind (and user, with metrics.userLabels)",
            tokens.clone(),
        );
        let quota_store_duration = latency_histogram();
        registry.register(
            "quota_store_duration_seconds",
            "Time to admit a request against the quota store",
            quota_store_duration.clone(),
        );
        let quota_store_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "quota_store_errors",
            "Quota store operations that failed, by kind (unavailable, out_of_memory, memory_full)",
            quota_store_errors.clone(),
        );
        let quota_admissions_in_flight = Gauge::default();
        registry.register(
            "quota_admissions_in_flight",
            "Admitted requests holding a quota slot and reservation now",
            quota_admissions_in_flight.clone(),
        );
        let quota_store_up = Family::<StoreLabels, Gauge>::default();
        registry.register(
            "quota_store_up",
            "1 while the shared quota store (Redis) answers, 0 after an operation failed until one succeeds",
            quota_store_up.clone(),
        );
        let quota_fail_open = Counter::default();
        registry.register(
            "quota_fail_open_admissions",
            "Requests admitted against this gateway's own counters because Redis was unreachable (failMode: open)",
            quota_fail_open.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Client connections cut at a bound, by reason",
            connections_closed.clone(),
        );
        let load_shed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "load_shed",
            "Requests answered 503 at once because the gateway is at a bound, by reason",
            load_shed.clone(),
        );
        let buffered_body_bytes = Gauge::default();
        registry.register(
            "buffered_body_bytes",
            "Request-body bytes buffered now, across all requests",
            buffered_body_bytes.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_lines_dropped",
            "Audit lines dropped because the audit writer fell behind",
            audit_dropped.clone(),
        );
        let trace_exports = Family::<ResultLabels, Counter>::default();
        registry.register(
            "trace_exports",
            "Span batches sent to the OTLP collector, by result (error: not accepted, or no answer)",
            trace_exports.clone(),
        );
        let restart_required = Family::<SettingLabels, Gauge>::default();
        registry.register(
            "config_restart_required",
            "1 while a changed setting takes effect only after a restart",
            restart_required.clone(),
        );
        let token_cache_revoked = Counter::default();
        registry.register(
            "token_cache_revoked",
            "Cached token verifications dropped because their signing key left the key set",
            token_cache_revoked.clone(),
        );
        let token_exchanges = Family::<ResultLabels, Counter>::default();
        registry.register(
            "token_exchanges",
            "Token exchanges by result: hit (cached), exchanged, refused, unavailable, bad_response",
            token_exchanges.clone(),
        );
        let claims_ignored = Family::<ClaimLabels, Counter>::default();
        registry.register(
            "claims_ignored",
            "Verified tokens whose mapped claim had a shape the IdP does not document, so it was left out (never turned into names)",
            claims_ignored.clone(),
        );
        let request_overhead = latency_histogram();
        registry.register(
            "request_overhead_seconds",
            "Time from a request's arrival to its forwarding to the model: what the gateway adds (authentication, authorization, token exchange, admission)",
            request_overhead.clone(),
        );
        let mcp_messages = Family::<McpLabels, Counter>::default();
        registry.register(
            "mcp_messages",
            "MCP JSON-RPC messages judged, by method, target (tool, resource or prompt) and decision",
            mcp_messages.clone(),
        );
        let mut gen_ai_registry = Registry::default();
        let gen_ai = gen_ai::GenAi::register(&mut gen_ai_registry);
        Self {
            registry,
            gen_ai_registry,
            gen_ai,
            request_overhead,
            claims_ignored,
            token_exchanges,
            tokens,
            quota_store_duration,
            quota_store_errors,
            quota_admissions_in_flight,
            quota_store_up,
            quota_fail_open,
            connections_open,
            connections_closed,
            load_shed,
            buffered_body_bytes,
            audit_dropped,
            trace_exports,
            restart_required,
            token_cache_revoked,
            mcp_messages,
            requests,
            verify_duration,
            jwks_refreshes,
            jwks_keys,
            upstream_duration,
            config_reloads,
            in_flight,
        }
    }

    /// Counts one judged MCP message.
    pub fn mcp_message(&self, method: &str, target: &str, allowed: bool) {
        self.mcp_messages
            .get_or_create(&McpLabels {
                method: method.to_owned(),
                target: target.to_owned(),
                decision: if allowed { "allow" } else { "deny" },
            })
            .inc();
    }

    /// Sets whether the shared quota store answers.
    pub fn quota_store_up(&self, up: i64) {
        self.quota_store_up
            .get_or_create(&StoreLabels { store: "redis" })
            .set(up);
    }

    /// Counts one token exchange outcome.
    pub fn token_exchange(&self, result: &'static str) {
        self.token_exchanges
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a claim left out of an identity for its shape.
    pub fn claim_ignored(&self, issuer: &str, claim: &'static str) {
        self.claims_ignored
            .get_or_create(&ClaimLabels {
                issuer: issuer.to_owned(),
                claim,
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.gen_ai_registry))
            .and_then(|()| encode_eof(&mut out));
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
