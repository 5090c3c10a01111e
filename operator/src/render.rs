//! Renders an `LLMBackend` (and the identity providers it refers to) into the
//! gateway's typed config, the contract with attach-gateway. Pure: the
//! controller resolves references and Secrets, this turns them into config.

use attach_sidecar::claims::{ClaimMapping, Preset as GatewayPreset};
use attach_sidecar::config::{
    AccessConfig, Algorithm as GatewayAlgorithm, GatewayConfig, IssuerConfig,
};
use attach_sidecar::keys::ApiKeysConfig;
use attach_sidecar::policy::{EndpointClass as GatewayClass, Rule, Subjects as GatewaySubjects};
use attach_sidecar::quota::store::{FailMode as GatewayFailMode, StoreConfig};
use attach_sidecar::quota::{QuotaKey as GatewayQuotaKey, QuotaLimit};
use sha2::{Digest, Sha256};
use std::path::Path;

use crate::crd::identity_provider::{Algorithm, Preset};
use crate::crd::llm_backend::{
    ApiKeyAdmins, ApiKeys, EndpointClass, FailMode, LLMBackendSpec, QuotaKey, QuotaStoreType,
    Subjects,
};

/// The fields of an identity provider the gateway needs, whichever its kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedIdp {
    pub issuer: String,
    /// The audiences this backend accepts: its reference's, else the IdP's.
    pub audiences: Vec<String>,
    /// The `kubernetes` preset: the keys the operator read from the API
    /// server (a JWKS), given to the gateway in its config.
    pub relayed_keys: Option<String>,
    pub jwks_uri: Option<String>,
    pub preset: Preset,
    pub claims: Option<crate::crd::identity_provider::ClaimPaths>,
    pub algorithms: Option<Vec<Algorithm>>,
    pub leeway_seconds: Option<u32>,
    pub jwks_refresh_interval: Option<String>,
    pub insecure: bool,
    /// The clients people sign in through (see the gateway's
    /// `issuers[].userClients`).
    pub user_clients: Vec<String>,
    /// Token exchange at this IdP; its client secret is a file the injected
    /// pod mounts from the named Secret.
    pub token_exchange: Option<crate::crd::identity_provider::TokenExchange>,
}

/// What the caller's token is to the exchanging IdP: as written, else a
/// workload's ServiceAccount token is a JWT of another issuer and anything
/// else an access token.
fn subject_token_type(
    spec: &crate::crd::identity_provider::TokenExchange,
    preset: Preset,
) -> attach_sidecar::exchange::SubjectTokenType {
    use crate::crd::identity_provider::SubjectTokenType as Written;
    use attach_sidecar::exchange::SubjectTokenType as Rendered;
    match (spec.subject_token_type, preset) {
        (Some(Written::Jwt), _) | (None, Preset::Kubernetes) => Rendered::Jwt,
        (Some(Written::AccessToken), _) | (None, _) => Rendered::AccessToken,
    }
}

/// The file name, under [`SECRETS_DIR`], of the exchange client secret of
/// the backend's `i`-th identity provider.
pub fn exchange_secret_key(i: usize) -> String {
    format!("exchange-client-secret-{i}")
}

/// Where the rendered gateway listens, and where the model was moved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// The model container's original port, now the gateway's.
    pub listen: u16,
    /// The gateway's admin port.
    pub admin: u16,
    /// The model's new loopback port.
    pub upstream: u16,
}

/// Where the injected gateway finds its config and its secrets.
pub const CONFIG_DIR: &str = "/etc/attach/config";
/// The config file's key in the ConfigMap (and name in [`CONFIG_DIR`]).
pub const CONFIG_KEY: &str = "gateway.yaml";
/// Where the Secrets the backend names are mounted (by the pod, straight
/// from the user's Secrets: the operator never reads them).
pub const SECRETS_DIR: &str = "/etc/attach/secrets";
/// The file holding the Redis URL, under [`SECRETS_DIR`].
pub const REDIS_URL_KEY: &str = "redis-url";
/// The file holding the API keys' signing key, under [`SECRETS_DIR`].
pub const API_KEYS_SIGNING_KEY: &str = "api-keys-signing-key";

/// Which backend a config is for: its Redis keys are namespaced by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendId<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

/// A rendered backend: the config, which names secrets by file only.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub config: GatewayConfig,
    /// A spec field that could not be rendered, left out of `config`.
    unrenderable: Option<String>,
}

impl Rendered {
    /// Why this rendering must not be served: a spec field that could not
    /// be rendered, or a config the gateway would refuse.
    pub fn problem(&self) -> Option<String> {
        self.unrenderable
            .clone()
            .or_else(|| self.config.validate().err().map(|e| e.to_string()))
    }

    /// The config as the gateway reads it.
    pub fn config_yaml(&self) -> String {
        serde_yaml::to_string(&self.config).unwrap_or_default()
    }

    /// The hash that names this rendering in annotations and status:
    /// SHA-256 over the config's canonical JSON, first 16 hex digits.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(serde_json::to_vec(&self.config).unwrap_or_default());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// The Redis key prefix of a backend that sets none: unique to the
/// backend, so backends sharing a Redis never share budgets.
pub fn default_key_prefix(backend: BackendId<'_>) -> String {
    format!("attach:quota:{}/{}:", backend.namespace, backend.name)
}

/// The access section of a backend. Always explicit: without
/// `spec.access`, one rule lets every authenticated caller use every model
/// for inference and read endpoints (the documented default), written out so
/// that the gateway never falls back on a default of its own.
fn access(spec: Option<&crate::crd::llm_backend::Access>) -> AccessConfig {
    let Some(access) = spec else {
        let everyone = GatewaySubjects {
            any_authenticated: true,
            ..GatewaySubjects::default()
        };
        return AccessConfig {
            rules: vec![Rule::new(
                "authenticated",
                everyone,
                &["*"],
                &[GatewayClass::Inference, GatewayClass::Read],
            )],
            // The rest as in a config that allows nothing: unknown
            // endpoints denied, model lists filtered, no agent named.
            ..AccessConfig::deny()
        };
    };
    let rules = access
        .rules
        .iter()
        .map(|r| {
            let models: Vec<&str> = if r.models.is_empty() {
                vec!["*"]
            } else {
                r.models.iter().map(String::as_str).collect()
            };
            let classes: Vec<GatewayClass> = r.endpoints.iter().map(|e| class(*e)).collect();
            let mut rule = Rule::new(r.name.clone(), subjects(&r.subjects), &models, &classes);
            rule.human_only = r.human_only.unwrap_or(false);
            rule
        })
        .collect();
    AccessConfig {
        rules,
        allow_unknown_endpoints: access.allow_unknown_endpoints.unwrap_or(false),
        denied_agents: access.denied_agents.clone(),
        ..AccessConfig::default()
    }
}

/// The gateway config for `spec`.
pub fn render(
    backend: BackendId<'_>,
    spec: &LLMBackendSpec,
    idps: &[ResolvedIdp],
    ports: Ports,
) -> Rendered {
    let mut config = GatewayConfig::new(idps.iter().map(issuer).collect());
    for (i, idp) in idps.iter().enumerate() {
        if let Some(spec) = &idp.token_exchange {
            let mut exchange =
                attach_sidecar::exchange::TokenExchangeConfig::new(spec.client_id.clone(), "");
            exchange.token_endpoint = Some(spec.token_endpoint.clone());
            exchange.client_secret_file = Some(Path::new(SECRETS_DIR).join(exchange_secret_key(i)));
            exchange.audience.clone_from(&spec.audience);
            exchange.scopes.clone_from(&spec.scopes);
            exchange.subject_issuer.clone_from(&spec.subject_issuer);
            exchange.subject_token_type = subject_token_type(spec, idp.preset);
            config.issuers[i].token_exchange = Some(exchange);
        }
    }
    config.listen.port = ports.listen;
    config.admin.port = ports.admin;
    config.upstream.url = format!("http://127.0.0.1:{}", ports.upstream);
    config.upstream.engine = engine(spec.engine);
    config.metrics.backend = Some(format!("{}/{}", backend.namespace, backend.name));
    config
        .upstream
        .default_model
        .clone_from(&spec.default_model);
    config
        .upstream
        .served_models
        .clone_from(&spec.served_models);
    // The CRD refuses non-CIDRs; one that gets past it is reported by
    // `Rendered::problem`, never dropped.
    let (trusted, mut unrenderable) = match trusted_proxies(spec) {
        Ok(trusted) => (trusted, None),
        Err(message) => (Vec::new(), Some(message)),
    };
    config.trusted_proxies = trusted;
    // Likewise an apiKeys section the CRD should have refused: reported,
    // and the keys stay off.
    if let Some(keys) = &spec.api_keys {
        match api_keys(keys) {
            Ok(keys) => config.api_keys = keys,
            Err(message) => unrenderable = unrenderable.or(Some(message)),
        }
    }
    config.unauthenticated_paths = spec.unauthenticated_paths.clone();
    config.access = access(spec.access.as_ref());
    config.quotas.limits = spec
        .quotas
        .iter()
        .map(|q| QuotaLimit {
            per: match q.per {
                QuotaKey::User => GatewayQuotaKey::User,
                QuotaKey::Group => GatewayQuotaKey::Group,
                QuotaKey::Tenant => GatewayQuotaKey::Tenant,
                QuotaKey::Client => GatewayQuotaKey::Client,
                QuotaKey::Agent => GatewayQuotaKey::Agent,
            },
            subjects: q.subjects.as_ref().map(subjects),
            models: q.models.clone(),
            tokens_per_minute: q.tokens_per_minute,
            requests_per_minute: q.requests_per_minute,
            concurrent: q.concurrent,
            tokens_per_day: q.tokens_per_day,
            ..QuotaLimit::named(q.name.clone())
        })
        .collect();
    if let Some(store) = &spec.quota_store
        && store.type_ == QuotaStoreType::Redis
    {
        config.quotas.store = StoreConfig::Redis {
            url: String::new(),
            url_file: Some(Path::new(SECRETS_DIR).join(REDIS_URL_KEY)),
            fail_mode: match store.fail_mode {
                FailMode::Closed => GatewayFailMode::Closed,
                FailMode::Open => GatewayFailMode::Open,
            },
            key_prefix: store
                .key_prefix
                .clone()
                .unwrap_or_else(|| default_key_prefix(backend)),
        };
    }
    config.audit.enabled = spec.audit.as_ref().and_then(|a| a.enabled).unwrap_or(true);
    if let Some(server) = &spec.mcp {
        // Tokens are for this resource (RFC 8707), whatever audiences the
        // IdPs name for models (the CRD refuses per-reference audiences).
        for issuer in &mut config.issuers {
            issuer.audiences = vec![server.resource.clone()];
        }
        config.resource.resource = Some(server.resource.clone());
        if let Some(path) = &server.path {
            config.mcp.path.clone_from(path);
        }
        config
            .mcp
            .session_methods
            .clone_from(&server.session_methods);
        config.mcp.audit_arguments = server.audit_arguments.unwrap_or(false);
    }
    if let Some(tracing) = &spec.tracing {
        config.tracing = attach_sidecar::traces::TracingConfig {
            endpoint: Some(tracing.endpoint.clone()),
            sample_ratio: f64::from(tracing.sample_percent.unwrap_or(100).min(100)) / 100.0,
            hash_user_id: tracing.hash_user_id.unwrap_or(false),
            service_name: None,
        };
    }
    Rendered {
        config,
        unrenderable,
    }
}

/// The config of a backend that cannot be served as declared: it verifies
/// nothing, allows nothing and denies everything (fail closed), but still
/// answers probes.
pub fn render_deny_all(spec: &LLMBackendSpec, ports: Ports) -> Rendered {
    let mut config = GatewayConfig::new(Vec::new());
    config.listen.port = ports.listen;
    config.admin.port = ports.admin;
    config.upstream.url = format!("http://127.0.0.1:{}", ports.upstream);
    config.unauthenticated_paths = spec.unauthenticated_paths.clone();
    config.access = AccessConfig::deny();
    config.deny_all = true;
    Rendered {
        config,
        unrenderable: None,
    }
}

/// A duration as the CRD allows it (`30s`, `5m`, `1h30m`: digits and `s`,
/// `m` or `h`, repeated); `None` for anything else.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    digits
        .is_empty()
        .then_some(std::time::Duration::from_secs(total))
        .filter(|_| !text.is_empty())
}

/// The `apiKeys` section. The signing key is named by the file the pod
/// mounts from the user's Secret, and only while keys are enabled (the
/// operator never reads it). Unset durations take the gateway's defaults,
/// except that the default lifetime never exceeds a shorter `maxLifetime`.
fn api_keys(spec: &ApiKeys) -> Result<ApiKeysConfig, String> {
    let defaults = ApiKeysConfig::default();
    if spec.enabled && spec.signing_key().is_none() {
        return Err("spec.apiKeys.signingKeySecretRef is required when enabled".into());
    }
    let max_lifetime =
        key_duration("maxLifetime", spec.max_lifetime.as_deref())?.unwrap_or(defaults.max_lifetime);
    let default_lifetime = key_duration("defaultLifetime", spec.default_lifetime.as_deref())?
        .unwrap_or_else(|| defaults.default_lifetime.min(max_lifetime));
    Ok(ApiKeysConfig {
        enabled: spec.enabled,
        signing_key_file: spec
            .signing_key()
            .map(|_| Path::new(SECRETS_DIR).join(API_KEYS_SIGNING_KEY)),
        max_lifetime,
        default_lifetime,
        cache_ttl: key_duration("cacheTtl", spec.cache_ttl.as_deref())?
            .unwrap_or(defaults.cache_ttl),
        max_keys_per_user: spec.max_keys_per_user.unwrap_or(defaults.max_keys_per_user),
        admins: spec.admins.as_ref().map(key_admins).unwrap_or_default(),
        ..defaults
    })
}

/// A duration of `spec.apiKeys.<field>`, if set; an error naming the field
/// for one the CRD should have refused.
fn key_duration(field: &str, text: Option<&str>) -> Result<Option<std::time::Duration>, String> {
    text.map(|t| {
        parse_duration(t).ok_or_else(|| {
            format!("spec.apiKeys.{field}: {t:?} is not a duration such as 720h or 1h30m")
        })
    })
    .transpose()
}

/// The key administrators as the gateway's subjects: names only. Never
/// `anyAuthenticated`, which would let every caller revoke every key.
fn key_admins(admins: &ApiKeyAdmins) -> GatewaySubjects {
    GatewaySubjects {
        issuer: admins.issuer.clone(),
        users: admins.users.clone(),
        groups: admins.groups.clone(),
        roles: admins.roles.clone(),
        ..GatewaySubjects::default()
    }
}

fn issuer(idp: &ResolvedIdp) -> IssuerConfig {
    let mut issuer = IssuerConfig::new(
        idp.issuer.clone(),
        idp.audiences.clone(),
        preset(idp.preset),
    );
    issuer.jwks_uri.clone_from(&idp.jwks_uri);
    if idp.preset == Preset::Kubernetes {
        // Only the API server serves these keys, to authenticated callers:
        // they come with the config. None yet (the IdP is not Ready), or
        // unparseable: an empty set, which verifies nothing.
        let keys = idp
            .relayed_keys
            .as_deref()
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_else(|| serde_json::json!({"keys": []}));
        issuer.jwks = Some(keys);
        issuer.jwks_uri = None;
    }
    issuer.allow_insecure_http = idp.insecure;
    issuer.user_clients.clone_from(&idp.user_clients);
    if let Some(interval) = idp
        .jwks_refresh_interval
        .as_deref()
        .and_then(parse_duration)
    {
        issuer.jwks_refresh_interval = interval;
    }
    if let Some(secs) = idp.leeway_seconds {
        issuer.leeway = std::time::Duration::from_secs(u64::from(secs));
    }
    if let Some(algs) = &idp.algorithms {
        issuer.algorithms = algs.iter().map(|a| algorithm(*a)).collect();
    }
    if let Some(claims) = &idp.claims {
        issuer.claims = ClaimMapping {
            user: claims.user.clone(),
            groups: claims.groups.clone(),
            roles: claims.roles.clone(),
            scopes: claims.scopes.clone(),
            tenant: claims.tenant.clone(),
            namespace: claims.namespace.clone(),
            ..ClaimMapping::preset(preset(idp.preset))
        };
    }
    issuer
}

/// The backend's trusted proxies, parsed; an entry that is not a CIDR is
/// an error naming it (the backend then fails closed).
fn trusted_proxies(spec: &LLMBackendSpec) -> Result<Vec<ipnet::IpNet>, String> {
    spec.trusted_proxies
        .iter()
        .map(|c| {
            c.parse()
                .map_err(|_| format!("spec.trustedProxies: {c:?} is not a CIDR"))
        })
        .collect()
}

fn engine(e: crate::crd::llm_backend::Engine) -> attach_sidecar::canonical::Engine {
    use crate::crd::llm_backend::Engine as E;
    use attach_sidecar::canonical::Engine as G;
    match e {
        E::Ollama => G::Ollama,
        E::Vllm => G::Vllm,
        E::Openai => G::Openai,
        E::Mcp => G::Mcp,
    }
}

fn preset(p: Preset) -> GatewayPreset {
    match p {
        Preset::Auth0 => GatewayPreset::Auth0,
        Preset::Okta => GatewayPreset::Okta,
        Preset::Descope => GatewayPreset::Descope,
        Preset::Keycloak => GatewayPreset::Keycloak,
        Preset::Entra => GatewayPreset::Entra,
        Preset::Kubernetes => GatewayPreset::Kubernetes,
        Preset::Generic => GatewayPreset::Generic,
    }
}

fn algorithm(a: Algorithm) -> GatewayAlgorithm {
    match a {
        Algorithm::RS256 => GatewayAlgorithm::RS256,
        Algorithm::RS384 => GatewayAlgorithm::RS384,
        Algorithm::RS512 => GatewayAlgorithm::RS512,
        Algorithm::PS256 => GatewayAlgorithm::PS256,
        Algorithm::PS384 => GatewayAlgorithm::PS384,
        Algorithm::PS512 => GatewayAlgorithm::PS512,
        Algorithm::ES256 => GatewayAlgorithm::ES256,
        Algorithm::ES384 => GatewayAlgorithm::ES384,
        Algorithm::EdDSA => GatewayAlgorithm::EdDSA,
    }
}

fn class(e: EndpointClass) -> GatewayClass {
    match e {
        EndpointClass::Inference => GatewayClass::Inference,
        EndpointClass::Read => GatewayClass::Read,
        EndpointClass::Admin => GatewayClass::Admin,
    }
}

fn subjects(s: &Subjects) -> GatewaySubjects {
    GatewaySubjects {
        issuer: s.issuer.clone(),
        any_authenticated: s.any_authenticated.unwrap_or(false),
        users: s.users.clone(),
        groups: s.groups.clone(),
        roles: s.roles.clone(),
        scopes: s.scopes.clone(),
        tenants: s.tenants.clone(),
        clients: s.clients.clone(),
        agents: s.agents.clone(),
        any_actor: s.any_actor.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attach_sidecar::exchange::SubjectTokenType;

    fn spec() -> LLMBackendSpec {
        serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": "ollama"}},
            "engine": "ollama",
            "port": 11434,
            "identityProviderRefs": [{"name": "corp"}],
            "access": {"rules": [
                {"name": "power", "subjects": {"groups": ["ai-power-users"]}, "endpoints": ["inference", "read"]},
                {"name": "staff", "subjects": {"groups": ["staff"]}, "models": ["*:1b"], "endpoints": ["inference"]},
            ]},
            "quotas": [{"name": "per-user", "tokensPerMinute": 20000},
                       {"name": "staff-pool", "per": "group", "subjects": {"groups": ["staff"]}, "concurrent": 8}],
            "quotaStore": {"type": "redis", "urlSecretRef": {"name": "redis", "key": "url"}, "failMode": "open"},
            "unauthenticatedPaths": ["/"],
        }))
        .unwrap()
    }

    fn keycloak() -> ResolvedIdp {
        ResolvedIdp {
            issuer: "https://kc.example/realms/corp".into(),
            audiences: vec!["attach-gateway".into()],
            relayed_keys: None,
            jwks_uri: None,
            preset: Preset::Keycloak,
            claims: None,
            algorithms: Some(vec![Algorithm::RS256]),
            leeway_seconds: Some(30),
            jwks_refresh_interval: Some("1h30m".into()),
            insecure: false,
            user_clients: Vec::new(),
            token_exchange: None,
        }
    }

    const PORTS: Ports = Ports {
        listen: 11434,
        admin: 9090,
        upstream: 11435,
    };

    const CHAT: BackendId<'static> = BackendId {
        namespace: "ml",
        name: "chat",
    };

    #[test]
    fn traces_are_off_unless_the_backend_names_a_collector() {
        let plain = render(CHAT, &spec(), &[keycloak()], PORTS).config;
        assert_eq!(
            plain.tracing,
            attach_sidecar::traces::TracingConfig::default()
        );
        assert_eq!(plain.tracing.endpoint, None);
        let mut traced = spec();
        traced.tracing = Some(crate::crd::llm_backend::Tracing {
            endpoint: "http://otel-collector.monitoring:4318".into(),
            sample_percent: Some(25),
            hash_user_id: Some(true),
        });
        let rendered = render(CHAT, &traced, &[keycloak()], PORTS);
        assert_eq!(rendered.problem(), None);
        let tracing = &rendered.config.tracing;
        assert_eq!(
            tracing.endpoint.as_deref(),
            Some("http://otel-collector.monitoring:4318")
        );
        assert!((tracing.sample_ratio - 0.25).abs() < f64::EPSILON);
        assert!(tracing.hash_user_id);
        // A collector URL the gateway cannot use is a problem the backend
        // reports, not a config the gateway refuses later.
        let mut bad = traced;
        if let Some(t) = &mut bad.tracing {
            t.endpoint = "http://collector:4318/?token=x".into();
        }
        let problem = render(CHAT, &bad, &[keycloak()], PORTS).problem();
        assert!(problem.is_some_and(|p| p.contains("tracing")));
    }

    #[test]
    fn a_backend_renders_into_a_valid_gateway_config() {
        let rendered = render(CHAT, &spec(), &[keycloak()], PORTS);
        let config = &rendered.config;
        config.validate().unwrap();
        assert_eq!(config.listen.port, 11434);
        assert_eq!(config.upstream.url, "http://127.0.0.1:11435");
        assert_eq!(config.issuers[0].issuer, "https://kc.example/realms/corp");
        assert_eq!(config.issuers[0].leeway.as_secs(), 30);
        assert_eq!(config.issuers[0].jwks_refresh_interval.as_secs(), 5400);
        assert_eq!(config.issuers[0].algorithms, [GatewayAlgorithm::RS256]);
        assert_eq!(config.access.rules.len(), 2);
        assert_eq!(config.access.rules[0].models, ["*"], "no models means all");
        assert_eq!(config.access.rules[1].models, ["*:1b"]);
        assert_eq!(config.quotas.limits[0].tokens_per_minute, Some(20_000));
        assert_eq!(config.quotas.limits[1].per, GatewayQuotaKey::Group);
        assert_eq!(config.unauthenticated_paths, ["/"]);
        assert!(!config.deny_all);
        // What the operator writes is what the gateway reads.
        let yaml = rendered.config_yaml();
        assert_eq!(&GatewayConfig::parse(&yaml).unwrap(), config);
        // The Redis URL is a file the pod mounts from the user's Secret.
        match &config.quotas.store {
            StoreConfig::Redis {
                url,
                url_file,
                fail_mode,
                ..
            } => {
                assert!(url.is_empty(), "the operator never knows the URL");
                assert_eq!(
                    url_file.as_deref(),
                    Some(Path::new("/etc/attach/secrets/redis-url"))
                );
                assert_eq!(*fail_mode, GatewayFailMode::Open);
            }
            other => panic!("not redis: {other:?}"),
        }
    }

    #[test]
    fn the_engine_its_models_and_the_identity_fields_reach_the_gateway() {
        use attach_sidecar::canonical::Engine as GatewayEngine;
        // An Ollama backend is read with Ollama's rules...
        let ollama = render(CHAT, &spec(), &[keycloak()], PORTS).config;
        assert_eq!(ollama.upstream.engine, GatewayEngine::Ollama);
        // ...and a vLLM one with vLLM's: its body and model names are read
        // as vLLM reads them, and its default model is the one judged.
        let vllm: LLMBackendSpec = serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": "vllm"}},
            "engine": "vllm",
            "port": 8000,
            "identityProviderRefs": [{"kind": "IdentityProvider", "name": "kc"}],
            "defaultModel": "meta-llama/Llama-3.2-1B",
            "servedModels": ["meta-llama/Llama-3.2-1B"],
            "trustedProxies": ["10.0.0.0/8"],
            "access": {"rules": [{"name": "corp-admins", "humanOnly": true,
                "subjects": {"issuer": "https://kc.example/realms/corp", "groups": ["admins"],
                             "agents": ["planner"], "anyActor": true},
                "endpoints": ["admin"]}]},
        }))
        .unwrap();
        let mut idp = keycloak();
        idp.user_clients = vec!["attach-cli".into()];
        let config = render(CHAT, &vllm, &[idp], PORTS).config;
        config.validate().unwrap();
        assert_eq!(config.upstream.engine, GatewayEngine::Vllm);
        assert_eq!(
            config.upstream.default_model.as_deref(),
            Some("meta-llama/Llama-3.2-1B")
        );
        assert_eq!(config.upstream.served_models, ["meta-llama/Llama-3.2-1B"]);
        assert_eq!(config.trusted_proxies.len(), 1);
        assert_eq!(config.issuers[0].user_clients, ["attach-cli"]);
        let subjects = &config.access.rules[0].subjects;
        assert_eq!(
            subjects.issuer.as_deref(),
            Some("https://kc.example/realms/corp")
        );
        assert!(subjects.any_actor);
        assert!(config.access.rules[0].human_only);
        // A human-only rule without userClients cannot be judged: the
        // rendered config is refused (and the backend fails closed).
        let refused = render(CHAT, &vllm, &[keycloak()], PORTS).config;
        assert!(refused.validate().is_err());
        // A trusted proxy that is not a CIDR is an error, never dropped.
        let mut bad = vllm.clone();
        bad.trusted_proxies = vec!["10.0.0.0/33".into()];
        let problem = render(CHAT, &bad, &[keycloak()], PORTS).problem();
        assert!(problem.is_some_and(|p| p.contains("10.0.0.0/33")));
    }

    #[test]
    fn every_backend_gets_its_own_redis_key_prefix_unless_it_names_one() {
        let prefix = |backend: BackendId<'_>, spec: &LLMBackendSpec| match render(
            backend,
            spec,
            &[keycloak()],
            PORTS,
        )
        .config
        .quotas
        .store
        {
            StoreConfig::Redis { key_prefix, .. } => key_prefix,
            other => panic!("not redis: {other:?}"),
        };
        let chat = prefix(CHAT, &spec());
        assert_eq!(chat, "attach:quota:ml/chat:");
        let other_namespace = BackendId {
            namespace: "research",
            name: "chat",
        };
        let other_name = BackendId {
            namespace: "ml",
            name: "code",
        };
        assert_ne!(chat, prefix(other_namespace, &spec()));
        assert_ne!(chat, prefix(other_name, &spec()));
        let mut shared = spec();
        if let Some(store) = shared.quota_store.as_mut() {
            store.key_prefix = Some("team:".into());
        }
        assert_eq!(prefix(CHAT, &shared), "team:");
        assert_eq!(prefix(other_name, &shared), "team:", "shared on purpose");
    }

    /// Every access and quota setting of the spec reaches the gateway: a
    /// dropped `deniedAgents` lets the denied agents in, a dropped
    /// `allowUnknownEndpoints` changes what unknown paths get, and a
    /// dropped quota `subjects` or `models` applies a limit to everyone
    /// and every model.
    #[test]
    fn access_and_quota_settings_reach_the_gateway() {
        let mut custom = spec();
        let extra: LLMBackendSpec = serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": "ollama"}},
            "engine": "ollama",
            "port": 11434,
            "identityProviderRefs": [{"name": "corp"}],
            "access": {
                "rules": [{"name": "power", "endpoints": ["inference"], "subjects": {
                    "issuer": "https://kc.example/realms/corp", "anyAuthenticated": true,
                    "users": ["alice"], "groups": ["ai-power-users"], "roles": ["llm"],
                    "scopes": ["models"], "tenants": ["acme"], "clients": ["cli"],
                    "agents": ["helper"], "anyActor": true}}],
                "allowUnknownEndpoints": true,
                "deniedAgents": ["rogue-agent"],
            },
            "quotas": [{"name": "staff-large", "per": "user", "subjects": {"groups": ["staff"]},
                        "models": ["llama3:70b"], "tokensPerMinute": 500, "requestsPerMinute": 7,
                        "concurrent": 2, "tokensPerDay": 1000}],
        }))
        .unwrap();
        custom.access = extra.access;
        custom.quotas = extra.quotas;
        let rendered = render(CHAT, &custom, &[keycloak()], PORTS);
        let config = &rendered.config;
        assert!(config.access.allow_unknown_endpoints);
        assert_eq!(config.access.denied_agents, ["rogue-agent"]);
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            config.access.rules[0].subjects,
            GatewaySubjects {
                issuer: Some("https://kc.example/realms/corp".into()),
                any_authenticated: true,
                users: strings(&["alice"]),
                groups: strings(&["ai-power-users"]),
                roles: strings(&["llm"]),
                scopes: strings(&["models"]),
                tenants: strings(&["acme"]),
                clients: strings(&["cli"]),
                agents: strings(&["helper"]),
                any_actor: true,
            }
        );
        let limit = &config.quotas.limits[0];
        assert_eq!(limit.name, "staff-large");
        assert_eq!(limit.models, ["llama3:70b"]);
        assert_eq!(
            limit.subjects.as_ref().map(|s| s.groups.clone()),
            Some(vec!["staff".to_owned()])
        );
        assert_eq!(limit.tokens_per_minute, Some(500));
        assert_eq!(limit.requests_per_minute, Some(7));
        assert_eq!(limit.concurrent, Some(2));
        assert_eq!(limit.tokens_per_day, Some(1000));
        // And survive the YAML the gateway reads.
        assert_eq!(
            &GatewayConfig::parse(&rendered.config_yaml()).unwrap(),
            config
        );
        // Unset, they are the safe values: unknown paths denied, no agent
        // denied by name, limits on everyone.
        let plain = render(CHAT, &spec(), &[keycloak()], PORTS).config;
        assert!(!plain.access.allow_unknown_endpoints);
        assert!(plain.access.denied_agents.is_empty());
        assert!(plain.quotas.limits[0].subjects.is_none());
        assert!(plain.quotas.limits[0].models.is_empty());
    }

    /// An IdP's preset and its claim paths reach the gateway: a dropped
    /// `groups` path, say, reads groups from the preset's claim instead.
    #[test]
    fn the_preset_and_claim_paths_reach_the_gateway() {
        let mut entra = keycloak();
        entra.preset = Preset::Entra;
        let rendered = render(CHAT, &spec(), &[entra.clone()], PORTS);
        assert_eq!(
            rendered.config.issuers[0].claims,
            ClaimMapping::preset(GatewayPreset::Entra)
        );
        entra.claims = Some(crate::crd::identity_provider::ClaimPaths {
            user: Some("upn".into()),
            groups: Some("realm_access.groups".into()),
            roles: Some("app_roles".into()),
            scopes: Some("scope_list".into()),
            tenant: Some("org.id".into()),
            namespace: Some("https://example.com/claims/".into()),
        });
        let claims = &render(CHAT, &spec(), &[entra], PORTS).config.issuers[0].claims;
        assert_eq!(claims.preset, GatewayPreset::Entra);
        assert_eq!(claims.user.as_deref(), Some("upn"));
        assert_eq!(claims.groups.as_deref(), Some("realm_access.groups"));
        assert_eq!(claims.roles.as_deref(), Some("app_roles"));
        assert_eq!(claims.scopes.as_deref(), Some("scope_list"));
        assert_eq!(claims.tenant.as_deref(), Some("org.id"));
        assert_eq!(
            claims.namespace.as_deref(),
            Some("https://example.com/claims/")
        );
        // The preset's own client claim stays.
        assert_eq!(
            claims.client,
            ClaimMapping::preset(GatewayPreset::Entra).client
        );
    }

    /// A `kubernetes` IdP's keys come from the API server through the
    /// operator: they are in the config, and nothing is fetched; with none
    /// relayed yet, the gateway holds an empty set and verifies nothing.
    #[test]
    fn a_kubernetes_idp_gives_the_gateway_the_relayed_keys() {
        let jwks = r#"{"keys":[{"kty":"RSA","kid":"k1","n":"xyz","e":"AQAB"}]}"#;
        let mut cluster = keycloak();
        cluster.issuer = "https://kubernetes.default.svc.cluster.local".into();
        cluster.preset = Preset::Kubernetes;
        cluster.jwks_uri = Some("https://ignored.example/jwks".into());
        cluster.relayed_keys = Some(jwks.into());
        let rendered = render(CHAT, &spec(), &[cluster.clone()], PORTS);
        let issuer = &rendered.config.issuers[0];
        assert_eq!(issuer.jwks, Some(serde_json::from_str(jwks).unwrap()));
        assert_eq!(issuer.jwks_uri, None);
        assert_eq!(issuer.claims.preset, GatewayPreset::Kubernetes);
        assert_eq!(rendered.problem(), None);

        cluster.relayed_keys = None;
        let rendered = render(CHAT, &spec(), &[cluster.clone()], PORTS);
        assert_eq!(
            rendered.config.issuers[0].jwks,
            Some(serde_json::json!({"keys": []}))
        );
        cluster.relayed_keys = Some("not json".into());
        let rendered = render(CHAT, &spec(), &[cluster], PORTS);
        assert_eq!(
            rendered.config.issuers[0].jwks,
            Some(serde_json::json!({"keys": []}))
        );
    }

    #[test]
    fn the_access_section_is_always_explicit() {
        // Without spec.access: one written-out rule, inference and read for
        // every authenticated caller, never admin.
        let mut open = spec();
        open.access = None;
        let yaml = render(CHAT, &open, &[keycloak()], PORTS).config_yaml();
        let doc: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        let rules = doc["access"]["rules"]
            .as_array()
            .expect("access.rules written");
        assert_eq!(rules.len(), 1, "{yaml}");
        assert_eq!(rules[0]["subjects"]["anyAuthenticated"], true);
        assert_eq!(
            rules[0]["endpoints"],
            serde_json::json!(["inference", "read"])
        );
        // With rules: exactly those.
        let yaml = render(CHAT, &spec(), &[keycloak()], PORTS).config_yaml();
        let doc: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        let names: Vec<_> = doc["access"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["power", "staff"]);
        // Deny-all: an empty rule list, written out.
        let yaml = render_deny_all(&spec(), PORTS).config_yaml();
        let doc: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(doc["access"]["rules"], serde_json::json!([]), "{yaml}");
        assert_eq!(doc["denyAll"], true);
    }

    #[test]
    fn the_hash_changes_with_the_config_and_only_then() {
        let a = render(CHAT, &spec(), &[keycloak()], PORTS);
        let b = render(CHAT, &spec(), &[keycloak()], PORTS);
        assert_eq!(a.hash(), b.hash());
        let mut changed = spec();
        changed.quotas[0].tokens_per_minute = Some(10_000);
        assert_ne!(
            a.hash(),
            render(CHAT, &changed, &[keycloak()], PORTS).hash()
        );
        assert_eq!(a.hash().len(), 16);
    }

    #[test]
    fn token_exchange_names_its_client_secret_by_file() {
        let mut idp = keycloak();
        idp.token_exchange = Some(
            serde_json::from_value(serde_json::json!({
                "tokenEndpoint": "https://kc.example/realms/corp/protocol/openid-connect/token",
                "clientId": "attach-gateway",
                "clientSecretRef": {"name": "gw", "key": "secret"},
                "audience": "llm-downstream",
            }))
            .unwrap(),
        );
        let mut other = keycloak();
        other.issuer = "https://kc.example/realms/other".into();
        // With two issuers every rule names its issuer: a group name is
        // unique only within the issuer that asserts it.
        let mut spec = spec();
        for subjects in spec
            .access
            .iter_mut()
            .flat_map(|access| access.rules.iter_mut())
            .map(|rule| &mut rule.subjects)
            .chain(spec.quotas.iter_mut().filter_map(|q| q.subjects.as_mut()))
        {
            subjects.issuer = Some("https://kc.example/realms/corp".into());
        }
        let rendered = render(CHAT, &spec, &[other, idp], PORTS);
        rendered.config.validate().unwrap();
        assert!(rendered.config.issuers[0].token_exchange.is_none());
        let exchange = rendered.config.issuers[1].token_exchange.as_ref().unwrap();
        assert_eq!(exchange.client_id, "attach-gateway");
        assert_eq!(exchange.audience.as_deref(), Some("llm-downstream"));
        assert_eq!(
            exchange.client_secret_file.as_deref(),
            Some(Path::new("/etc/attach/secrets/exchange-client-secret-1"))
        );
        assert!(exchange.client_secret.is_empty());
        assert_eq!(exchange.subject_token_type, SubjectTokenType::AccessToken);
        assert_eq!(exchange.subject_issuer, None);
    }

    #[test]
    fn a_workload_token_is_exchanged_as_a_jwt_of_the_issuer_the_idp_federates() {
        use crate::crd::identity_provider::SubjectTokenType as Written;
        let exchange = |written: Option<Written>| {
            let mut spec: crate::crd::identity_provider::TokenExchange =
                serde_json::from_value(serde_json::json!({
                    "tokenEndpoint": "https://kc.example/realms/corp/protocol/openid-connect/token",
                    "clientId": "attach-gateway",
                    "clientSecretRef": {"name": "gw", "key": "secret"},
                    "audience": "llm-downstream",
                    "subjectIssuer": "cluster",
                }))
                .unwrap();
            spec.subject_token_type = written;
            spec
        };
        let cases = [
            (Preset::Kubernetes, None, SubjectTokenType::Jwt),
            (Preset::Keycloak, None, SubjectTokenType::AccessToken),
            (Preset::Generic, Some(Written::Jwt), SubjectTokenType::Jwt),
            (
                Preset::Kubernetes,
                Some(Written::AccessToken),
                SubjectTokenType::AccessToken,
            ),
        ];
        for (preset, written, want) in cases {
            let mut idp = keycloak();
            idp.preset = preset;
            idp.token_exchange = Some(exchange(written));
            let rendered = render(CHAT, &spec(), &[idp], PORTS);
            let got = rendered.config.issuers[0].token_exchange.as_ref().unwrap();
            assert_eq!(got.subject_token_type, want, "{preset:?} {written:?}");
            assert_eq!(got.subject_issuer.as_deref(), Some("cluster"));
        }
    }

    #[test]
    fn an_mcp_server_is_bound_to_its_resource_and_judged_by_target() {
        use attach_sidecar::canonical::Engine as GatewayEngine;
        let spec: LLMBackendSpec = serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": "tools"}},
            "engine": "mcp",
            "mcp": {"resource": "https://tools.example.com/mcp", "path": "/rpc",
                    "sessionMethods": ["tasks/list"], "auditArguments": true,
                    "env": {"PORT": "{port}"}},
            "port": 8000,
            "identityProviderRefs": [{"name": "corp"}],
            "access": {"rules": [
                {"name": "staff", "subjects": {"groups": ["staff"]},
                 "models": ["tool:search_*", "resource:docs://*"], "endpoints": ["inference", "read"]},
            ]},
            "quotas": [{"name": "searches", "models": ["tool:search_*"], "requestsPerMinute": 30}],
        }))
        .unwrap();
        let rendered = render(CHAT, &spec, &[keycloak()], PORTS);
        assert_eq!(rendered.problem(), None);
        let config = &rendered.config;
        assert_eq!(config.upstream.engine, GatewayEngine::Mcp);
        // Tokens must be issued for the server (RFC 8707), not for the
        // IdP's model audience.
        assert_eq!(
            config.issuers[0].audiences,
            ["https://tools.example.com/mcp"]
        );
        assert_eq!(
            config.resource.resource.as_deref(),
            Some("https://tools.example.com/mcp")
        );
        assert_eq!(config.mcp.path, "/rpc");
        assert_eq!(config.mcp.session_methods, ["tasks/list"]);
        assert!(config.mcp.audit_arguments);
        assert_eq!(
            &GatewayConfig::parse(&rendered.config_yaml()).unwrap(),
            config
        );

        // A rule naming a model (not a tool, resource or prompt) is the
        // backend's problem, reported, never dropped.
        let mut bad = spec.clone();
        bad.access.as_mut().unwrap().rules[0].models = vec!["llama3.2:1b".into()];
        let problem = render(CHAT, &bad, &[keycloak()], PORTS).problem().unwrap();
        assert!(problem.contains("MCP target"), "{problem}");
    }

    /// Every LLMBackend of `examples/` renders into a config the gateway
    /// accepts (rules, targets and quotas in its engine's grammar), with
    /// the platform's Keycloak (its `userClients` included).
    #[test]
    fn every_example_backend_renders_into_a_valid_gateway_config() {
        use serde::Deserialize;
        let examples = crate::testkit::crate_dir().join("../examples");
        let mut idp = keycloak();
        idp.user_clients = vec!["attach-cli".into(), "mcp-clients".into()];
        let mut rendered = 0;
        for dir in std::fs::read_dir(&examples).unwrap() {
            let dir = dir.unwrap().path();
            if !dir.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&dir).unwrap() {
                let file = file.unwrap().path();
                let text = std::fs::read_to_string(&file).unwrap();
                for doc in serde_yaml::Deserializer::from_str(&text) {
                    let doc = serde_yaml::Value::deserialize(doc).unwrap();
                    if doc["kind"] != "LLMBackend" {
                        continue;
                    }
                    let spec: LLMBackendSpec = serde_yaml::from_value(doc["spec"].clone()).unwrap();
                    let ports = crate::ports::layout(crate::ports::default_model_port(spec.engine));
                    let out = render(CHAT, &spec, std::slice::from_ref(&idp), ports);
                    assert_eq!(out.problem(), None, "{}", file.display());
                    rendered += 1;
                }
            }
        }
        assert!(rendered >= 5, "{rendered} backends in the examples");
    }

    #[test]
    fn unresolved_backends_fail_closed() {
        let config = render_deny_all(&spec(), PORTS).config;
        config.validate().unwrap();
        assert!(config.deny_all);
        assert!(config.issuers.is_empty(), "no token can verify");
        assert!(config.access.rules.is_empty());
        assert_eq!(config.unauthenticated_paths, ["/"], "probes still answer");
    }

    #[test]
    fn durations_parse_as_the_crd_allows_them() {
        assert_eq!(
            parse_duration("30s"),
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration("5m"),
            Some(std::time::Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration("1h30m"),
            Some(std::time::Duration::from_secs(5400))
        );
        for bad in ["", "5", "m", "5 m", "1.5h", "5d", "-5m"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    /// `spec` with `apiKeys` set to `keys`.
    fn with_keys(keys: serde_json::Value) -> LLMBackendSpec {
        let mut spec = spec();
        spec.api_keys = Some(serde_json::from_value(keys).unwrap());
        spec
    }

    /// The API keys section reaches the gateway as declared, the signing
    /// key named by the file the pod mounts (never read by the operator),
    /// and survives the YAML the gateway reads.
    #[test]
    fn api_keys_reach_the_gateway_with_the_signing_key_named_by_file() {
        let spec = with_keys(serde_json::json!({
            "enabled": true,
            "signingKeySecretRef": {"name": "keys", "key": "signing-key"},
            "maxLifetime": "720h", "defaultLifetime": "24h", "cacheTtl": "30s",
            "maxKeysPerUser": 5,
            "admins": {"issuer": "https://kc.example/realms/corp", "users": ["root"],
                       "groups": ["ops"], "roles": ["key-admin"]},
        }));
        let rendered = render(CHAT, &spec, &[keycloak()], PORTS);
        assert_eq!(rendered.problem(), None);
        let keys = &rendered.config.api_keys;
        assert!(keys.enabled);
        assert_eq!(
            keys.signing_key_file.as_deref(),
            Some(Path::new("/etc/attach/secrets/api-keys-signing-key"))
        );
        assert!(keys.signing_key.is_empty(), "the operator never knows it");
        assert_eq!(keys.max_lifetime.as_secs(), 720 * 3600);
        assert_eq!(keys.default_lifetime.as_secs(), 24 * 3600);
        assert_eq!(keys.cache_ttl.as_secs(), 30);
        assert_eq!(keys.max_keys_per_user, 5);
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            keys.admins,
            GatewaySubjects {
                issuer: Some("https://kc.example/realms/corp".into()),
                users: strings(&["root"]),
                groups: strings(&["ops"]),
                roles: strings(&["key-admin"]),
                ..GatewaySubjects::default()
            }
        );
        let yaml = rendered.config_yaml();
        assert!(
            yaml.contains("signingKeyFile: /etc/attach/secrets/api-keys-signing-key"),
            "{yaml}"
        );
        assert_eq!(
            &GatewayConfig::parse(&yaml).unwrap(),
            &rendered.config,
            "{yaml}"
        );
    }

    /// Each apiKeys setting renders into a config the gateway accepts, or
    /// into a problem naming the field (the backend then fails closed):
    /// what the CRD's rules refuse, should it get past them, and what only
    /// the gateway can judge.
    #[test]
    fn api_keys_settings_render_or_name_their_problem() {
        type Change = fn(&mut LLMBackendSpec);
        let signed = serde_json::json!({"enabled": true,
            "signingKeySecretRef": {"name": "keys", "key": "k"}});
        let with = |extra: serde_json::Value| {
            let mut keys = signed.clone();
            if let (Some(keys), Some(extra)) = (keys.as_object_mut(), extra.as_object()) {
                keys.extend(extra.clone());
            }
            keys
        };
        let two_issuers: Change = |s| {
            s.access = None;
            s.quotas.clear();
        };
        let memory: Change = |s| s.quota_store = None;
        let cases: Vec<(&str, serde_json::Value, Change, usize, Option<&str>)> = vec![
            ("enabled", signed.clone(), |_| {}, 1, None),
            ("off", serde_json::json!({}), |_| {}, 1, None),
            (
                "off, with a Secret",
                serde_json::json!({"signingKeySecretRef": {"name": "keys", "key": "k"}}),
                |_| {},
                1,
                None,
            ),
            (
                "admins of the one issuer",
                with(serde_json::json!({"admins": {"groups": ["ops"]}})),
                |_| {},
                1,
                None,
            ),
            (
                "admins naming their issuer among two",
                with(
                    serde_json::json!({"admins": {"issuer": "https://kc.example/realms/corp",
                                                   "groups": ["ops"]}}),
                ),
                two_issuers,
                2,
                None,
            ),
            (
                "admins without an issuer among two",
                with(serde_json::json!({"admins": {"groups": ["ops"]}})),
                two_issuers,
                2,
                Some("apiKeys.admins.issuer"),
            ),
            (
                "enabled without a signing key",
                serde_json::json!({"enabled": true}),
                |_| {},
                1,
                Some("spec.apiKeys.signingKeySecretRef"),
            ),
            (
                "enabled with the memory store",
                signed.clone(),
                memory,
                1,
                Some("apiKeys.enabled"),
            ),
            (
                "a lifetime in days",
                with(serde_json::json!({"maxLifetime": "30d"})),
                |_| {},
                1,
                Some("spec.apiKeys.maxLifetime"),
            ),
            (
                "a default above the maximum",
                with(serde_json::json!({"maxLifetime": "1h", "defaultLifetime": "2h"})),
                |_| {},
                1,
                Some("apiKeys.defaultLifetime"),
            ),
            (
                "a cache longer than 5m",
                with(serde_json::json!({"cacheTtl": "10m"})),
                |_| {},
                1,
                Some("apiKeys.cacheTtl"),
            ),
            (
                "no key per user",
                with(serde_json::json!({"maxKeysPerUser": 0})),
                |_| {},
                1,
                Some("apiKeys.maxKeysPerUser"),
            ),
        ];
        let mut other = keycloak();
        other.issuer = "https://kc.example/realms/other".into();
        let idps = [keycloak(), other];
        for (name, keys, change, issuers, want) in cases {
            let mut spec = with_keys(keys);
            change(&mut spec);
            let rendered = render(CHAT, &spec, &idps[..issuers], PORTS);
            let problem = rendered.problem();
            match want {
                None => {
                    assert_eq!(problem, None, "{name}");
                    let yaml = rendered.config_yaml();
                    assert_eq!(
                        GatewayConfig::parse(&yaml).unwrap(),
                        rendered.config,
                        "{name}"
                    );
                }
                Some(field) => assert!(
                    problem.as_deref().is_some_and(|p| p.contains(field)),
                    "{name}: {problem:?}"
                ),
            }
        }
    }

    /// The default lifetime never exceeds a shorter maximum; a section
    /// that enables nothing renders as none (no config change, no restart),
    /// and a disabled one names no signing key file (its Secret need not
    /// exist).
    #[test]
    fn unset_api_key_settings_take_the_gateways_defaults() {
        let short = with_keys(serde_json::json!({"enabled": true,
            "signingKeySecretRef": {"name": "keys", "key": "k"}, "maxLifetime": "48h"}));
        let keys = render(CHAT, &short, &[keycloak()], PORTS).config.api_keys;
        assert_eq!(keys.max_lifetime.as_secs(), 48 * 3600);
        assert_eq!(keys.default_lifetime, keys.max_lifetime);
        let plain = render(CHAT, &spec(), &[keycloak()], PORTS);
        let empty = render(
            CHAT,
            &with_keys(serde_json::json!({})),
            &[keycloak()],
            PORTS,
        );
        assert_eq!(plain.hash(), empty.hash());
        assert!(!plain.config_yaml().contains("apiKeys"));
        let off = with_keys(serde_json::json!({
            "signingKeySecretRef": {"name": "keys", "key": "k"}, "maxKeysPerUser": 3}));
        let keys = render(CHAT, &off, &[keycloak()], PORTS).config.api_keys;
        assert!(!keys.enabled);
        assert_eq!(keys.signing_key_file, None);
        assert_eq!(keys.max_keys_per_user, 3);
        // The maximum the CRD checks an unset one against is the gateway's.
        assert_eq!(
            parse_duration(crate::crd::llm_backend::DEFAULT_MAX_KEY_LIFETIME),
            Some(ApiKeysConfig::default().max_lifetime)
        );
    }
}
