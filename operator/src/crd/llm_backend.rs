//! `LLMBackend`: a model server (Ollama, vLLM, any OpenAI-compatible server)
//! whose pods get attach-gateway in front, with who may use it and how much.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::identity_provider::SecretKeyRef;

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
}

/// How to make a generic OpenAI-compatible server listen on loopback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenAiRebind {
    /// Environment variables to set; `{port}` is replaced by the internal port.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Arguments to append; `{port}` is replaced by the internal port.
    #[serde(default)]
    pub args: Vec<String>,
}

/// Pods this backend fronts, by labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSelector {
    /// Labels a pod must carry, all of them.
    #[serde(default)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityProviderRef {
    /// `IdentityProvider` (same namespace) or `ClusterIdentityProvider`.
    #[serde(default)]
    pub kind: IdentityProviderKind,
    /// Its name.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Who a rule or quota applies to: any listed value matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subjects {
    /// Every authenticated caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any_authenticated: Option<bool>,
    /// User names (the mapped user claim).
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Tenants.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Client ids.
    #[serde(default)]
    pub clients: Vec<String>,
    /// Agents: an actor of a delegated token (the `act` chain), or a machine
    /// client acting alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
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
    /// A name for audit lines.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Who the rule applies to.
    pub subjects: Subjects,
    /// Model names or globs (`*`, `?`), e.g. `llama3.2:*`; default all.
    #[serde(default)]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9._:/@*?+-]+$")))]
    pub models: Vec<String>,
    /// Endpoint classes granted.
    #[schemars(length(min = 1))]
    pub endpoints: Vec<EndpointClass>,
    /// Only for a human acting directly: not an agent acting for one, nor a
    /// machine client (e.g. for admin endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human_only: Option<bool>,
}

/// The access policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Allow rules; what none allows is denied. Admin only when named.
    #[serde(default)]
    pub rules: Vec<AccessRule>,
    /// Forward paths that are in no endpoint class (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unknown_endpoints: Option<bool>,
    /// Agents (actors or machine clients) refused whatever the rules say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    /// A name for 429 answers and audit lines.
    #[schemars(length(min = 1), regex(pattern = r"^[^|]+$"))]
    pub name: String,
    /// What the budget belongs to: user, group, tenant or client.
    #[serde(default)]
    pub per: QuotaKey,
    /// Who the quota applies to (everyone when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<Subjects>,
    /// Model names or globs with a budget each (all models share one when empty).
    #[serde(default)]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9._:/@*?+-]+$")))]
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
}

/// Audit log settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    /// Write one JSON line per decision to the gateway's stdout (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Overrides for the injected gateway container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarOverrides {
    /// The attach-gateway image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory for the gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Log filter, e.g. `info` or `attach_sidecar=debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
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
#[x_kube(validation = Rule::new("type(self.port) == int ? (self.port >= 1 && self.port <= 65535) : self.port.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.port) <= 15").message("spec.port must be a port number (1-65535) or a container port name").field_path(".port"))]
#[x_kube(validation = Rule::new("self.engine != 'openai' || has(self.openai)").message("spec.openai is required when engine is openai: say how to bind the server to loopback").field_path(".openai"))]
pub struct LLMBackendSpec {
    /// The model pods, by labels.
    pub selector: PodSelector,
    /// ollama, vllm or openai.
    pub engine: Engine,
    /// For engine openai: how to bind the server to loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openai: Option<OpenAiRebind>,
    /// The model container's port (number or name); the gateway takes it over.
    pub port: IntOrString,
    /// Identity providers whose tokens are accepted.
    #[schemars(length(min = 1))]
    pub identity_provider_refs: Vec<IdentityProviderRef>,
    /// Who may use which models and endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// Token, request and concurrency budgets.
    #[serde(default)]
    pub quotas: Vec<Quota>,
    /// Where quota counters live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_store: Option<QuotaStore>,
    /// Audit log settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
    /// Overrides for the injected gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarOverrides>,
    /// Paths served without a token (GET/HEAD), for probes.
    #[serde(default)]
    #[schemars(inner(regex(pattern = r"^/")))]
    pub unauthenticated_paths: Vec<String>,
}

/// What the operator reports about a backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LLMBackendStatus {
    /// `Ready`, `IdentityProvidersResolved`, `ConfigRendered`.
    #[serde(default)]
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
