//! One generation of the gateway's configuration, built into the objects
//! that serve requests. A reload builds a new `Runtime` and swaps it in
//! atomically; requests in flight finish on the one they started with.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::audit::AuditSink;
use crate::body::Body;
use crate::config::{ConfigError, GatewayConfig, IssuerConfig};
use crate::idp_client::IdpClient;
use crate::jwt::{IssuerPolicy, JwksCache, KeySource, Verifier};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::quota::clock::Clock;
use crate::quota::memory::MemoryStore;
use crate::quota::redis_store::{LeaseSettings, RedisStore};
use crate::quota::store::{QuotaStore, StoreConfig};

/// What outlives config generations: metrics, the IdP client, the clock,
/// and the in-memory quota counters (a reload must not reset anyone's
/// budget).
#[derive(Debug, Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub idp: IdpClient,
    /// The in-memory budgets: the store of a memory config, and the local
    /// fallback of a Redis one with `failMode: open`.
    pub memory: Arc<MemoryStore>,
    /// The clock quota windows and leases follow.
    pub clock: Arc<dyn Clock>,
    /// Request-body bytes buffered across all requests.
    pub body_budget: Arc<crate::proxy::body_budget::BodyBudget>,
    /// The tracer, started once with the process (its settings need a
    /// restart).
    pub traces: crate::traces::Traces,
}

impl Shared {
    /// Default sizes, the process clock.
    pub fn new() -> Self {
        Self::with_clock(crate::quota::clock::from_env())
    }

    /// Default sizes, with `clock` for quotas.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let metrics = Arc::new(Metrics::new());
        Self {
            body_budget: Arc::new(crate::proxy::body_budget::BodyBudget::new(
                metrics.buffered_body_bytes.clone(),
            )),
            idp: IdpClient::new(),
            traces: crate::traces::Traces::off(),
            memory: Arc::new(MemoryStore::new(
                crate::config::QuotaConfig::default().max_keys,
                clock.clone(),
            )),
            clock,
            metrics,
        }
    }

    /// Shared state sized as `config` says.
    pub fn for_config(config: &crate::config::GatewayConfig) -> Result<Self, ConfigError> {
        let mut shared = Self::new();
        shared.memory.resize(config.quotas.max_keys);
        shared.traces = crate::traces::Traces::start(
            &config.tracing,
            shared.idp.clone(),
            shared.metrics.clone(),
        )
        .map_err(|e| ConfigError::invalid("tracing", e.to_string()))?;
        Ok(shared)
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// The quota store `config` names: the previous generation's when it names
/// the same one (so in-memory budgets and Redis connections survive a
/// reload), else a new one. Admissions in flight keep the store that
/// admitted them.
fn quota_store(
    config: &GatewayConfig,
    previous: Option<&Runtime>,
    shared: &Shared,
) -> Result<Arc<QuotaStore>, ConfigError> {
    let quotas = &config.quotas;
    shared.memory.resize(quotas.max_keys);
    let previous = previous.map(|p| &p.quota_store);
    match &quotas.store {
        StoreConfig::Memory => {
            if let Some(store) = previous.filter(|s| s.shared().is_none()) {
                return Ok(store.clone());
            }
            Ok(Arc::new(QuotaStore::memory(
                shared.memory.clone(),
                shared.metrics.clone(),
            )))
        }
        StoreConfig::Redis {
            url,
            fail_mode,
            key_prefix,
            ..
        } => {
            let settings = LeaseSettings {
                ttl: quotas.lease_ttl,
                max_models_per_owner: quotas.max_models_per_owner,
            };
            let same = previous.filter(|s| {
                s.shared().is_some_and(|(redis, mode)| {
                    mode == *fail_mode && redis.is(url, key_prefix, &settings)
                })
            });
            if let Some(store) = same {
                return Ok(store.clone());
            }
            let redis =
                RedisStore::new(url, key_prefix, shared.clock.clone(), settings).map_err(|_| {
                    ConfigError::invalid("quotas.store.url", "is not a usable redis:// URL")
                })?;
            Ok(Arc::new(QuotaStore::redis(
                redis,
                *fail_mode,
                shared.memory.clone(),
                shared.metrics.clone(),
            )))
        }
    }
}

/// The audit sink `config` names: the previous generation's when the audit
/// settings did not change.
fn audit_sink(
    config: &GatewayConfig,
    previous: Option<&Runtime>,
    shared: &Shared,
) -> Result<AuditSink, ConfigError> {
    if let Some(previous) = previous
        && previous.config.audit == config.audit
    {
        return Ok(previous.audit.clone());
    }
    AuditSink::open(&config.audit, shared.metrics.clone())
        .map_err(|e| ConfigError::invalid("audit.path", format!("cannot open the audit log: {e}")))
}

/// How to reach the model. Each proxy worker thread keeps its own pooled
/// HTTP/1.1 client (see [`Upstream::client`]), so a request and its upstream
/// connection never hop between threads.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Unique per config generation: a reload gets fresh pools.
    generation: u64,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub pool_idle_timeout: Duration,
}

type UpstreamClient = Client<HttpConnector, Body>;

thread_local! {
    static CLIENT: std::cell::RefCell<Option<(u64, UpstreamClient)>> =
        const { std::cell::RefCell::new(None) };
}

impl Upstream {
    /// This thread's pooled client for this generation, built on first use.
    pub fn client(&self) -> UpstreamClient {
        CLIENT.with(|slot| {
            let mut slot = slot.borrow_mut();
            match &*slot {
                Some((generation, client)) if *generation == self.generation => client.clone(),
                _ => {
                    let client = self.build_client();
                    *slot = Some((self.generation, client.clone()));
                    client
                }
            }
        })
    }

    fn build_client(&self) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .timer(TokioTimer::new())
            .build(connector)
    }
}

/// A config generation, ready to serve.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<GatewayConfig>,
    pub verifier: Verifier,
    pub upstream: Upstream,
    pub unauthenticated_paths: HashSet<String>,
    pub policy: Policy,
    pub quota_store: Arc<QuotaStore>,
    /// Where this generation's audit lines go.
    pub audit: AuditSink,
    /// Request-body bytes buffered across all requests (shared by every
    /// generation).
    pub body_budget: Arc<crate::proxy::body_budget::BodyBudget>,
    pub metrics: Arc<Metrics>,
    /// The process's tracer (off unless `tracing.endpoint` is set).
    pub traces: crate::traces::Traces,
    /// Changed settings that take effect only on restart (shown by
    /// `/readyz`).
    pub restart_required: Vec<&'static str>,
    /// Token exchangers by issuer, for the issuers that exchange.
    pub exchangers: std::collections::HashMap<String, Arc<crate::exchange::TokenExchanger>>,
    /// The model an OpenAI engine runs when a request names none.
    pub default_model: Option<crate::canonical::ModelName>,
    /// The models the backend serves (metric labels, per-model budgets).
    pub served_models: Arc<crate::served_models::ServedModels>,
    /// Personal API keys, when `apiKeys.enabled`.
    pub keys: Option<Arc<crate::keys::KeyStore>>,
}

impl Runtime {
    /// Builds a generation from a validated config. Key caches of issuers
    /// whose key source is unchanged are carried over from `previous`, so a
    /// reload never drops loaded keys; new ones start loading at once.
    pub fn build(
        config: GatewayConfig,
        previous: Option<&Runtime>,
        shared: &Shared,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut issuers = Vec::with_capacity(config.issuers.len());
        for (i, issuer) in config.issuers.iter().enumerate() {
            let jwks = reuse_or_create(issuer, previous, shared);
            let policy = IssuerPolicy::new(issuer, jwks)
                .map_err(|m| ConfigError::invalid(format!("issuers[{i}].claims"), m))?;
            issuers.push((issuer.issuer.clone(), policy));
        }
        let verifier = Verifier::new(
            issuers,
            config.limits.token_cache_entries,
            config.identity.forward_claims.clone(),
            shared.metrics.clone(),
        );
        let upstream = build_upstream(&config)?;
        let quota_store = quota_store(&config, previous, shared)?;
        let audit = audit_sink(&config, previous, shared)?;
        let exchangers = config
            .issuers
            .iter()
            .filter_map(|issuer| {
                let exchange = issuer.token_exchange.clone()?;
                // An unchanged exchange keeps its cache across reloads.
                let reused = previous
                    .and_then(|p| p.exchangers.get(&issuer.issuer))
                    .filter(|e| e.config() == &exchange)
                    .cloned();
                Some((
                    issuer.issuer.clone(),
                    reused.unwrap_or_else(|| {
                        Arc::new(crate::exchange::TokenExchanger::new(
                            &issuer.issuer,
                            exchange,
                            shared.idp.clone(),
                        ))
                    }),
                ))
            })
            .collect();
        let default_model = config.upstream.default_model()?;
        let served_models = reuse_served_models(&config, previous)?;
        let keys = key_store(&config, &quota_store, shared)?;
        Ok(Self {
            keys,
            exchangers,
            default_model,
            served_models,
            policy: Policy::new(
                &config.access.effective_rules(),
                config.access.allow_unknown_endpoints,
                config.upstream.engine,
            )
            .deny_agents(&config.access.denied_agents),
            unauthenticated_paths: config.unauthenticated_paths.iter().cloned().collect(),
            config: Arc::new(config),
            verifier,
            upstream,
            quota_store,
            audit,
            body_budget: shared.body_budget.clone(),
            restart_required: previous
                .map(|p| p.restart_required.clone())
                .unwrap_or_default(),
            metrics: shared.metrics.clone(),
            traces: shared.traces.clone(),
        })
    }
}

/// The API key store `config` enables, on the Redis quota store's
/// connection. Built afresh on each reload: its cache is short-lived by
/// design, and the records live in Redis.
fn key_store(
    config: &GatewayConfig,
    quota_store: &QuotaStore,
    shared: &Shared,
) -> Result<Option<Arc<crate::keys::KeyStore>>, ConfigError> {
    if !config.api_keys.enabled {
        return Ok(None);
    }
    let Some((redis, _)) = quota_store.shared() else {
        return Err(ConfigError::invalid(
            "apiKeys.enabled",
            "needs quotas.store type redis",
        ));
    };
    // Keys are bound to the backend's name; standalone, to the store's
    // key prefix (the backend's namespace in Redis).
    let backend = match (&config.metrics.backend, &config.quotas.store) {
        (Some(backend), _) => backend.clone(),
        (None, StoreConfig::Redis { key_prefix, .. }) => key_prefix.clone(),
        (None, StoreConfig::Memory) => String::new(),
    };
    Ok(Some(Arc::new(crate::keys::KeyStore::new(
        &config.api_keys,
        crate::keys::records::Records::redis(redis.clone()),
        backend,
        config.upstream.engine,
        config.limits.token_cache_entries,
        shared.clock.clone(),
    ))))
}

/// The served-model list, carried over from `previous` when the model
/// server and the list's source are unchanged (a reload keeps what was read).
fn reuse_served_models(
    config: &GatewayConfig,
    previous: Option<&Runtime>,
) -> Result<Arc<crate::served_models::ServedModels>, ConfigError> {
    let upstream = &config.upstream;
    if let Some(previous) = previous {
        let was = &previous.config.upstream;
        if was.url == upstream.url
            && was.engine == upstream.engine
            && was.served_models == upstream.served_models
            && was.model_list_refresh == upstream.model_list_refresh
        {
            return Ok(previous.served_models.clone());
        }
    }
    Ok(Arc::new(crate::served_models::ServedModels::new(
        upstream.engine,
        upstream.served_models()?,
        upstream.model_list_refresh,
    )))
}

fn key_source(issuer: &IssuerConfig) -> KeySource {
    if let Some(jwks) = &issuer.jwks {
        return KeySource::Inline(jwks.to_string());
    }
    match (&issuer.jwks_file, &issuer.jwks_uri) {
        (Some(path), _) => KeySource::File(path.clone()),
        (None, Some(uri)) => KeySource::Uri(uri.clone()),
        (None, None) => KeySource::Discovery {
            issuer: issuer.issuer.clone(),
        },
    }
}

fn reuse_or_create(
    issuer: &IssuerConfig,
    previous: Option<&Runtime>,
    shared: &Shared,
) -> Arc<JwksCache> {
    let source = key_source(issuer);
    let reusable = previous.and_then(|p| {
        p.verifier
            .key_caches()
            .find(|c| c.issuer() == issuer.issuer && *c.source() == source)
            .cloned()
    });
    if let Some(cache) = reusable {
        return cache;
    }
    let cache = Arc::new(JwksCache::new(
        issuer.issuer.clone(),
        source,
        issuer.jwks_refresh_interval,
        issuer.jwks_cooldown,
        shared.idp.clone(),
        shared.metrics.clone(),
    ));
    cache.spawn_refresher();
    cache
}

fn build_upstream(config: &GatewayConfig) -> Result<Upstream, ConfigError> {
    let uri: http::Uri = config
        .upstream
        .url
        .parse()
        .map_err(|e| ConfigError::invalid("upstream.url", format!("not a URL: {e}")))?;
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        return Err(ConfigError::invalid(
            "upstream.url",
            "needs a scheme and a host",
        ));
    };
    static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    Ok(Upstream {
        generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        scheme,
        authority,
        connect_timeout: config.upstream.connect_timeout,
        response_header_timeout: config.upstream.response_header_timeout,
        pool_idle_timeout: config.upstream.pool_idle_timeout,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::claims::Preset;

    const ISSUER: &str = "https://idp.test/realms/attach";

    fn config(issuer: &str, jwks: &std::path::Path) -> GatewayConfig {
        let mut issuer = IssuerConfig::new(issuer, vec!["attach-gateway".into()], Preset::Keycloak);
        issuer.jwks_file = Some(jwks.to_owned());
        let mut config = GatewayConfig::new(vec![issuer]);
        config.upstream.url = "http://127.0.0.1:11434".into();
        config
    }

    fn key_cache(runtime: &Runtime) -> Arc<JwksCache> {
        let mut caches = runtime.verifier.key_caches();
        let cache = caches.next().unwrap().clone();
        assert!(caches.next().is_none());
        cache
    }

    #[tokio::test]
    async fn a_reload_keeps_the_loaded_keys_of_an_unchanged_issuer() {
        // A new key cache starts empty: until its first fetch the issuer's
        // requests get 503 and /readyz fails. A reload that changes nothing
        // about an issuer must not open that gap.
        let dir = tempfile::tempdir().unwrap();
        let (file, other_file) = (dir.path().join("a.json"), dir.path().join("b.json"));
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let jwks = serde_json::json!({"keys": [jwk]}).to_string();
        std::fs::write(&file, &jwks).unwrap();
        std::fs::write(&other_file, &jwks).unwrap();
        let shared = Shared::new();
        let first = Runtime::build(config(ISSUER, &file), None, &shared).unwrap();
        key_cache(&first).refresh("initial").await.unwrap();
        assert!(first.verifier.is_ready());

        let mut changed_elsewhere = config(ISSUER, &file);
        changed_elsewhere.access.allow_unknown_endpoints = true;
        let second = Runtime::build(changed_elsewhere, Some(&first), &shared).unwrap();
        assert!(Arc::ptr_eq(&key_cache(&first), &key_cache(&second)));
        assert!(second.verifier.is_ready(), "ready at once, keys kept");

        // Another issuer with the same key file, or the same issuer with
        // another key file, gets keys of its own.
        for (issuer, jwks) in [("https://other.test/", &file), (ISSUER, &other_file)] {
            let third = Runtime::build(config(issuer, jwks), Some(&second), &shared).unwrap();
            assert!(
                !Arc::ptr_eq(&key_cache(&second), &key_cache(&third)),
                "{issuer} {}",
                jwks.display()
            );
            assert_eq!(key_cache(&third).issuer(), issuer);
        }
    }

    #[tokio::test]
    async fn keys_given_in_the_config_load_and_new_keys_come_with_a_new_config() {
        let jwk = |kid: &str| {
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})
        };
        let inline = |kids: &[&str]| {
            let mut config = config(ISSUER, std::path::Path::new("/unused"));
            config.issuers[0].jwks_file = None;
            config.issuers[0].jwks = Some(serde_json::json!({
                "keys": kids.iter().map(|k| jwk(k)).collect::<Vec<_>>()
            }));
            config
        };
        let shared = Shared::new();
        let first = Runtime::build(inline(&["k1"]), None, &shared).unwrap();
        let keys = key_cache(&first).refresh("initial").await.unwrap();
        assert_eq!(keys, 1);
        assert!(first.verifier.is_ready());
        // The same keys: the same cache. Rotated keys: a cache of their own.
        let same = Runtime::build(inline(&["k1"]), Some(&first), &shared).unwrap();
        assert!(Arc::ptr_eq(&key_cache(&first), &key_cache(&same)));
        let rotated = Runtime::build(inline(&["k1", "k2"]), Some(&same), &shared).unwrap();
        assert!(!Arc::ptr_eq(&key_cache(&same), &key_cache(&rotated)));
        assert_eq!(key_cache(&rotated).refresh("initial").await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_model_is_closing_for_idleness_is_never_reused() {
        // With the former 90s pool timeout, the second request went out on
        // the connection the server was closing: a 502 to the caller.
        let (addr, dropped) = crate::testkit::keep_alive_server().await;
        let mut config = GatewayConfig::new(Vec::new());
        config.upstream.url = format!("http://{addr}");
        let upstream = build_upstream(&config).unwrap();
        let get = || {
            let uri = format!("http://{addr}/api/tags");
            upstream
                .client()
                .request(http::Request::get(uri).body(crate::body::empty()).unwrap())
        };
        assert_eq!(get().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(4_200)).await;
        let second = get().await;
        assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(second.unwrap().status(), 200);
    }
}
