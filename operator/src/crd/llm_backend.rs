//! `LLMBackend`: a model server (Ollama, vLLM, any OpenAI-compatible server)
//! whose pods get attach-gateway in front, with who may use it and how much.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::identity_provider::SecretKeyRef;
use super::schema;

/// The model server's kind, which says how to move it onto loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Ollama: rebound with `OLLAMA_HOST=127.0.0.1:<port>`.
    Ollama,
    /// vLLM: rebound with `--host 127.0.0.1 --port <port>`.
    Vllm,
    /// Any OpenAI-compatible server: rebound as `spec.openai` says.
    Openai,
    /// An MCP server (Streamable HTTP): rebound as `spec.mcp` says. Its
    /// rules name targets as models: `tool:<glob>`, `resource:<glob>`,
    /// `prompt:<glob>` (granted with `inference`; `read` grants the
    /// session, the lists and the server's stream).
    Mcp,
}

/// An MCP server behind the gateway: the resource its tokens are for, its
/// endpoint, and how to bind it to loopback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpServer {
    /// The resource URI that tokens must be issued for (RFC 8707), as
    /// clients name the server: `https://tools.example.com/mcp`. Every
    /// token must carry it in `aud`; the gateway names it in its RFC 9728
    /// metadata and challenges.
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^https?://"))]
    pub resource: String,
    /// The server's Streamable HTTP endpoint (default `/mcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 256), regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Methods besides the built-in session ones (`initialize`, `ping`,
    /// notifications, `logging/setLevel`) that need only `read`. Every
    /// other method the gateway does not know is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub session_methods: Vec<String>,
    /// Write a tool call's arguments into its audit line (cut at 256
    /// characters). Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_arguments: Option<bool>,
    /// Environment variables to set on the server; `{port}` is replaced by
    /// the loopback port.
    #[serde(default)]
    #[schemars(schema_with = "schema::env_map")]
    pub env: BTreeMap<String, String>,
    /// Arguments to append; `{port}` is replaced by the loopback port.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub args: Vec<String>,
}

/// How to make a generic OpenAI-compatible server listen on loopback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenAiRebind {
    /// Environment variables to set; `{port}` is replaced by the internal port.
    #[serde(default)]
    #[schemars(schema_with = "schema::env_map")]
    pub env: BTreeMap<String, String>,
    /// Arguments to append; `{port}` is replaced by the internal port.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub args: Vec<String>,
}

/// Pods this backend fronts, by labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSelector {
    /// Labels a pod must carry, all of them (at most 32; values as
    /// Kubernetes accepts them on pods).
    #[serde(default)]
    #[schemars(schema_with = "schema::label_map")]
    pub match_labels: BTreeMap<String, String>,
}

/// The kind of identity provider a backend refers to.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum IdentityProviderKind {
    /// An `IdentityProvider` in the backend's namespace.
    #[default]
    IdentityProvider,
    /// A cluster-wide `ClusterIdentityProvider`.
    ClusterIdentityProvider,
}

/// A reference to an identity provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityProviderRef {
    /// `IdentityProvider` (same namespace) or `ClusterIdentityProvider`.
    #[serde(default)]
    pub kind: IdentityProviderKind,
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The `aud` values this backend accepts, instead of the IdP's: give
    /// each backend its own, so that a token minted for one backend does
    /// not work at another. Required for a `kubernetes` IdP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub audiences: Vec<String>,
}

/// Who a rule or quota applies to: any listed value matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subjects {
    /// The issuer whose tokens these names come from (its exact URL, as one
    /// of the backend's identity providers declares it). Names are unique
    /// only within their issuer: with several identity providers, a rule or
    /// quota that names anyone must say whose names they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("subjects.issuer must be an issuer URL"))]
    pub issuer: Option<String>,
    /// Every authenticated caller (of `issuer`, when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any_authenticated: Option<bool>,
    /// User names (the mapped user claim).
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub users: Vec<String>,
    /// Group names.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub groups: Vec<String>,
    /// Role names.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub roles: Vec<String>,
    /// Scopes.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub scopes: Vec<String>,
    /// Tenants.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub tenants: Vec<String>,
    /// Client ids.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub clients: Vec<String>,
    /// Agents: an actor of a delegated token (the `act` chain), or a machine
    /// client acting alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub agents: Vec<String>,
    /// Match `agents` against every actor in the delegation chain, not only
    /// the one acting now (default false: an agent never borrows the grant
    /// of an actor it acts for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any_actor: Option<bool>,
}

/// An endpoint class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointClass {
    /// Chat, generate, completions, embeddings.
    Inference,
    /// Model lists and details, versions.
    Read,
    /// Pull, push, create, delete, copy, blobs, LoRA loading.
    Admin,
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.subjects.anyAuthenticated) && self.subjects.anyAuthenticated || size(self.subjects.users) + size(self.subjects.groups) + size(self.subjects.roles) + size(self.subjects.scopes) + size(self.subjects.tenants) + size(self.subjects.clients) + (has(self.subjects.agents) ? size(self.subjects.agents) : 0) > 0").message("subjects must name someone, or set anyAuthenticated").field_path(".subjects"))]
pub struct AccessRule {
    /// A name for audit lines, unique among the rules.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Who the rule applies to.
    pub subjects: Subjects,
    /// Model names or globs (`*`, `?`), e.g. `llama3.2:*`; default all.
    #[serde(default)]
    #[schemars(
        length(max = 128),
        inner(length(max = 256), regex(pattern = r"^[A-Za-z0-9._:/@*?+-]+$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub models: Vec<String>,
    /// Endpoint classes granted.
    #[schemars(length(min = 1, max = 3))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub endpoints: Vec<EndpointClass>,
    /// Only for a human acting directly: not an agent acting for one, nor a
    /// machine client (e.g. for admin endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human_only: Option<bool>,
}

/// The access policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Allow rules, with unique names; what none allows is denied. Admin
    /// only when named.
    #[serde(default)]
    #[schemars(length(max = 128))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub rules: Vec<AccessRule>,
    /// Forward paths that are in no endpoint class (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unknown_endpoints: Option<bool>,
    /// Agents (actors or machine clients) refused whatever the rules say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub denied_agents: Vec<String>,
}

/// What a quota counts per.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum QuotaKey {
    #[default]
    User,
    Group,
    Tenant,
    Client,
    Agent,
}

/// One quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.tokensPerMinute) || has(self.requestsPerMinute) || has(self.concurrent) || has(self.tokensPerDay)").message("a quota must set at least one of tokensPerMinute, requestsPerMinute, concurrent, tokensPerDay"))]
pub struct Quota {
    /// A name for 429 answers and audit lines, unique among the quotas.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^|]+$"))]
    pub name: String,
    /// What the budget belongs to: user, group, tenant or client.
    #[serde(default)]
    pub per: QuotaKey,
    /// Who the quota applies to (everyone when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<Subjects>,
    /// Model names or globs with a budget each (all models share one when empty).
    #[serde(default)]
    #[schemars(
        length(max = 128),
        inner(length(max = 256), regex(pattern = r"^[A-Za-z0-9._:/@*?+-]+$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub models: Vec<String>,
    /// LLM tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrent: Option<u64>,
    /// LLM tokens per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_day: Option<u64>,
}

/// Where quota counters live.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum QuotaStoreType {
    /// In each gateway's memory.
    #[default]
    Memory,
    /// In Redis, shared by every replica.
    Redis,
}

/// What to do while Redis is unreachable.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refuse with 503.
    #[default]
    Closed,
    /// Admit against a local limit.
    Open,
}

/// The quota store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'redis' || has(self.urlSecretRef)").message("spec.quotaStore.urlSecretRef is required when type is redis").field_path(".urlSecretRef"))]
pub struct QuotaStore {
    /// memory or redis.
    #[serde(default, rename = "type")]
    pub type_: QuotaStoreType,
    /// The Secret key holding the `redis://` URL (it may hold a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// Behaviour while Redis is unreachable.
    #[serde(default)]
    pub fail_mode: FailMode,
    /// The prefix of every Redis key (default `attach:quota:<namespace>/<name>:`,
    /// so backends sharing a Redis never share budgets). Backends that set the
    /// same prefix share budgets by quota name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key_prefix: Option<String>,
}

/// The longest a key may live unless `maxLifetime` says otherwise (the
/// gateway's default: 90 days). The CRD checks `defaultLifetime` against it.
pub const DEFAULT_MAX_KEY_LIFETIME: &str = "2160h";

/// Who may list and revoke every user's API keys. Only names: there is no
/// `anyAuthenticated`, since it would let every caller revoke (and read the
/// metadata of) everyone's keys; and no clients, scopes or agents, since a
/// client id or scope is held by every user of that client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.users) + size(self.groups) + size(self.roles) > 0").message("spec.apiKeys.admins must name users, groups or roles (leave admins out for no administrators)"))]
pub struct ApiKeyAdmins {
    /// The issuer whose tokens these names come from (its exact URL, as one
    /// of the backend's identity providers declares it). Required with
    /// several identity providers: names are unique only within their
    /// issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("spec.apiKeys.admins.issuer must be an issuer URL"))]
    pub issuer: Option<String>,
    /// User names (the mapped user claim).
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub users: Vec<String>,
    /// Group names.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub groups: Vec<String>,
    /// Role names.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub roles: Vec<String>,
}

/// Personal API keys: static keys a user mints at the gateway
/// (`/.attach/keys`) for clients that take nothing else, each judged as the
/// identity it was minted for. They live in the Redis quota store, so that
/// every replica sees the same keys and revocations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.enabled) || !self.enabled || has(self.signingKeySecretRef)").message("spec.apiKeys.signingKeySecretRef is required when enabled").field_path(".signingKeySecretRef"))]
#[x_kube(validation = Rule::new(format!("!has(self.defaultLifetime) || duration(self.defaultLifetime) <= (has(self.maxLifetime) ? duration(self.maxLifetime) : duration('{DEFAULT_MAX_KEY_LIFETIME}'))")).message(format!("spec.apiKeys.defaultLifetime must not exceed maxLifetime (default {DEFAULT_MAX_KEY_LIFETIME})").as_str()).field_path(".defaultLifetime"))]
pub struct ApiKeys {
    /// Accept API keys and serve `/.attach/keys` (default false). Needs
    /// `spec.quotaStore` of type redis and `signingKeySecretRef`.
    #[serde(default)]
    pub enabled: bool,
    /// The Secret key holding the key that seals every stored key record
    /// (HMAC-SHA-256), at least 32 bytes: without it, whoever can write to
    /// the Redis could forge a key for anyone. The injected pod mounts it
    /// (the operator never reads it); the gateway refuses a shorter key.
    /// Required when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_secret_ref: Option<SecretKeyRef>,
    /// The longest a key may live, a duration such as `720h` or `1h30m`
    /// (units `s`, `m`, `h`; 1m to 8760h; default 2160h, 90 days). A key
    /// keeps the groups and roles its user had when it was minted: this
    /// bounds how long someone who leaves a group keeps its access through
    /// a key (an admin can revoke it sooner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('8760h')").message("spec.apiKeys.maxLifetime must be between 1m and 8760h"))]
    pub max_lifetime: Option<String>,
    /// A new key's lifetime when its request names none (units `s`, `m`,
    /// `h`; 1m to 8760h; default 720h, 30 days, or `maxLifetime` when that
    /// is shorter). At most `maxLifetime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('8760h')").message("spec.apiKeys.defaultLifetime must be between 1m and 8760h"))]
    pub default_lifetime: Option<String>,
    /// How long a gateway trusts a key it has checked before reading it
    /// again (units `s`, `m`, `h`; 0s to 5m; default 10s): the longest a
    /// revoked key still works at another replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('5m')").message("spec.apiKeys.cacheTtl must be at most 5m: it is how long a revoked key keeps working"))]
    pub cache_ttl: Option<String>,
    /// The most live keys one user may hold on this backend (1 to 1000;
    /// default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_keys_per_user: Option<u32>,
    /// Who may list and revoke every user's keys (default: nobody; each
    /// user manages their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admins: Option<ApiKeyAdmins>,
}

impl ApiKeys {
    /// The Secret key the gateway's signing key is read from: only while
    /// keys are enabled, so that a disabled section never needs its Secret
    /// to exist for the pod to start.
    pub fn signing_key(&self) -> Option<&SecretKeyRef> {
        self.signing_key_secret_ref
            .as_ref()
            .filter(|_| self.enabled)
    }
}

/// Audit log settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    /// Write one JSON line per decision to the gateway's stdout (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Where the gateway sends its spans, and how many.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// The collector's OTLP/HTTP base URL, e.g.
    /// `http://otel-collector.monitoring:4318` (spans go to `/v1/traces`).
    #[schemars(length(max = 1024), regex(pattern = r"^https?://[^/?#]+"))]
    pub endpoint: String,
    /// The percentage of new traces kept (default 100). A caller's
    /// `traceparent` decides for the traces it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub sample_percent: Option<u8>,
    /// Put a SHA-256 of the user id in the spans instead of the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_user_id: Option<bool>,
}

/// CPU, memory and ephemeral storage, as quantities (`500m`, `128Mi`, `1`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.limits) || !has(self.requests) || self.requests.all(k, !(k in self.limits) || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)").message("a request must not exceed its limit").field_path(".requests"))]
pub struct GatewayResources {
    /// The most the gateway may use: `cpu`, `memory`, `ephemeral-storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantities")]
    #[x_kube(validation = Rule::new(schema::QUANTITY_NAMES_RULE).message(schema::QUANTITY_NAMES_MESSAGE))]
    #[x_kube(validation = Rule::new(schema::QUANTITIES_RULE).message(schema::QUANTITIES_MESSAGE))]
    pub limits: Option<BTreeMap<String, Quantity>>,
    /// What the gateway is guaranteed: `cpu`, `memory`, `ephemeral-storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantities")]
    #[x_kube(validation = Rule::new(schema::QUANTITY_NAMES_RULE).message(schema::QUANTITY_NAMES_MESSAGE))]
    #[x_kube(validation = Rule::new(schema::QUANTITIES_RULE).message(schema::QUANTITIES_MESSAGE))]
    pub requests: Option<BTreeMap<String, Quantity>>,
}

/// Overrides for the injected gateway container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarOverrides {
    /// The attach-gateway image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// CPU and memory for the gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<GatewayResources>,
    /// Log filter, e.g. `info` or `attach_sidecar=debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub log_level: Option<String>,
}

/// Whether a pod the selector picks may refuse the gateway: `Forbid`
/// (default), every selected pod gets the gateway or is refused at
/// admission; `Allow`, a selected pod labelled or annotated
/// `attach.dev/inject: "false"` is admitted without it (unprotected).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum PodOptOut {
    /// A selected pod is injected or refused; `attach.dev/inject: "false"`
    /// on it is refused at admission.
    #[default]
    Forbid,
    /// A selected pod labelled or annotated `attach.dev/inject: "false"` is
    /// admitted without the gateway: its model is unprotected.
    Allow,
}

/// A model server fronted by attach-gateway.
// Several printcolumns repeat `type_ = "string"`; clippy takes them for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "attach.dev",
    version = "v1alpha1",
    kind = "LLMBackend",
    namespaced,
    status = "LLMBackendStatus",
    shortname = "llmb",
    category = "attach",
    doc = "A model server (Ollama, vLLM or OpenAI-compatible) whose pods get attach-gateway in front: who may use it, and how much.",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine"),
    printcolumn(
        name = "IdP",
        type_ = "string",
        json_path = ".spec.identityProviderRefs[0].name"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.injectedPods"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.selector.matchLabels) > 0").message("spec.selector.matchLabels must select pods by at least one label").field_path(".selector.matchLabels"))]
#[x_kube(validation = Rule::new(schema::PORT_RULE).message(schema::PORT_MESSAGE).field_path(".port"))]
#[x_kube(validation = Rule::new("self.engine != 'openai' || has(self.openai)").message("spec.openai is required when engine is openai: say how to bind the server to loopback").field_path(".openai"))]
#[x_kube(validation = Rule::new("self.engine != 'ollama' || !has(self.defaultModel)").message("spec.defaultModel is for vllm and openai: Ollama has no default model").field_path(".defaultModel"))]
#[x_kube(validation = Rule::new("self.engine != 'mcp' || has(self.mcp)").message("spec.mcp is required when engine is mcp: name the resource tokens are for and how to bind the server to loopback").field_path(".mcp"))]
#[x_kube(validation = Rule::new("!has(self.mcp) || self.engine == 'mcp'").message("spec.mcp is for engine mcp").field_path(".mcp"))]
#[x_kube(validation = Rule::new("self.engine != 'mcp' || !has(self.defaultModel)").message("spec.defaultModel is for vllm and openai: an MCP server has no default model").field_path(".defaultModel"))]
#[x_kube(validation = Rule::new("self.engine != 'mcp' || self.identityProviderRefs.all(r, !has(r.audiences) || size(r.audiences) == 0)").message("with engine mcp, tokens must be issued for spec.mcp.resource: leave identityProviderRefs[].audiences unset").field_path(".identityProviderRefs"))]
#[x_kube(validation = Rule::new("!has(self.apiKeys) || !has(self.apiKeys.enabled) || !self.apiKeys.enabled || (has(self.quotaStore) && self.quotaStore.type == 'redis')").message("spec.apiKeys.enabled needs spec.quotaStore of type redis: every gateway replica must see the same keys and revocations").field_path(".apiKeys.enabled"))]
pub struct LLMBackendSpec {
    /// The model pods, by labels.
    pub selector: PodSelector,
    /// ollama, vllm, openai or mcp.
    pub engine: Engine,
    /// For engine openai: how to bind the server to loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openai: Option<OpenAiRebind>,
    /// For engine mcp: the MCP server's resource, endpoint and binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpServer>,
    /// vllm and openai: the model the server runs when a request names none
    /// (its `--served-model-name`). Without it, such requests are refused
    /// (403 `missing_model`): the gateway never judges a model it cannot
    /// name. Not for ollama, which has no default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub default_model: Option<String>,
    /// The models the server serves. Per-model budgets and metric labels
    /// use a model's name only when it is served; other names share one
    /// label. Default: read from the server's own model list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub served_models: Vec<String>,
    /// CIDRs of proxies in front of the gateway (an ingress) whose
    /// `X-Forwarded-*` and `Forwarded` headers are kept; from anyone else
    /// those headers are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("spec.trustedProxies must be CIDRs such as 10.0.0.0/8"))]
    pub trusted_proxies: Vec<String>,
    /// The model container's port (number or name); the gateway takes it over.
    #[schemars(schema_with = "schema::port")]
    pub port: IntOrString,
    /// Identity providers whose tokens are accepted, each once.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["kind".into(), "name".into()]))]
    pub identity_provider_refs: Vec<IdentityProviderRef>,
    /// Who may use which models and endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// Token, request and concurrency budgets, with unique names.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub quotas: Vec<Quota>,
    /// Where quota counters live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_store: Option<QuotaStore>,
    /// Personal API keys that users mint for clients taking only a static
    /// key (off when absent). Needs `quotaStore` of type redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeys>,
    /// Audit log settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
    /// Traces of this backend's requests, over OTLP/HTTP (off when absent).
    /// A change reaches running gateways when their pods restart (they say
    /// so in `/readyz` and `attach_config_restart_required`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Overrides for the injected gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarOverrides>,
    /// Paths served without a token (GET/HEAD), for probes.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 1024), regex(pattern = r"^/")))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub unauthenticated_paths: Vec<String>,
    /// `Forbid` (default): every pod the selector picks gets the gateway or
    /// is refused at admission, with the reason and the fix. `Allow`: a
    /// selected pod labelled or annotated `attach.dev/inject: "false"` is
    /// admitted without it (its model is then unprotected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_opt_out: Option<PodOptOut>,
}

/// What the operator reports about a backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LLMBackendStatus {
    /// `Ready`, `IdentityProvidersResolved`, `ConfigRendered`, `PodsProtected`.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The hash of the rendered gateway config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Pods the selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_pods: Option<u32>,
    /// Matched pods that carry the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_pods: Option<u32>,
}
