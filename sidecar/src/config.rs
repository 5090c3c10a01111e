//! The gateway's typed configuration: the contract between the operator,
//! which renders it into a ConfigMap, and the gateway, which loads it.
//!
//! The file is YAML (JSON is accepted too, being YAML) with
//! `apiVersion: attach.dev/v1alpha1` and `kind: GatewayConfig`. Field names
//! are camelCase. Durations are written as `30s`, `500ms`, `5m`.
//!
//! A config is parsed once into these types and checked by
//! [`GatewayConfig::validate`]; nothing downstream re-reads the raw file.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::AuditConfig;
pub use crate::canonical::Engine;
use crate::claims::{ClaimMapping, Preset};
use crate::policy::{EndpointClass, Rule, Subjects};
use crate::quota::QuotaLimit;
use crate::quota::store::StoreConfig;

/// The only `apiVersion` this gateway reads.
pub const API_VERSION: &str = "attach.dev/v1alpha1";
/// The only `kind` this gateway reads.
pub const KIND: &str = "GatewayConfig";

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse the config: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("apiVersion must be {API_VERSION:?}, found {0:?}")]
    ApiVersion(String),
    #[error("kind must be {KIND:?}, found {0:?}")]
    Kind(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The whole gateway configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    /// Always `attach.dev/v1alpha1`.
    pub api_version: String,
    /// Always `GatewayConfig`.
    pub kind: String,
    /// Where clients connect: the model's original port once injected.
    #[serde(default = "Listen::default_proxy")]
    pub listen: Listen,
    /// The admin listener: `/healthz`, `/readyz`, `/metrics`.
    #[serde(default = "Listen::default_admin")]
    pub admin: Listen,
    /// The model server the gateway forwards to.
    #[serde(default)]
    pub upstream: Upstream,
    /// The token issuers this gateway trusts. A token is checked against the
    /// issuer named by its `iss` claim; tokens from any other issuer fail.
    /// With no issuers, every request that needs a token is refused.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// What the model is told about the caller.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Paths forwarded without a token, matched exactly after normalisation
    /// (for probes such as Ollama's `/` or vLLM's `/health`). Only `GET` and
    /// `HEAD` requests qualify.
    #[serde(default)]
    pub unauthenticated_paths: Vec<String>,
    /// RFC 9728 protected-resource metadata.
    #[serde(default)]
    pub resource: ResourceMetadata,
    /// How many tokens, requests and concurrent requests callers may use.
    #[serde(default)]
    pub quotas: QuotaConfig,
    /// The audit log (read at start; a change needs a restart).
    #[serde(default)]
    pub audit: AuditConfig,
    /// Metric options.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Traces over OTLP (off unless an endpoint is set).
    #[serde(default)]
    pub tracing: crate::traces::TracingConfig,
    /// Size limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// Addresses (CIDRs) of proxies in front of the gateway whose
    /// `X-Forwarded-*` and `Forwarded` headers are passed on to the model.
    /// From anyone else those headers are dropped. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// When `true`, every authenticated request is refused with 403: what the
    /// operator renders for a backend whose references cannot be resolved, so
    /// that it fails closed.
    #[serde(default)]
    pub deny_all: bool,
    /// How often the config file is checked for changes.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
    /// The MCP server's endpoint and options (with `upstream.engine: mcp`).
    #[serde(default, skip_serializing_if = "is_default_mcp")]
    pub mcp: crate::mcp::McpConfig,
    /// Personal API keys (off by default).
    #[serde(default, skip_serializing_if = "is_default_api_keys")]
    pub api_keys: crate::keys::ApiKeysConfig,
    /// Who may call which endpoints with which models. A config file
    /// without this section denies every request (a file cut short by a
    /// writer is never more permissive than the whole); `access:
    /// {allowAll: true}` says "every authenticated caller, every model,
    /// inference and read". It is written last, so a file cut anywhere
    /// before its end has none.
    #[serde(default)]
    pub access: AccessConfig,
}

fn is_default_mcp(mcp: &crate::mcp::McpConfig) -> bool {
    *mcp == crate::mcp::McpConfig::default()
}

fn is_default_api_keys(keys: &crate::keys::ApiKeysConfig) -> bool {
    *keys == crate::keys::ApiKeysConfig::default()
}

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listen {
    /// The address to bind; `0.0.0.0` for every interface.
    pub address: IpAddr,
    /// The TCP port.
    pub port: u16,
}

impl Listen {
    fn default_proxy() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
        }
    }
    fn default_admin() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 9090,
        }
    }
}

/// The model server behind the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Upstream {
    /// `http://host:port` of the model; injected pods use `http://127.0.0.1:<internal>`.
    pub url: String,
    /// How long to wait for a TCP connection to the model. Past it: 504.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long to wait for the model's response headers. Past it: 504.
    /// Bodies, streams included, have no total timeout.
    #[serde(default = "default_response_header_timeout", with = "humantime_serde")]
    pub response_header_timeout: Duration,
    /// How long an idle pooled connection to the model is kept. The default
    /// (3s) is below the 5s keep-alive of uvicorn (vLLM, llama-cpp-python,
    /// the MCP Python SDK) and of cpp-httplib (llama.cpp's server): a
    /// connection the model is about to close is never picked for a
    /// request, which the model would drop unread (a 502). Keep it below
    /// the model server's own idle timeout.
    #[serde(default = "default_pool_idle_timeout", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// The model server: `ollama` (default), `vllm`, or `openai` (another
    /// OpenAI-compatible server). It decides how request bodies and model
    /// names are read and which endpoints exist.
    #[serde(default)]
    pub engine: Engine,
    /// For `vllm` and `openai`: the model the server runs when a request
    /// names none. Without it such requests are denied (`missing_model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
    /// The models the backend serves, for metric labels and per-model quota
    /// keys (other names are counted as `(unlisted)`). Empty: read from the
    /// engine's own list (`/api/tags`, `/v1/models`) every
    /// `modelListRefresh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served_models: Vec<String>,
    /// How often the engine's model list is read when `servedModels` is empty.
    #[serde(default = "default_model_list_refresh", with = "humantime_serde")]
    pub model_list_refresh: Duration,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            url: DEFAULT_UPSTREAM.to_owned(),
            connect_timeout: default_connect_timeout(),
            response_header_timeout: default_response_header_timeout(),
            pool_idle_timeout: default_pool_idle_timeout(),
            engine: Engine::default(),
            default_model: None,
            served_models: Vec::new(),
            model_list_refresh: default_model_list_refresh(),
        }
    }
}

impl Upstream {
    /// The declared default model, canonical.
    pub fn default_model(&self) -> Result<Option<crate::canonical::ModelName>, ConfigError> {
        let Some(raw) = &self.default_model else {
            return Ok(None);
        };
        if self.engine == Engine::Ollama {
            // Ollama has no default model: a request without one fails there.
            return Err(ConfigError::invalid(
                "upstream.defaultModel",
                "has no effect with engine ollama (Ollama serves no default model)",
            ));
        }
        crate::canonical::canonical_name(self.engine, raw)
            .map(Some)
            .map_err(|e| ConfigError::invalid("upstream.defaultModel", e.to_string()))
    }

    /// The declared served models, canonical.
    pub fn served_models(&self) -> Result<Vec<crate::canonical::ModelName>, ConfigError> {
        self.served_models
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                crate::canonical::canonical_name(self.engine, raw).map_err(|e| {
                    ConfigError::invalid(format!("upstream.servedModels[{i}]"), e.to_string())
                })
            })
            .collect()
    }
}

/// Ollama's default address.
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:11434";

/// The algorithms allowed when none are configured: every asymmetric JWS
/// algorithm the gateway implements. `none` and HMAC are never allowed.
pub const DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// An asymmetric JWS algorithm. HMAC algorithms cannot be named here, so a
/// shared-secret token can never be accepted, whatever the config says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    /// The matching `jsonwebtoken` algorithm.
    pub fn to_jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Self::RS256 => J::RS256,
            Self::RS384 => J::RS384,
            Self::RS512 => J::RS512,
            Self::PS256 => J::PS256,
            Self::PS384 => J::PS384,
            Self::PS512 => J::PS512,
            Self::ES256 => J::ES256,
            Self::ES384 => J::ES384,
            Self::EdDSA => J::EdDSA,
        }
    }

    /// Parses an algorithm name as written in configs and env vars.
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.trim().to_owned())).ok()
    }
}

/// One trusted token issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer URL, compared exactly with the token's `iss`.
    pub issuer: String,
    /// Where the signing keys are. Without it, OIDC discovery
    /// (`<issuer>/.well-known/openid-configuration`) finds `jwks_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// A local JWKS file used instead of fetching keys (air-gapped setups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The keys themselves, a JWKS (`{"keys": [...]}`), as the operator
    /// relays a cluster's ServiceAccount issuer keys, which only the API
    /// server serves. New keys come with a new config (a reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// Accepted `aud` values: a token must carry at least one. Required.
    pub audiences: Vec<String>,
    /// Accepted signing algorithms; defaults to every asymmetric one.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Scopes every token must carry (all of them).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Where the caller's identity is in the token.
    #[serde(default)]
    pub claims: ClaimMapping,
    /// The clients people sign in through (their apps, CLIs). With it, a
    /// person's token held by any other client was obtained for them by
    /// that client (token exchange, on-behalf-of), and that client is an
    /// agent acting for them. Required by `humanOnly` rules: without it, an
    /// exchanged token cannot be told from a direct sign-in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_clients: Vec<String>,
    /// How often the keys are refreshed in the background.
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// The least time between two fetches caused by unknown `kid`s.
    #[serde(default = "default_jwks_cooldown", with = "humantime_serde")]
    pub jwks_cooldown: Duration,
    /// Allow an `http://` issuer or JWKS URL that is not on loopback.
    /// For local testing only: keys fetched over plain HTTP can be forged.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Exchange this issuer's tokens for downstream-scoped ones (RFC 8693)
    /// before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<crate::exchange::TokenExchangeConfig>,
}

impl IssuerConfig {
    /// An issuer with defaults for everything but its URL, audiences and preset.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>, preset: Preset) -> Self {
        Self {
            issuer: issuer.into(),
            jwks_uri: None,
            jwks_file: None,
            jwks: None,
            audiences,
            algorithms: default_algorithms(),
            leeway: default_leeway(),
            required_scopes: Vec::new(),
            claims: ClaimMapping::preset(preset),
            user_clients: Vec::new(),
            jwks_refresh_interval: default_jwks_refresh(),
            jwks_cooldown: default_jwks_cooldown(),
            allow_insecure_http: false,
            token_exchange: None,
        }
    }
}

/// What the gateway tells the model about the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityConfig {
    /// Raw token claims copied into `X-Attach-Claims` under `claims`, beside
    /// the mapped identity (for example `email`, `name`).
    #[serde(default = "default_forward_claims")]
    pub forward_claims: Vec<String>,
    /// Forward the caller's `Authorization` header to the model. Off by
    /// default: the model needs the identity headers, not the bearer token.
    #[serde(default)]
    pub forward_authorization: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            forward_claims: default_forward_claims(),
            forward_authorization: false,
        }
    }
}

/// The access policy. Rules only allow; what no rule allows is denied with
/// 403. Admin endpoints are allowed only by a rule that names `admin`.
///
/// Fields that refuse come first and allow rules last, so that a file cut
/// short keeps every refusal and loses only allowances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessConfig {
    /// Agents (actors or machine clients) refused whatever the rules say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_agents: Vec<String>,
    /// Trim `GET /api/tags`, `GET /api/ps` and `GET /v1/models` to the models the caller
    /// may use.
    #[serde(default = "default_true")]
    pub filter_model_lists: bool,
    /// Forward paths that are in no endpoint class (default: deny them).
    #[serde(default)]
    pub allow_unknown_endpoints: bool,
    /// Allow rules, tried in order. None: nothing is allowed (unless
    /// `allowAll`).
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Every authenticated caller may use every model for inference and
    /// read endpoints (never admin), besides what the rules allow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_all: bool,
}

impl Default for AccessConfig {
    /// What a config file without `access` gets: nothing is allowed.
    fn default() -> Self {
        Self::deny()
    }
}

impl AccessConfig {
    /// Nothing is allowed.
    pub fn deny() -> Self {
        Self {
            denied_agents: Vec::new(),
            filter_model_lists: true,
            allow_unknown_endpoints: false,
            rules: Vec::new(),
            allow_all: false,
        }
    }

    /// Every authenticated caller may use every model for inference and
    /// read endpoints: the standalone (environment) default, written out as
    /// one explicit rule.
    pub fn authenticated() -> Self {
        Self {
            rules: default_rules(),
            ..Self::deny()
        }
    }

    /// The rules in force: `rules`, plus the everyone rule with `allowAll`.
    pub fn effective_rules(&self) -> Vec<Rule> {
        let mut rules = self.rules.clone();
        if self.allow_all {
            rules.extend(default_rules());
        }
        rules
    }
}

fn default_rules() -> Vec<Rule> {
    let everyone = Subjects {
        any_authenticated: true,
        ..Subjects::default()
    };
    vec![Rule::new(
        "authenticated",
        everyone,
        &["*"],
        &[EndpointClass::Inference, EndpointClass::Read],
    )]
}

fn default_true() -> bool {
    true
}

/// Metric options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsConfig {
    /// Label token counters with the user too. Off by default: one series
    /// per user can overwhelm Prometheus.
    #[serde(default)]
    pub user_labels: bool,
    /// Label the GenAI token usage with the caller's tenant too. Off by
    /// default, for the same reason.
    #[serde(default)]
    pub tenant_labels: bool,
    /// The `LLMBackend` this gateway protects (`namespace/name`), for the
    /// `attach_backend` label of the GenAI metrics. The operator sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// Quotas. Every applicable limit must have room for a request to be
/// admitted; the model's reported usage is charged when its answer ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaConfig {
    /// The limits; none by default.
    #[serde(default)]
    pub limits: Vec<QuotaLimit>,
    /// The most budgets (keys) kept in memory. Empty ones are forgotten
    /// first, then idle ones; a budget in use or at a limit never is (a new
    /// one is refused with 503 instead).
    #[serde(default = "default_max_quota_keys")]
    pub max_keys: usize,
    /// Where the counters live. A reload that changes it switches stores;
    /// in-memory budgets survive reloads that leave it as it is.
    #[serde(default)]
    pub store: StoreConfig,
    /// Output tokens reserved for a request that names no cap of its own
    /// (`max_tokens`, `max_completion_tokens`, `max_output_tokens`,
    /// `options.num_predict`).
    #[serde(default = "default_max_output_tokens")]
    pub default_max_output_tokens: u64,
    /// How long a Redis lease (a concurrency slot and its reservation)
    /// lives unless its request renews it: the longest the slots of a
    /// gateway that died stay taken. Running requests renew every third.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// In Redis, the most distinct models one owner (user, group, ...) may
    /// have per-model budgets for in a day, per limit.
    #[serde(default = "default_max_models_per_owner")]
    pub max_models_per_owner: u64,
    /// When a client leaves mid-answer, how long the gateway keeps reading
    /// the model's answer (and holds the request's concurrency slot) to
    /// charge the usage the model reports at its end. Past it, or with 0,
    /// the estimate is charged (`attach_tokens_total{estimated="true"}`).
    #[serde(default = "default_drain_after_client_left", with = "humantime_serde")]
    pub drain_after_client_left: Duration,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            limits: Vec::new(),
            max_keys: default_max_quota_keys(),
            store: StoreConfig::default(),
            default_max_output_tokens: default_max_output_tokens(),
            lease_ttl: default_lease_ttl(),
            max_models_per_owner: default_max_models_per_owner(),
            drain_after_client_left: default_drain_after_client_left(),
        }
    }
}

fn default_drain_after_client_left() -> Duration {
    Duration::from_secs(60)
}

fn default_max_output_tokens() -> u64 {
    1024
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_max_models_per_owner() -> u64 {
    64
}

fn default_max_quota_keys() -> usize {
    100_000
}

/// RFC 9728 protected-resource metadata, served at
/// `/.well-known/oauth-protected-resource` and named in 401 challenges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceMetadata {
    /// The resource identifier (its public URL). Without it, the URL is
    /// derived from each request's `Host` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Scopes to advertise; defaults to the issuers' required scopes.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
}

/// Size limits and timeouts on the client side. Each bound counts in
/// `attach_connections_closed_total{reason}` or `attach_load_shed_total{reason}`
/// when it trips. They apply to connections accepted after a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// The largest request body accepted (images make chat requests big).
    /// Over it: 413.
    #[serde(default = "default_max_body")]
    pub max_request_body_bytes: u64,
    /// Request-body bytes buffered at once across all requests (bodies read
    /// whole to find the model). Past it: 503 with `Retry-After`.
    #[serde(default = "default_max_buffered_body")]
    pub max_buffered_body_bytes: u64,
    /// How long a new connection may take to send its first bytes,
    /// protocol detection (the HTTP/2 preface) included.
    #[serde(default = "default_first_bytes_timeout", with = "humantime_serde")]
    pub first_bytes_timeout: Duration,
    /// How long a client may take to send its request headers (slowloris).
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a request body that is read whole may take to arrive
    /// (a slow body holds memory). Past it: 408.
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/1 keep-alive and HTTP/2 alike; HTTP/2 gets a GOAWAY).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval; a peer that does not answer within
    /// `http2KeepAliveTimeout` is disconnected.
    #[serde(default = "default_h2_keep_alive", with = "humantime_serde")]
    pub http2_keep_alive_interval: Duration,
    /// See `http2KeepAliveInterval`.
    #[serde(default = "default_h2_keep_alive", with = "humantime_serde")]
    pub http2_keep_alive_timeout: Duration,
    /// HTTP/2 streams open at once per connection.
    #[serde(default = "default_h2_streams")]
    pub http2_max_concurrent_streams: u32,
    /// The largest HTTP/2 header list (it bounds CONTINUATION floods).
    #[serde(default = "default_h2_header_list")]
    pub http2_max_header_list_size: u32,
    /// HTTP/2 streams reset by the client before the gateway accepted them
    /// (rapid reset); past it the connection gets a GOAWAY.
    #[serde(default = "default_h2_pending_resets")]
    pub http2_max_pending_reset_streams: usize,
    /// Client connections open at once; one over it is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests in flight at once (until their answer ends); past it: 503
    /// with `Retry-After` at once, not a queue.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_requests: u64,
    /// How long in-flight requests may run after SIGTERM before they are cut.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The most verified tokens remembered, so repeated tokens skip the
    /// signature check until they expire.
    #[serde(default = "default_token_cache_size")]
    pub token_cache_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: default_max_body(),
            max_buffered_body_bytes: default_max_buffered_body(),
            first_bytes_timeout: default_first_bytes_timeout(),
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            idle_timeout: default_idle_timeout(),
            http2_keep_alive_interval: default_h2_keep_alive(),
            http2_keep_alive_timeout: default_h2_keep_alive(),
            http2_max_concurrent_streams: default_h2_streams(),
            http2_max_header_list_size: default_h2_header_list(),
            http2_max_pending_reset_streams: default_h2_pending_resets(),
            max_connections: default_max_connections(),
            max_in_flight_requests: default_max_in_flight(),
            drain_timeout: default_drain_timeout(),
            token_cache_entries: default_token_cache_size(),
        }
    }
}

fn default_max_buffered_body() -> u64 {
    64 * 1024 * 1024
}
fn default_first_bytes_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_h2_keep_alive() -> Duration {
    Duration::from_secs(20)
}
fn default_h2_streams() -> u32 {
    128
}
fn default_h2_header_list() -> u32 {
    64 * 1024
}
fn default_h2_pending_resets() -> usize {
    20
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_in_flight() -> u64 {
    2048
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_response_header_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_model_list_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_algorithms() -> Vec<Algorithm> {
    DEFAULT_ALGORITHMS.to_vec()
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_cooldown() -> Duration {
    Duration::from_secs(30)
}
fn default_forward_claims() -> Vec<String> {
    vec!["email".into(), "name".into(), "preferred_username".into()]
}
fn default_max_body() -> u64 {
    32 * 1024 * 1024
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_token_cache_size() -> usize {
    10_000
}

impl GatewayConfig {
    /// A config with defaults everywhere, trusting `issuers`.
    pub fn new(issuers: Vec<IssuerConfig>) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            listen: Listen::default_proxy(),
            admin: Listen::default_admin(),
            upstream: Upstream::default(),
            issuers,
            identity: IdentityConfig::default(),
            unauthenticated_paths: Vec::new(),
            resource: ResourceMetadata::default(),
            access: AccessConfig::authenticated(),
            quotas: QuotaConfig::default(),
            audit: AuditConfig::default(),
            metrics: MetricsConfig::default(),
            tracing: crate::traces::TracingConfig::default(),
            limits: Limits::default(),
            trusted_proxies: Vec::new(),
            deny_all: false,
            reload_interval: default_reload_interval(),
            mcp: crate::mcp::McpConfig::default(),
            api_keys: crate::keys::ApiKeysConfig::default(),
        }
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self = serde_yaml::from_str(&text)?;
        config.read_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the values the config names by file (`quotas.store.urlFile`),
    /// as mounted Secrets are. Their contents are never logged.
    pub fn read_files(&mut self) -> Result<(), ConfigError> {
        for issuer in &mut self.issuers {
            if let Some(exchange) = &mut issuer.token_exchange
                && let Some(path) = &exchange.client_secret_file
            {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                exchange.client_secret = text.trim().to_owned();
            }
        }
        if let StoreConfig::Redis {
            url,
            url_file: Some(path),
            ..
        } = &mut self.quotas.store
        {
            let text = std::fs::read_to_string(&*path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            *url = text.trim().to_owned();
        }
        if let Some(path) = &self.api_keys.signing_key_file {
            let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            // A trailing newline from `echo` or an editor is not key material.
            let end = bytes.len()
                - bytes
                    .iter()
                    .rev()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
            if end < crate::keys::config::MIN_SIGNING_KEY_BYTES {
                return Err(ConfigError::invalid(
                    "apiKeys.signingKeyFile",
                    format!("{} holds fewer than 32 bytes", path.display()),
                ));
            }
            self.api_keys.signing_key = bytes[..end].to_vec();
        }
        Ok(())
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_yaml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything serde cannot: versions, URLs, non-empty lists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.api_version != API_VERSION {
            return Err(ConfigError::ApiVersion(self.api_version.clone()));
        }
        if self.kind != KIND {
            return Err(ConfigError::Kind(self.kind.clone()));
        }
        self.tracing
            .validate()
            .map_err(|m| ConfigError::invalid("tracing", m))?;
        let upstream = parse_url("upstream.url", &self.upstream.url)?;
        if upstream.scheme_str() != Some("http") {
            return Err(ConfigError::invalid(
                "upstream.url",
                "must be an http:// URL (the model listens on loopback inside the pod)",
            ));
        }
        if upstream.path() != "/" && !upstream.path().is_empty() {
            return Err(ConfigError::invalid(
                "upstream.url",
                "must not have a path: requests keep their own",
            ));
        }
        // Port 0 is "any free port": two of them never collide.
        if self.listen.port == self.admin.port
            && self.listen.port != 0
            && self.listen.address == self.admin.address
        {
            return Err(ConfigError::invalid(
                "admin.port",
                "must differ from listen.port",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let field = |name: &str| format!("issuers[{i}].{name}");
            if !seen.insert(issuer.issuer.as_str()) {
                return Err(ConfigError::invalid(field("issuer"), "listed twice"));
            }
            check_fetch_url(&field("issuer"), &issuer.issuer, issuer.allow_insecure_http)?;
            if let Some(uri) = &issuer.jwks_uri {
                check_fetch_url(&field("jwksUri"), uri, issuer.allow_insecure_http)?;
            }
            let sources = [
                issuer.jwks_uri.is_some(),
                issuer.jwks_file.is_some(),
                issuer.jwks.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() > 1 {
                return Err(ConfigError::invalid(
                    field("jwks"),
                    "jwksUri, jwksFile and jwks each name the keys: give one",
                ));
            }
            if let Some(jwks) = &issuer.jwks
                && !jwks.get("keys").is_some_and(serde_json::Value::is_array)
            {
                return Err(ConfigError::invalid(
                    field("jwks"),
                    "must be a JWKS: an object with a \"keys\" array",
                ));
            }
            if issuer.audiences.iter().all(|a| a.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    field("audiences"),
                    "at least one audience is required: a token for another service must not pass",
                ));
            }
            if issuer.algorithms.is_empty() {
                return Err(ConfigError::invalid(
                    field("algorithms"),
                    "at least one algorithm is required",
                ));
            }
            issuer
                .claims
                .validate()
                .map_err(|message| ConfigError::invalid(field("claims"), message))?;
            if let Some(exchange) = &issuer.token_exchange {
                if let Some(url) = &exchange.token_endpoint {
                    check_fetch_url(
                        &field("tokenExchange.tokenEndpoint"),
                        url,
                        issuer.allow_insecure_http,
                    )?;
                }
                if let Some(url) = &exchange.discovery_issuer {
                    check_fetch_url(
                        &field("tokenExchange.discoveryIssuer"),
                        url,
                        issuer.allow_insecure_http,
                    )?;
                }
                exchange
                    .validate()
                    .map_err(|m| ConfigError::invalid(field("tokenExchange"), m))?;
                if exchange.client_id.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        field("tokenExchange.clientId"),
                        "is required",
                    ));
                }
                if exchange.client_secret.is_empty() && exchange.client_secret_file.is_none() {
                    return Err(ConfigError::invalid(
                        field("tokenExchange.clientSecret"),
                        "clientSecret or clientSecretFile is required",
                    ));
                }
                if http::HeaderName::from_bytes(exchange.header.as_bytes()).is_err() {
                    return Err(ConfigError::invalid(
                        field("tokenExchange.header"),
                        "is not a valid header name",
                    ));
                }
                if exchange.audience.is_none()
                    && exchange.resource.is_none()
                    && exchange.scopes.is_empty()
                {
                    return Err(ConfigError::invalid(
                        field("tokenExchange"),
                        "name an audience, a resource or scopes: a token for the same audience gains nothing",
                    ));
                }
            }
        }
        for (i, path) in self.unauthenticated_paths.iter().enumerate() {
            if !path.starts_with('/') {
                return Err(ConfigError::invalid(
                    format!("unauthenticatedPaths[{i}]"),
                    "must start with /",
                ));
            }
            if path.starts_with(crate::proxy::keys::PATH) {
                return Err(ConfigError::invalid(
                    format!("unauthenticatedPaths[{i}]"),
                    "the API key endpoints always need a token",
                ));
            }
        }
        let engine = self.upstream.engine;
        self.validate_mcp()?;
        crate::policy::rules::validate(&self.access.effective_rules(), engine)
            .map_err(|(i, message)| ConfigError::invalid(format!("access.rules[{i}]"), message))?;
        crate::quota::limits::validate(&self.quotas.limits, engine)
            .map_err(|(i, message)| ConfigError::invalid(format!("quotas.limits[{i}]"), message))?;
        self.validate_identity_scopes()?;
        self.api_keys
            .validate(
                matches!(self.quotas.store, StoreConfig::Redis { .. }),
                self.issuers.len(),
            )
            .map_err(|(field, message)| ConfigError::invalid(field, message))?;
        self.upstream.default_model()?;
        self.upstream.served_models()?;
        if self.upstream.model_list_refresh < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "upstream.modelListRefresh",
                "must be at least 1s",
            ));
        }
        if let StoreConfig::Redis { url, url_file, .. } = &self.quotas.store {
            if url.is_empty() && url_file.is_none() {
                return Err(ConfigError::invalid(
                    "quotas.store.url",
                    "url or urlFile is required for a redis store",
                ));
            }
            // Empty with a urlFile: the file is read when the config is loaded.
            if !url.is_empty() && redis::Client::open(url.as_str()).is_err() {
                // The URL may hold a password: it is not repeated here.
                return Err(ConfigError::invalid(
                    "quotas.store.url",
                    "is not a redis:// URL",
                ));
            }
        }
        for (field, zero) in [
            (
                "limits.maxRequestBodyBytes",
                self.limits.max_request_body_bytes == 0,
            ),
            (
                "limits.maxBufferedBodyBytes",
                self.limits.max_buffered_body_bytes == 0,
            ),
            (
                "limits.firstBytesTimeout",
                self.limits.first_bytes_timeout.is_zero(),
            ),
            (
                "limits.headerReadTimeout",
                self.limits.header_read_timeout.is_zero(),
            ),
            (
                "limits.bodyReadTimeout",
                self.limits.body_read_timeout.is_zero(),
            ),
            ("limits.idleTimeout", self.limits.idle_timeout.is_zero()),
            (
                "limits.http2KeepAliveInterval",
                self.limits.http2_keep_alive_interval.is_zero(),
            ),
            (
                "limits.http2KeepAliveTimeout",
                self.limits.http2_keep_alive_timeout.is_zero(),
            ),
            (
                "limits.http2MaxConcurrentStreams",
                self.limits.http2_max_concurrent_streams == 0,
            ),
            (
                "limits.http2MaxHeaderListSize",
                self.limits.http2_max_header_list_size == 0,
            ),
            ("limits.maxConnections", self.limits.max_connections == 0),
            (
                "limits.maxInFlightRequests",
                self.limits.max_in_flight_requests == 0,
            ),
            (
                "quotas.leaseTtl",
                self.quotas.lease_ttl < Duration::from_secs(1),
            ),
            (
                "quotas.maxModelsPerOwner",
                self.quotas.max_models_per_owner == 0,
            ),
        ] {
            if zero {
                return Err(ConfigError::invalid(field, "must be positive"));
            }
        }
        if self.limits.token_cache_entries == 0 {
            return Err(ConfigError::invalid(
                "limits.tokenCacheEntries",
                "must be at least 1",
            ));
        }
        if self.reload_interval.is_zero() {
            return Err(ConfigError::invalid("reloadInterval", "must be positive"));
        }
        Ok(())
    }
}

impl GatewayConfig {
    /// The `mcp` section: only with engine mcp, a normalised path, method
    /// names.
    fn validate_mcp(&self) -> Result<(), ConfigError> {
        let mcp = &self.mcp;
        if self.upstream.engine != Engine::Mcp {
            if !is_default_mcp(mcp) {
                return Err(ConfigError::invalid(
                    "mcp",
                    "has no effect unless upstream.engine is mcp",
                ));
            }
            return Ok(());
        }
        match crate::policy::normalize_path(&mcp.path) {
            Ok(normal) if normal == mcp.path && mcp.path.starts_with('/') && mcp.path != "/" => {}
            _ => {
                return Err(ConfigError::invalid(
                    "mcp.path",
                    "must be a normalised absolute path other than / (such as /mcp)",
                ));
            }
        }
        for (i, method) in mcp.session_methods.iter().enumerate() {
            if method.is_empty()
                || method.len() > 128
                || method.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::invalid(
                    format!("mcp.sessionMethods[{i}]"),
                    "must be a JSON-RPC method name",
                ));
            }
        }
        Ok(())
    }

    /// Names in rules and quotas belong to one issuer; human-only rules
    /// need each issuer's user clients (see [`crate::policy::scope`]).
    fn validate_identity_scopes(&self) -> Result<(), ConfigError> {
        use crate::policy::scope::{TrustedIssuer, check_human_only, check_subjects};
        let trusted: Vec<TrustedIssuer<'_>> = self
            .issuers
            .iter()
            .map(|i| TrustedIssuer {
                issuer: &i.issuer,
                tells_people_apart: !i.user_clients.is_empty()
                    || i.claims.preset == Preset::Kubernetes,
            })
            .collect();
        for (i, rule) in self.access.rules.iter().enumerate() {
            let field = format!("access.rules[{i}]");
            check_subjects(&rule.subjects, &trusted)
                .map_err(|m| ConfigError::invalid(&field, m))?;
            if rule.human_only {
                check_human_only(&rule.subjects, &trusted)
                    .map_err(|m| ConfigError::invalid(&field, m))?;
            }
        }
        for (i, limit) in self.quotas.limits.iter().enumerate() {
            if let Some(subjects) = &limit.subjects {
                check_subjects(subjects, &trusted)
                    .map_err(|m| ConfigError::invalid(format!("quotas.limits[{i}]"), m))?;
            }
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            if issuer.user_clients.iter().any(|c| c.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    format!("issuers[{i}].userClients"),
                    "client ids must not be empty",
                ));
            }
        }
        Ok(())
    }
}

fn parse_url(field: &str, url: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ConfigError::invalid(field, format!("not a URL: {e}")))?;
    if uri.host().is_none() {
        return Err(ConfigError::invalid(field, "has no host"));
    }
    Ok(uri)
}

/// Keys must come over HTTPS, except from loopback or with an explicit opt-in.
fn check_fetch_url(field: &str, url: &str, allow_insecure_http: bool) -> Result<(), ConfigError> {
    let uri = parse_url(field, url)?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if allow_insecure_http || is_loopback(uri.host().unwrap_or_default()) => {
            Ok(())
        }
        Some("http") => Err(ConfigError::invalid(
            field,
            "must be https:// (http:// is allowed for loopback hosts, or with allowInsecureHttp)",
        )),
        _ => Err(ConfigError::invalid(field, "must be an https:// URL")),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> String {
        r#"
apiVersion: attach.dev/v1alpha1
kind: GatewayConfig
issuers:
  - issuer: https://idp.example.com/
    audiences: [llm]
"#
        .to_owned()
    }

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = GatewayConfig::parse(&minimal()).unwrap();
        assert_eq!(c.listen.port, 8080);
        assert_eq!(c.admin.port, 9090);
        assert_eq!(c.upstream.url, DEFAULT_UPSTREAM);
        let issuer = &c.issuers[0];
        assert_eq!(issuer.algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!(issuer.leeway, Duration::from_secs(60));
        assert!(!c.identity.forward_authorization);
        assert_eq!(c.limits.max_request_body_bytes, 32 * 1024 * 1024);
        assert!(!c.deny_all);
    }

    #[test]
    fn round_trips_through_yaml() {
        let c = GatewayConfig::parse(&minimal()).unwrap();
        let text = serde_yaml::to_string(&c).unwrap();
        assert_eq!(GatewayConfig::parse(&text).unwrap(), c);
    }

    fn refused(yaml: &str) -> String {
        GatewayConfig::parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn hmac_and_none_cannot_be_allowed() {
        for alg in ["HS256", "HS384", "HS512", "none"] {
            let yaml = minimal() + &format!("    algorithms: [{alg}]\n");
            let err = refused(&yaml);
            assert!(err.contains("unknown variant"), "{alg}: {err}");
        }
    }

    #[test]
    fn bad_configs_are_refused_naming_the_field() {
        let cases = [
            (minimal().replace("attach.dev/v1alpha1", "v2"), "apiVersion"),
            (minimal().replace("GatewayConfig", "Other"), "kind"),
            (
                minimal().replace("audiences: [llm]", "audiences: []"),
                "issuers[0].audiences",
            ),
            (
                minimal().replace("https://idp", "http://idp"),
                "issuers[0].issuer",
            ),
            (
                minimal().replace("https://idp.example.com/", "not a url"),
                "issuers[0].issuer",
            ),
            (
                minimal() + "upstream:\n  url: https://model:443\n",
                "upstream.url",
            ),
            (
                minimal() + "upstream:\n  url: http://model:1/v1\n",
                "upstream.url",
            ),
            (
                minimal() + "unauthenticatedPaths: [health]\n",
                "unauthenticatedPaths[0]",
            ),
            (
                minimal() + "unauthenticatedPaths: [/health, /.attach/keys]\n",
                "unauthenticatedPaths[1]: the API key endpoints",
            ),
            (
                minimal() + "apiKeys: {enabled: true, signingKeyFile: /k}\n",
                "apiKeys.enabled: needs quotas.store type redis",
            ),
            (minimal() + "surprise: true\n", "unknown field"),
            (
                minimal() + "admin: {address: 0.0.0.0, port: 8080}\n",
                "admin.port",
            ),
        ];
        for (yaml, field) in cases {
            let err = refused(&yaml);
            assert!(err.contains(field), "expected {field:?} in {err:?}");
        }
    }

    #[test]
    fn quota_stores_parse_from_yaml() {
        use crate::quota::store::{FailMode, StoreConfig};
        let yaml = minimal()
            + "quotas:\n  limits:\n    - {name: u, tokensPerMinute: 10}\n  store: {type: redis, url: \"redis://r:6379/0\", failMode: open, keyPrefix: \"x:\"}\n";
        let c = GatewayConfig::parse(&yaml).unwrap();
        assert_eq!(
            c.quotas.store,
            StoreConfig::Redis {
                url: "redis://r:6379/0".into(),
                url_file: None,
                fail_mode: FailMode::Open,
                key_prefix: "x:".into()
            }
        );
        let neither = minimal() + "quotas:\n  store: {type: redis}\n";
        assert!(
            GatewayConfig::parse(&neither)
                .unwrap_err()
                .to_string()
                .contains("url or urlFile is required")
        );
        let bad = minimal() + "quotas:\n  store: {type: redis, url: \"http://r\"}\n";
        assert!(
            GatewayConfig::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("quotas.store.url")
        );
        assert_eq!(
            GatewayConfig::parse(&minimal()).unwrap().quotas.store,
            StoreConfig::Memory
        );
    }

    #[test]
    fn the_redis_url_is_read_from_a_mounted_secret_file() {
        use crate::quota::store::StoreConfig;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("redis-url");
        std::fs::write(&secret, "redis://:s3cret@r:6379/0\n").unwrap();
        let config_path = dir.path().join("gateway.yaml");
        let yaml = format!(
            "{}quotas:\n  store: {{type: redis, urlFile: {}}}\n",
            minimal(),
            secret.display()
        );
        std::fs::write(&config_path, &yaml).unwrap();
        let c = GatewayConfig::load(&config_path).unwrap();
        let StoreConfig::Redis { url, .. } = &c.quotas.store else {
            panic!("not a redis store: {:?}", c.quotas.store);
        };
        assert_eq!(url, "redis://:s3cret@r:6379/0", "read and trimmed");

        // A missing file is an error naming the file, never a memory store.
        std::fs::remove_file(&secret).unwrap();
        let err = GatewayConfig::load(&config_path).unwrap_err().to_string();
        assert!(err.contains("redis-url"), "{err}");
        // A file with no redis URL in it is refused without echoing it.
        std::fs::write(&secret, "s3cret").unwrap();
        let err = GatewayConfig::load(&config_path).unwrap_err().to_string();
        assert!(
            err.contains("quotas.store.url") && !err.contains("s3cret"),
            "{err}"
        );
    }

    #[test]
    fn the_engine_decides_how_names_and_patterns_are_read() {
        let c = GatewayConfig::parse(&minimal()).unwrap();
        assert_eq!(c.upstream.engine, Engine::Ollama);
        assert_eq!(c.upstream.model_list_refresh, Duration::from_secs(30));
        assert!(c.trusted_proxies.is_empty());
        let vllm = minimal()
            + "upstream:\n  url: http://127.0.0.1:8000\n  engine: vllm\n  defaultModel: meta-llama/Llama-3.1-8B\n  servedModels: [meta-llama/Llama-3.1-8B, my-lora]\ntrustedProxies: [10.0.0.0/8, \"::1/128\"]\n";
        let c = GatewayConfig::parse(&vllm).unwrap();
        assert_eq!(c.upstream.engine, Engine::Vllm);
        assert_eq!(
            c.upstream.default_model().unwrap().unwrap().as_str(),
            "meta-llama/Llama-3.1-8B"
        );
        assert_eq!(c.trusted_proxies.len(), 2);
        let text = serde_yaml::to_string(&c).unwrap();
        assert_eq!(GatewayConfig::parse(&text).unwrap(), c, "round trip");
        for (yaml, field) in [
            (
                minimal() + "upstream:\n  url: http://127.0.0.1:1\n  defaultModel: llama3.2\n",
                "upstream.defaultModel",
            ),
            (
                minimal()
                    + "upstream:\n  url: http://127.0.0.1:1\n  servedModels: [\"bad name\"]\n",
                "upstream.servedModels[0]",
            ),
            (
                minimal() + "upstream:\n  url: http://127.0.0.1:1\n  engine: tgi\n",
                "unknown variant",
            ),
            (
                minimal()
                    + "access:\n  rules:\n    - {name: r, subjects: {anyAuthenticated: true}, models: [\"a/b/c/d\"], endpoints: [inference]}\n",
                "access.rules[0]",
            ),
            (
                minimal()
                    + "quotas:\n  limits:\n    - {name: q, models: [\"x y\"], requestsPerMinute: 1}\n",
                "quotas.limits[0]",
            ),
            (
                minimal() + "trustedProxies: [not-a-cidr]\n",
                "trustedProxies",
            ),
        ] {
            let err = refused(&yaml);
            assert!(err.contains(field), "expected {field:?} in {err:?}");
        }
    }

    #[test]
    fn a_config_file_without_access_denies_unless_it_says_allow_all() {
        // The failure: a file cut before `access` allowed every caller
        // every model.
        let c = GatewayConfig::parse(&minimal()).unwrap();
        assert!(c.access.effective_rules().is_empty(), "{:?}", c.access);
        let c = GatewayConfig::parse(&(minimal() + "access: {}\n")).unwrap();
        assert!(c.access.effective_rules().is_empty());
        let c = GatewayConfig::parse(&(minimal() + "access: {allowAll: true}\n")).unwrap();
        assert_eq!(
            c.access.effective_rules(),
            AccessConfig::authenticated().rules
        );
        // What the standalone mode and the operator build is explicit, and
        // survives a round trip through the file.
        let built = GatewayConfig::new(Vec::new());
        assert_eq!(built.access, AccessConfig::authenticated());
        let text = serde_yaml::to_string(&built).unwrap();
        assert_eq!(GatewayConfig::parse(&text).unwrap().access, built.access);
    }

    #[test]
    fn access_is_written_last_and_refusals_before_allowances() {
        let mut c = GatewayConfig::new(Vec::new());
        c.access.denied_agents = vec!["bad-agent".into()];
        let text = serde_yaml::to_string(&c).unwrap();
        let access = text.find("\naccess:").unwrap();
        for section in ["quotas:", "limits:", "denyAll:", "issuers:", "audit:"] {
            assert!(
                text.find(section).unwrap() < access,
                "{section} after access"
            );
        }
        let denied = text.find("deniedAgents").unwrap();
        assert!(denied < text.find("rules:").unwrap());
        // Cut anywhere, the file never allows what the whole file refuses:
        // no rule can be cut into one that allows more than it did.
        for cut in 0..text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let Ok(partial) = GatewayConfig::parse(&text[..cut]) else {
                continue;
            };
            if partial.access.rules.len() == c.access.rules.len()
                && !partial.access.rules.is_empty()
            {
                assert_eq!(
                    partial.access.denied_agents, c.access.denied_agents,
                    "cut at {cut}"
                );
            }
            assert!(
                partial.access.effective_rules().len() <= c.access.effective_rules().len(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn plain_http_issuers_are_allowed_on_loopback_or_when_asked() {
        let loopback =
            minimal().replace("https://idp.example.com/", "http://127.0.0.1:8080/realms/x");
        assert!(GatewayConfig::parse(&loopback).is_ok());
        let localhost = minimal().replace("https://idp.example.com/", "http://localhost:8080/");
        assert!(GatewayConfig::parse(&localhost).is_ok());
        let opted_in =
            minimal().replace("https://idp", "http://idp") + "    allowInsecureHttp: true\n";
        assert!(GatewayConfig::parse(&opted_in).is_ok());
    }

    #[test]
    fn names_must_say_their_issuer_when_two_are_trusted() {
        let two = minimal() + "  - issuer: https://partner.example.com/\n    audiences: [llm]\n";
        let named = two.clone()
            + "access:\n  rules:\n    - {name: r, subjects: {groups: [admins]}, endpoints: [admin]}\n";
        assert!(refused(&named).contains("access.rules[0]: subjects.issuer is required"));
        let scoped = two.clone()
            + "access:\n  rules:\n    - {name: r, subjects: {issuer: \"https://idp.example.com/\", groups: [admins]}, endpoints: [admin]}\n";
        assert!(GatewayConfig::parse(&scoped).is_ok());
        let unknown = two.clone()
            + "access:\n  rules:\n    - {name: r, subjects: {issuer: \"https://else.example/\", groups: [a]}, endpoints: [admin]}\n";
        assert!(refused(&unknown).contains("not one of the trusted issuers"));
        let quota = two
            + "quotas:\n  limits:\n    - {name: q, per: group, subjects: {groups: [staff]}, concurrent: 1}\n";
        assert!(refused(&quota).contains("quotas.limits[0]"));
        // Everyone of every issuer needs no scope.
        let everyone = minimal()
            + "  - issuer: https://partner.example.com/\n    audiences: [llm]\n"
            + "access:\n  rules:\n    - {name: r, subjects: {anyAuthenticated: true}, endpoints: [read]}\n";
        assert!(GatewayConfig::parse(&everyone).is_ok());
    }

    #[test]
    fn human_only_rules_need_the_user_clients() {
        let rule = "access:\n  rules:\n    - {name: r, subjects: {groups: [admins]}, endpoints: [admin], humanOnly: true}\n";
        let without = minimal() + rule;
        assert!(refused(&without).contains("humanOnly needs issuers[].userClients"));
        let with = minimal() + "    userClients: [attach-cli]\n" + rule;
        assert_eq!(
            GatewayConfig::parse(&with).unwrap().issuers[0].user_clients,
            ["attach-cli"]
        );
        // Keys named twice, or keys that are no JWKS.
        let both = minimal() + "    jwksFile: /k.json\n    jwks: {keys: []}\n";
        assert!(refused(&both).contains("issuers[0].jwks: jwksUri, jwksFile and jwks"));
        let not_jwks = minimal() + "    jwks: {kty: RSA}\n";
        assert!(refused(&not_jwks).contains("issuers[0].jwks: must be a JWKS"));
        let inline = minimal() + "    jwks: {keys: []}\n";
        assert!(GatewayConfig::parse(&inline).is_ok());
        // The cluster's ServiceAccount tokens never name a person.
        let workloads = minimal() + "    claims: {preset: kubernetes}\n" + rule;
        assert!(GatewayConfig::parse(&workloads).is_ok());
        let overridden = minimal() + "    claims: {preset: kubernetes, groups: teams}\n";
        assert!(refused(&overridden).contains("issuers[0].claims: groups"));
    }

    #[test]
    fn identity_settings_that_cannot_work_are_refused() {
        let namespace = minimal() + "    claims: {preset: auth0, namespace: example.com}\n";
        assert!(refused(&namespace).contains("issuers[0].claims: namespace"));
        let exchange = |extra: &str| {
            minimal()
                + "    tokenExchange: {clientId: gw, clientSecret: s, audience: down"
                + extra
                + "}\n"
        };
        assert!(GatewayConfig::parse(&exchange("")).is_ok());
        assert!(
            refused(&exchange(", discoveryIssuer: \"http://idp.example.com\""))
                .contains("tokenExchange.discoveryIssuer")
        );
        assert!(refused(&exchange(", timeout: 0s")).contains("timeout"));
        assert!(refused(&exchange(", refusalCacheTtl: 1h")).contains("refusalCacheTtl"));
    }
}
