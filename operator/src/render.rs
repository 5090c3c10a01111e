//! Renders an `LLMBackend` (and the identity providers it refers to) into the
//! gateway's typed config, the contract with attach-gateway. Pure: the
//! controller resolves references and Secrets, this turns them into config.

use attach_sidecar::claims::{ClaimMapping, Preset as GatewayPreset};
use attach_sidecar::config::{Algorithm as GatewayAlgorithm, GatewayConfig, IssuerConfig};
use attach_sidecar::policy::{EndpointClass as GatewayClass, Rule, Subjects as GatewaySubjects};
use attach_sidecar::quota::store::{FailMode as GatewayFailMode, StoreConfig};
use attach_sidecar::quota::{QuotaKey as GatewayQuotaKey, QuotaLimit};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

use crate::crd::identity_provider::{Algorithm, Preset};
use crate::crd::llm_backend::{
    EndpointClass, FailMode, LLMBackendSpec, QuotaKey, QuotaStoreType, Subjects,
};

/// The fields of an identity provider the gateway needs, whichever its kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedIdp {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub preset: Preset,
    pub claims: Option<crate::crd::identity_provider::ClaimPaths>,
    pub algorithms: Option<Vec<Algorithm>>,
    pub leeway_seconds: Option<u32>,
    pub insecure: bool,
    /// Token exchange at this IdP, and its client secret (resolved).
    pub token_exchange: Option<(crate::crd::identity_provider::TokenExchange, String)>,
}

/// The owned Secret's key for the exchange client secret of issuer `i`.
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
/// Where the owned Secret is mounted.
pub const SECRETS_DIR: &str = "/etc/attach/secrets";
/// The Redis URL's key in the owned Secret.
pub const REDIS_URL_KEY: &str = "redis-url";

/// A rendered backend: the config (which names secrets by file only) and the
/// secret values that go to the owned Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub config: GatewayConfig,
    pub secrets: BTreeMap<String, String>,
}

impl Rendered {
    /// The config as the gateway reads it.
    pub fn config_yaml(&self) -> String {
        serde_yaml::to_string(&self.config).unwrap_or_default()
    }

    /// The hash that names this rendering in annotations and status: SHA-256
    /// over the config's canonical JSON and the secret values, first 16 hex
    /// digits. A changed secret changes it, though the config text does not.
    pub fn hash(&self) -> String {
        let mut digest = Sha256::new();
        digest.update(serde_json::to_vec(&self.config).unwrap_or_default());
        for (key, value) in &self.secrets {
            digest.update([0]);
            digest.update(key.as_bytes());
            digest.update([0]);
            digest.update(value.as_bytes());
        }
        digest
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The gateway config for `spec`. `redis_url` is the resolved Secret value
/// when the quota store is Redis; it goes to the secrets, the config names
/// its file.
pub fn render(
    spec: &LLMBackendSpec,
    idps: &[ResolvedIdp],
    redis_url: Option<String>,
    ports: Ports,
) -> Rendered {
    let mut secrets = BTreeMap::new();
    let mut config = GatewayConfig::new(idps.iter().map(issuer).collect());
    for (i, idp) in idps.iter().enumerate() {
        if let Some((spec, secret)) = &idp.token_exchange {
            let key = exchange_secret_key(i);
            let mut exchange =
                attach_sidecar::exchange::TokenExchangeConfig::new(spec.client_id.clone(), "");
            exchange.token_endpoint = Some(spec.token_endpoint.clone());
            exchange.client_secret_file = Some(Path::new(SECRETS_DIR).join(&key));
            exchange.audience.clone_from(&spec.audience);
            exchange.scopes.clone_from(&spec.scopes);
            config.issuers[i].token_exchange = Some(exchange);
            secrets.insert(key, secret.clone());
        }
    }
    config.listen.port = ports.listen;
    config.admin.port = ports.admin;
    config.upstream.url = format!("http://127.0.0.1:{}", ports.upstream);
    config.unauthenticated_paths = spec.unauthenticated_paths.clone();
    if let Some(access) = &spec.access {
        config.access.rules = access
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
        config.access.allow_unknown_endpoints = access.allow_unknown_endpoints.unwrap_or(false);
        config
            .access
            .denied_agents
            .clone_from(&access.denied_agents);
    }
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
    if let (Some(store), Some(url)) = (&spec.quota_store, redis_url)
        && store.type_ == QuotaStoreType::Redis
    {
        secrets.insert(REDIS_URL_KEY.to_owned(), url);
        config.quotas.store = StoreConfig::Redis {
            url: String::new(),
            url_file: Some(Path::new(SECRETS_DIR).join(REDIS_URL_KEY)),
            fail_mode: match store.fail_mode {
                FailMode::Closed => GatewayFailMode::Closed,
                FailMode::Open => GatewayFailMode::Open,
            },
            key_prefix: "attach:quota:".into(),
        };
    }
    config.audit.enabled = spec.audit.as_ref().and_then(|a| a.enabled).unwrap_or(true);
    Rendered { config, secrets }
}

/// The config of a backend whose references cannot be resolved: it verifies
/// nothing and denies everything (fail closed), but still answers probes.
pub fn render_deny_all(spec: &LLMBackendSpec, ports: Ports) -> Rendered {
    let mut config = GatewayConfig::new(Vec::new());
    config.listen.port = ports.listen;
    config.admin.port = ports.admin;
    config.upstream.url = format!("http://127.0.0.1:{}", ports.upstream);
    config.unauthenticated_paths = spec.unauthenticated_paths.clone();
    config.deny_all = true;
    Rendered {
        config,
        secrets: BTreeMap::new(),
    }
}

fn issuer(idp: &ResolvedIdp) -> IssuerConfig {
    let mut issuer = IssuerConfig::new(
        idp.issuer.clone(),
        idp.audiences.clone(),
        preset(idp.preset),
    );
    issuer.jwks_uri.clone_from(&idp.jwks_uri);
    issuer.allow_insecure_http = idp.insecure;
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

fn preset(p: Preset) -> GatewayPreset {
    match p {
        Preset::Auth0 => GatewayPreset::Auth0,
        Preset::Okta => GatewayPreset::Okta,
        Preset::Descope => GatewayPreset::Descope,
        Preset::Keycloak => GatewayPreset::Keycloak,
        Preset::Entra => GatewayPreset::Entra,
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
        any_authenticated: s.any_authenticated.unwrap_or(false),
        users: s.users.clone(),
        groups: s.groups.clone(),
        roles: s.roles.clone(),
        scopes: s.scopes.clone(),
        tenants: s.tenants.clone(),
        clients: s.clients.clone(),
        agents: s.agents.clone(),
        ..GatewaySubjects::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            jwks_uri: None,
            preset: Preset::Keycloak,
            claims: None,
            algorithms: Some(vec![Algorithm::RS256]),
            leeway_seconds: Some(30),
            insecure: false,
            token_exchange: None,
        }
    }

    const PORTS: Ports = Ports {
        listen: 11434,
        admin: 9090,
        upstream: 11435,
    };

    #[test]
    fn a_backend_renders_into_a_valid_gateway_config() {
        let rendered = render(
            &spec(),
            &[keycloak()],
            Some("redis://:pw@r:6379/0".into()),
            PORTS,
        );
        let config = &rendered.config;
        config.validate().unwrap();
        assert_eq!(config.listen.port, 11434);
        assert_eq!(config.upstream.url, "http://127.0.0.1:11435");
        assert_eq!(config.issuers[0].issuer, "https://kc.example/realms/corp");
        assert_eq!(config.issuers[0].leeway.as_secs(), 30);
        assert_eq!(config.issuers[0].algorithms, [GatewayAlgorithm::RS256]);
        assert_eq!(config.access.rules.len(), 2);
        assert_eq!(config.access.rules[0].models, ["*"], "no models means all");
        assert_eq!(config.access.rules[1].models, ["*:1b"]);
        assert_eq!(config.quotas.limits[0].tokens_per_minute, Some(20_000));
        assert_eq!(config.quotas.limits[1].per, GatewayQuotaKey::Group);
        assert!(matches!(
            config.quotas.store,
            StoreConfig::Redis {
                fail_mode: GatewayFailMode::Open,
                ..
            }
        ));
        assert_eq!(config.unauthenticated_paths, ["/"]);
        assert!(!config.deny_all);
        // What the operator writes is what the gateway reads.
        let yaml = rendered.config_yaml();
        assert_eq!(&GatewayConfig::parse(&yaml).unwrap(), config);
        // The Redis password goes to the Secret; the config names the file.
        assert!(!yaml.contains("pw@"), "{yaml}");
        assert!(
            yaml.contains("urlFile: /etc/attach/secrets/redis-url"),
            "{yaml}"
        );
        assert_eq!(rendered.secrets[REDIS_URL_KEY], "redis://:pw@r:6379/0");
    }

    #[test]
    fn the_hash_changes_with_the_config_and_only_then() {
        let url = || Some("redis://r:6379/0".to_owned());
        let a = render(&spec(), &[keycloak()], url(), PORTS);
        let b = render(&spec(), &[keycloak()], url(), PORTS);
        assert_eq!(a.hash(), b.hash());
        let mut changed = spec();
        changed.quotas[0].tokens_per_minute = Some(10_000);
        assert_ne!(
            a.hash(),
            render(&changed, &[keycloak()], url(), PORTS).hash()
        );
        let other_secret = render(
            &spec(),
            &[keycloak()],
            Some("redis://r2:6379/0".into()),
            PORTS,
        );
        assert_eq!(other_secret.config, a.config);
        assert_ne!(
            other_secret.hash(),
            a.hash(),
            "a changed secret changes the hash"
        );
        assert_eq!(a.hash().len(), 16);
    }

    #[test]
    fn token_exchange_goes_to_the_config_and_its_secret_to_the_secret() {
        let mut idp = keycloak();
        idp.token_exchange = Some((
            serde_json::from_value(serde_json::json!({
                "tokenEndpoint": "https://kc.example/realms/corp/protocol/openid-connect/token",
                "clientId": "attach-gateway",
                "clientSecretRef": {"name": "gw", "key": "secret"},
                "audience": "llm-downstream",
            }))
            .unwrap(),
            "s3cret".into(),
        ));
        let rendered = render(&spec(), &[idp], None, PORTS);
        rendered.config.validate().unwrap();
        let exchange = rendered.config.issuers[0].token_exchange.as_ref().unwrap();
        assert_eq!(exchange.client_id, "attach-gateway");
        assert_eq!(exchange.audience.as_deref(), Some("llm-downstream"));
        assert_eq!(
            exchange.client_secret_file.as_deref(),
            Some(Path::new("/etc/attach/secrets/exchange-client-secret-0"))
        );
        assert_eq!(rendered.secrets["exchange-client-secret-0"], "s3cret");
        assert!(!rendered.config_yaml().contains("s3cret"));
    }

    #[test]
    fn unresolved_backends_fail_closed() {
        let rendered = render_deny_all(&spec(), PORTS);
        assert!(rendered.secrets.is_empty());
        let config = rendered.config;
        config.validate().unwrap();
        assert!(config.deny_all);
        assert!(config.issuers.is_empty(), "no token can verify");
        assert_eq!(config.unauthenticated_paths, ["/"], "probes still answer");
    }
}
