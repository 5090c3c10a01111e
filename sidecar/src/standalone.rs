//! Standalone mode: the gateway configured from the environment variables
//! users of the earlier Python gateway already know, without a config file.
//!
//! | variable | meaning |
//! |---|---|
//! | `OIDC_ISSUER` | the issuer URL (required) |
//! | `OIDC_AUD` | accepted audiences, comma-separated, any match (required) |
//! | `AUTH_BACKEND` | claim-mapping preset: auth0, okta, descope, keycloak, entra, generic (default generic) |
//! | `OIDC_JWKS_URI` | the JWKS URL, skipping discovery |
//! | `OIDC_ALGORITHMS` | allowed algorithms, comma-separated (default: every asymmetric one) |
//! | `OIDC_LEEWAY_SECONDS` | clock skew allowed (default 60) |
//! | `OIDC_REQUIRED_SCOPES` | scopes every token must carry, comma-separated |
//! | `OIDC_USER_CLIENTS` | the clients people sign in through, comma-separated (a person's token held by another client is that client acting for them) |
//! | `OIDC_ALLOW_INSECURE_HTTP` | allow a non-loopback `http://` issuer (testing only) |
//! | `AUTH0_CLAIM_NAMESPACE` | Auth0 custom-claim namespace, e.g. `https://example.com` |
//! | `UPSTREAM_URL` | the model (default `http://127.0.0.1:11434`); `--upstream` wins |
//! | `UPSTREAM_ENGINE` | `ollama` (default), `vllm` or `openai`: how bodies, model names and endpoints are read |
//! | `DEFAULT_MODEL` | for `vllm`/`openai`: the model served when a request names none |
//! | `SERVED_MODELS` | the models served, comma-separated (default: read from the engine's list) |
//! | `TRUSTED_PROXIES` | CIDRs whose `X-Forwarded-*`/`Forwarded` headers are kept, comma-separated |
//! | `FORWARD_AUTHORIZATION` | also forward the caller's `Authorization` header |
//! | `UNAUTHENTICATED_PATHS` | comma-separated paths served without a token (GET/HEAD) |
//! | `MAX_TOKENS_PER_MIN` | LLM tokens (prompt + completion) per user per minute |
//! | `MAX_REQUESTS_PER_MIN` | requests per user per minute |
//! | `MAX_CONCURRENT_REQUESTS` | requests in flight per user |
//! | `REDIS_URL` | keep quota counters in Redis, shared by replicas (default: in memory) |
//! | `QUOTA_FAIL_MODE` | `closed` (503, default) or `open` (local limit) while Redis is down |
//! | `ENABLE_DESCOPE_EXCHANGE` | exchange tokens at Descope (RFC 8693) before forwarding |
//! | `DESCOPE_PROJECT_ID`, `DESCOPE_CLIENT_ID`, `DESCOPE_CLIENT_SECRET` | the Descope project (its discovery names the token endpoint) and the exchanging client |
//! | `TOKEN_EXCHANGE_CLIENT_ID`, `TOKEN_EXCHANGE_CLIENT_SECRET` | generic RFC 8693 exchange at the issuer's token endpoint |
//! | `TOKEN_EXCHANGE_ENDPOINT` | the token endpoint (default: from the issuer's discovery) |
//! | `TOKEN_EXCHANGE_AUDIENCE`, `TOKEN_EXCHANGE_RESOURCE`, `TOKEN_EXCHANGE_SCOPES` | what the downstream token is for |
//! | `TOKEN_EXCHANGE_HEADER` | the header the downstream token goes in (default `Authorization`) |
//! | `TOKEN_EXCHANGE_SUBJECT_TOKEN_TYPE` | `access_token` (default) or `jwt`: what the inbound token is to the IdP |
//! | `TOKEN_EXCHANGE_SUBJECT_ISSUER` | the name the IdP knows the inbound token's issuer by (`subject_issuer`) |
//! | `API_KEYS_SIGNING_KEY_FILE` | turn personal API keys on, sealed with the key in this file (32 bytes or more; needs `REDIS_URL`) |
//! | `API_KEYS_MAX_LIFETIME` | the longest a key may live (default `90d`) |
//! | `API_KEYS_ADMIN_GROUPS` | groups whose members may list and revoke every key, comma-separated |
//!
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | send traces to this OTLP/HTTP collector (off when unset) |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | must be `http/protobuf` (the default) when set |
//! | `OTEL_TRACES_SAMPLER_ARG` | the share of new traces kept, 0 to 1 (default 1) |
//!
//! `--port` (default 8080) and `--admin-port` (default 9090) set the ports.

use std::collections::HashMap;
use std::time::Duration;

use crate::claims::{ClaimMapping, Preset};
use crate::config::{Algorithm, ConfigError, GatewayConfig, IssuerConfig};
use crate::quota::QuotaLimit;
use crate::quota::store::{FailMode, StoreConfig};
use crate::reload::Overrides;

pub const OIDC_ISSUER: &str = "OIDC_ISSUER";
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
pub const OIDC_AUD: &str = "OIDC_AUD";
pub const AUTH_BACKEND: &str = "AUTH_BACKEND";
pub const OIDC_JWKS_URI: &str = "OIDC_JWKS_URI";
pub const OIDC_ALGORITHMS: &str = "OIDC_ALGORITHMS";
pub const OIDC_LEEWAY_SECONDS: &str = "OIDC_LEEWAY_SECONDS";
pub const OIDC_REQUIRED_SCOPES: &str = "OIDC_REQUIRED_SCOPES";
pub const OIDC_USER_CLIENTS: &str = "OIDC_USER_CLIENTS";
pub const OIDC_ALLOW_INSECURE_HTTP: &str = "OIDC_ALLOW_INSECURE_HTTP";
pub const AUTH0_CLAIM_NAMESPACE: &str = "AUTH0_CLAIM_NAMESPACE";
pub const UPSTREAM_URL: &str = "UPSTREAM_URL";
pub const UPSTREAM_ENGINE: &str = "UPSTREAM_ENGINE";
pub const DEFAULT_MODEL: &str = "DEFAULT_MODEL";
pub const SERVED_MODELS: &str = "SERVED_MODELS";
pub const TRUSTED_PROXIES: &str = "TRUSTED_PROXIES";
pub const FORWARD_AUTHORIZATION: &str = "FORWARD_AUTHORIZATION";
pub const UNAUTHENTICATED_PATHS: &str = "UNAUTHENTICATED_PATHS";
pub const MAX_TOKENS_PER_MIN: &str = "MAX_TOKENS_PER_MIN";
pub const MAX_REQUESTS_PER_MIN: &str = "MAX_REQUESTS_PER_MIN";
pub const MAX_CONCURRENT_REQUESTS: &str = "MAX_CONCURRENT_REQUESTS";
pub const REDIS_URL: &str = "REDIS_URL";
pub const QUOTA_FAIL_MODE: &str = "QUOTA_FAIL_MODE";
pub const ENABLE_DESCOPE_EXCHANGE: &str = "ENABLE_DESCOPE_EXCHANGE";
pub const DESCOPE_PROJECT_ID: &str = "DESCOPE_PROJECT_ID";
pub const DESCOPE_CLIENT_ID: &str = "DESCOPE_CLIENT_ID";
pub const DESCOPE_CLIENT_SECRET: &str = "DESCOPE_CLIENT_SECRET";
pub const TOKEN_EXCHANGE_CLIENT_ID: &str = "TOKEN_EXCHANGE_CLIENT_ID";
pub const TOKEN_EXCHANGE_CLIENT_SECRET: &str = "TOKEN_EXCHANGE_CLIENT_SECRET";
pub const TOKEN_EXCHANGE_ENDPOINT: &str = "TOKEN_EXCHANGE_ENDPOINT";
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "TOKEN_EXCHANGE_AUDIENCE";
pub const TOKEN_EXCHANGE_RESOURCE: &str = "TOKEN_EXCHANGE_RESOURCE";
pub const TOKEN_EXCHANGE_SCOPES: &str = "TOKEN_EXCHANGE_SCOPES";
pub const TOKEN_EXCHANGE_HEADER: &str = "TOKEN_EXCHANGE_HEADER";
pub const TOKEN_EXCHANGE_SUBJECT_TOKEN_TYPE: &str = "TOKEN_EXCHANGE_SUBJECT_TOKEN_TYPE";
pub const TOKEN_EXCHANGE_SUBJECT_ISSUER: &str = "TOKEN_EXCHANGE_SUBJECT_ISSUER";
pub const API_KEYS_SIGNING_KEY_FILE: &str = "API_KEYS_SIGNING_KEY_FILE";
pub const API_KEYS_MAX_LIFETIME: &str = "API_KEYS_MAX_LIFETIME";
pub const API_KEYS_ADMIN_GROUPS: &str = "API_KEYS_ADMIN_GROUPS";

/// Personal API keys, on when the environment names a signing key file.
fn api_keys_from_env(env: &impl Env) -> Result<crate::keys::ApiKeysConfig, ConfigError> {
    let mut keys = crate::keys::ApiKeysConfig::default();
    let Some(file) = non_empty(env, API_KEYS_SIGNING_KEY_FILE) else {
        for unused in [API_KEYS_MAX_LIFETIME, API_KEYS_ADMIN_GROUPS] {
            if non_empty(env, unused).is_some() {
                return Err(ConfigError::invalid(
                    unused,
                    format!("has no effect without {API_KEYS_SIGNING_KEY_FILE}"),
                ));
            }
        }
        return Ok(keys);
    };
    keys.enabled = true;
    keys.signing_key_file = Some(file.into());
    if let Some(max) = non_empty(env, API_KEYS_MAX_LIFETIME) {
        keys.max_lifetime = humantime::parse_duration(&max).map_err(|_| {
            ConfigError::invalid(
                API_KEYS_MAX_LIFETIME,
                format!("{max:?} is not a duration such as 90d"),
            )
        })?;
        keys.default_lifetime = keys.default_lifetime.min(keys.max_lifetime);
    }
    keys.admins.groups = list(env, API_KEYS_ADMIN_GROUPS);
    Ok(keys)
}

/// The token exchange the environment asks for, if any.
fn exchange_from_env(
    env: &impl Env,
) -> Result<Option<crate::exchange::TokenExchangeConfig>, ConfigError> {
    let required = |key: &str| {
        non_empty(env, key)
            .ok_or_else(|| ConfigError::invalid(key, "is required for token exchange"))
    };
    let mut exchange = if flag(env, ENABLE_DESCOPE_EXCHANGE)? {
        let project = required(DESCOPE_PROJECT_ID)?;
        let mut exchange = crate::exchange::TokenExchangeConfig::new(
            required(DESCOPE_CLIENT_ID)?,
            required(DESCOPE_CLIENT_SECRET)?,
        );
        exchange.discovery_issuer = Some(format!("https://api.descope.com/{project}"));
        exchange
    } else if let Some(client_id) = non_empty(env, TOKEN_EXCHANGE_CLIENT_ID) {
        crate::exchange::TokenExchangeConfig::new(
            client_id,
            required(TOKEN_EXCHANGE_CLIENT_SECRET)?,
        )
    } else {
        return Ok(None);
    };
    exchange.token_endpoint = non_empty(env, TOKEN_EXCHANGE_ENDPOINT);
    exchange.audience = non_empty(env, TOKEN_EXCHANGE_AUDIENCE);
    exchange.resource = non_empty(env, TOKEN_EXCHANGE_RESOURCE);
    exchange.scopes = list(env, TOKEN_EXCHANGE_SCOPES);
    if let Some(header) = non_empty(env, TOKEN_EXCHANGE_HEADER) {
        exchange.header = header.to_ascii_lowercase();
    }
    exchange.subject_token_type = match non_empty(env, TOKEN_EXCHANGE_SUBJECT_TOKEN_TYPE).as_deref()
    {
        None | Some("access_token") => crate::exchange::SubjectTokenType::AccessToken,
        Some("jwt") => crate::exchange::SubjectTokenType::Jwt,
        Some(other) => {
            return Err(ConfigError::invalid(
                TOKEN_EXCHANGE_SUBJECT_TOKEN_TYPE,
                format!("{other:?} is not access_token or jwt"),
            ));
        }
    };
    exchange.subject_issuer = non_empty(env, TOKEN_EXCHANGE_SUBJECT_ISSUER);
    Ok(Some(exchange))
}

/// Where environment variables come from: the process, or a map in tests.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).map(|v| (*v).to_owned())
    }
}

fn non_empty(env: &impl Env, key: &str) -> Option<String> {
    env.var(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn list(env: &impl Env, key: &str) -> Vec<String> {
    non_empty(env, key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn flag(env: &impl Env, key: &str) -> Result<bool, ConfigError> {
    match non_empty(env, key)
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(other) => Err(ConfigError::invalid(
            key,
            format!("{other:?} is not true or false"),
        )),
    }
}

fn count(env: &impl Env, key: &str) -> Result<Option<u64>, ConfigError> {
    non_empty(env, key)
        .map(|v| match v.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError::invalid(
                key,
                format!("{v:?} is not a positive whole number"),
            )),
        })
        .transpose()
}

/// Builds a config from the environment; `overrides` are the CLI flags.
pub fn config_from_env(
    env: &impl Env,
    overrides: &Overrides,
) -> Result<GatewayConfig, ConfigError> {
    let issuer = non_empty(env, OIDC_ISSUER).ok_or_else(|| {
        ConfigError::invalid(
            OIDC_ISSUER,
            "is required: set it to your IdP's issuer URL, or pass --config FILE",
        )
    })?;
    let audiences = list(env, OIDC_AUD);
    if audiences.is_empty() {
        return Err(ConfigError::invalid(
            OIDC_AUD,
            "is required: the audience your IdP puts in access tokens for this API \
             (comma-separated for several); tokens meant for other services must not pass",
        ));
    }
    let preset = match non_empty(env, AUTH_BACKEND) {
        None => Preset::Generic,
        Some(name) => name
            .parse::<Preset>()
            .map_err(|e| ConfigError::invalid(AUTH_BACKEND, e))?,
    };
    let mut issuer = IssuerConfig::new(issuer, audiences, preset);
    issuer.jwks_uri = non_empty(env, OIDC_JWKS_URI);
    let algorithms = list(env, OIDC_ALGORITHMS);
    if !algorithms.is_empty() {
        issuer.algorithms = algorithms
            .iter()
            .map(|name| {
                Algorithm::parse(name).ok_or_else(|| {
                    ConfigError::invalid(
                        OIDC_ALGORITHMS,
                        format!(
                            "{name:?} is not an allowed algorithm (RS*, PS*, ES256, ES384, EdDSA)"
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(secs) = non_empty(env, OIDC_LEEWAY_SECONDS) {
        let secs: u64 = secs.parse().map_err(|_| {
            ConfigError::invalid(OIDC_LEEWAY_SECONDS, "must be a whole number of seconds")
        })?;
        issuer.leeway = Duration::from_secs(secs);
    }
    issuer.required_scopes = list(env, OIDC_REQUIRED_SCOPES);
    issuer.user_clients = list(env, OIDC_USER_CLIENTS);
    issuer.allow_insecure_http = flag(env, OIDC_ALLOW_INSECURE_HTTP)?;
    issuer.claims = ClaimMapping {
        namespace: non_empty(env, AUTH0_CLAIM_NAMESPACE),
        ..ClaimMapping::preset(preset)
    };
    issuer.token_exchange = exchange_from_env(env)?;

    let mut config = GatewayConfig::new(vec![issuer]);
    if let Some(url) = non_empty(env, UPSTREAM_URL) {
        config.upstream.url = url;
    }
    if let Some(engine) = non_empty(env, UPSTREAM_ENGINE) {
        config.upstream.engine =
            serde_json::from_value(serde_json::Value::String(engine.to_ascii_lowercase()))
                .map_err(|_| {
                    ConfigError::invalid(
                        UPSTREAM_ENGINE,
                        format!("{engine:?} is not ollama, vllm or openai"),
                    )
                })?;
    }
    config.upstream.default_model = non_empty(env, DEFAULT_MODEL);
    config.upstream.served_models = list(env, SERVED_MODELS);
    config.trusted_proxies = list(env, TRUSTED_PROXIES)
        .iter()
        .map(|cidr| {
            cidr.parse().map_err(|_| {
                ConfigError::invalid(TRUSTED_PROXIES, format!("{cidr:?} is not a CIDR"))
            })
        })
        .collect::<Result<_, _>>()?;
    config.identity.forward_authorization = flag(env, FORWARD_AUTHORIZATION)?;
    config.unauthenticated_paths = list(env, UNAUTHENTICATED_PATHS);
    let per_user = QuotaLimit {
        tokens_per_minute: count(env, MAX_TOKENS_PER_MIN)?,
        requests_per_minute: count(env, MAX_REQUESTS_PER_MIN)?,
        concurrent: count(env, MAX_CONCURRENT_REQUESTS)?,
        ..QuotaLimit::named("per-user")
    };
    if !per_user.is_empty() {
        config.quotas.limits.push(per_user);
    }
    if let Some(url) = non_empty(env, REDIS_URL) {
        let fail_mode = match non_empty(env, QUOTA_FAIL_MODE).as_deref() {
            None | Some("closed") => FailMode::Closed,
            Some("open") => FailMode::Open,
            Some(other) => {
                return Err(ConfigError::invalid(
                    QUOTA_FAIL_MODE,
                    format!("{other:?} is neither closed nor open"),
                ));
            }
        };
        config.quotas.store = StoreConfig::Redis {
            url,
            url_file: None,
            fail_mode,
            key_prefix: "attach:quota:".into(),
        };
    }
    config.tracing = tracing_from_env(env)?;
    config.api_keys = api_keys_from_env(env)?;
    overrides.apply(&mut config);
    config.read_files()?;
    config.validate()?;
    Ok(config)
}

/// The OpenTelemetry variables the gateway honours; one it cannot honour
/// is an error, not a silent default.
fn tracing_from_env(env: &impl Env) -> Result<crate::traces::TracingConfig, ConfigError> {
    let mut tracing = crate::traces::TracingConfig {
        endpoint: non_empty(env, OTEL_EXPORTER_OTLP_ENDPOINT),
        ..crate::traces::TracingConfig::default()
    };
    if let Some(protocol) = non_empty(env, OTEL_EXPORTER_OTLP_PROTOCOL)
        && protocol != "http/protobuf"
    {
        return Err(ConfigError::invalid(
            OTEL_EXPORTER_OTLP_PROTOCOL,
            format!("{protocol:?}: only http/protobuf is supported (OTLP/HTTP, port 4318)"),
        ));
    }
    if let Some(ratio) = non_empty(env, OTEL_TRACES_SAMPLER_ARG) {
        tracing.sample_ratio = ratio.parse().map_err(|_| {
            ConfigError::invalid(OTEL_TRACES_SAMPLER_ARG, "must be a number from 0 to 1")
        })?;
    }
    Ok(tracing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_seed_variables_configure_a_gateway() {
        let e = env(&[
            (OIDC_ISSUER, "https://dev-123.us.auth0.com/"),
            (OIDC_AUD, "ollama-local, other-api"),
            (AUTH_BACKEND, "auth0"),
        ]);
        let config = config_from_env(&e, &Overrides::default()).unwrap();
        assert!(config.quotas.limits.is_empty(), "no quota unless asked");
        let issuer = &config.issuers[0];
        assert_eq!(issuer.issuer, "https://dev-123.us.auth0.com/");
        assert_eq!(issuer.audiences, ["ollama-local", "other-api"]);
        assert_eq!(issuer.claims.preset, Preset::Auth0);
        assert_eq!(config.upstream.url, "http://127.0.0.1:11434");
        assert_eq!(config.listen.port, 8080);
    }

    #[test]
    fn the_api_key_variables_turn_keys_on_and_what_cannot_apply_is_refused() {
        let key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key.path(), format!("{}\n", "k".repeat(32))).unwrap();
        let path: &'static str =
            Box::leak(key.path().to_string_lossy().into_owned().into_boxed_str());
        let base = [
            (OIDC_ISSUER, "https://dev-123.us.auth0.com/"),
            (OIDC_AUD, "ollama-local"),
            (REDIS_URL, "redis://redis:6379/"),
        ];
        let off = config_from_env(&env(&base), &Overrides::default()).unwrap();
        assert!(!off.api_keys.enabled, "off unless a signing key is named");
        let mut on = base.to_vec();
        on.extend([
            (API_KEYS_SIGNING_KEY_FILE, path),
            (API_KEYS_MAX_LIFETIME, "7d"),
            (API_KEYS_ADMIN_GROUPS, "ops, sec"),
        ]);
        let config = config_from_env(&env(&on), &Overrides::default()).unwrap();
        let keys = &config.api_keys;
        assert!(keys.enabled);
        assert_eq!(
            keys.signing_key,
            "k".repeat(32).as_bytes(),
            "read, its newline trimmed"
        );
        assert_eq!(keys.max_lifetime, Duration::from_secs(7 * 86_400));
        assert_eq!(
            keys.default_lifetime,
            Duration::from_secs(7 * 86_400),
            "at most the maximum"
        );
        assert_eq!(keys.admins.groups, ["ops", "sec"]);
        let refused = |pairs: &[(&'static str, &'static str)]| {
            config_from_env(&env(pairs), &Overrides::default())
                .unwrap_err()
                .to_string()
        };
        let without_file = [base[0], base[1], base[2], (API_KEYS_ADMIN_GROUPS, "ops")];
        assert!(refused(&without_file).contains(API_KEYS_ADMIN_GROUPS));
        let without_redis = [base[0], base[1], (API_KEYS_SIGNING_KEY_FILE, path)];
        assert!(refused(&without_redis).contains("apiKeys.enabled"));
        let bad_lifetime = [
            base[0],
            base[1],
            base[2],
            (API_KEYS_SIGNING_KEY_FILE, path),
            (API_KEYS_MAX_LIFETIME, "a while"),
        ];
        assert!(refused(&bad_lifetime).contains(API_KEYS_MAX_LIFETIME));
        let short = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(short.path(), "too short").unwrap();
        let short_path: &'static str =
            Box::leak(short.path().to_string_lossy().into_owned().into_boxed_str());
        let short_key = [
            base[0],
            base[1],
            base[2],
            (API_KEYS_SIGNING_KEY_FILE, short_path),
        ];
        assert!(refused(&short_key).contains("fewer than 32 bytes"));
    }

    #[test]
    fn the_opentelemetry_variables_turn_traces_on_and_what_cannot_apply_is_refused() {
        let base = [
            (OIDC_ISSUER, "https://dev-123.us.auth0.com/"),
            (OIDC_AUD, "ollama-local"),
        ];
        let off = config_from_env(&env(&base), &Overrides::default()).unwrap();
        assert_eq!(off.tracing.endpoint, None, "traces are off by default");
        let mut on = base.to_vec();
        on.extend([
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
            (OTEL_TRACES_SAMPLER_ARG, "0.25"),
        ]);
        let config = config_from_env(&env(&on), &Overrides::default()).unwrap();
        assert_eq!(
            config.tracing.endpoint.as_deref(),
            Some("http://collector:4318")
        );
        assert!((config.tracing.sample_ratio - 0.25).abs() < f64::EPSILON);
        for (key, value, named) in [
            (
                OTEL_EXPORTER_OTLP_PROTOCOL,
                "grpc",
                OTEL_EXPORTER_OTLP_PROTOCOL,
            ),
            (OTEL_TRACES_SAMPLER_ARG, "half", OTEL_TRACES_SAMPLER_ARG),
            (OTEL_TRACES_SAMPLER_ARG, "2", "sampleRatio"),
            (OTEL_EXPORTER_OTLP_ENDPOINT, "collector:4318", "endpoint"),
        ] {
            let mut bad = base.to_vec();
            bad.push((key, value));
            let err = config_from_env(&env(&bad), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(named), "{key}={value}: {err}");
        }
    }

    #[test]
    fn user_clients_and_a_namespace_come_from_the_environment_checked() {
        let e = env(&[
            (OIDC_ISSUER, "https://dev-123.us.auth0.com/"),
            (OIDC_AUD, "ollama-local"),
            (AUTH_BACKEND, "auth0"),
            (OIDC_USER_CLIENTS, "web-app, cli"),
            (AUTH0_CLAIM_NAMESPACE, "https://example.com"),
        ]);
        let config = config_from_env(&e, &Overrides::default()).unwrap();
        assert_eq!(config.issuers[0].user_clients, ["web-app", "cli"]);
        // A namespace without a scheme would be split on its dots: refused.
        let bad = env(&[
            (OIDC_ISSUER, "https://dev-123.us.auth0.com/"),
            (OIDC_AUD, "ollama-local"),
            (AUTH_BACKEND, "auth0"),
            (AUTH0_CLAIM_NAMESPACE, "example.com"),
        ]);
        let err = config_from_env(&bad, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("namespace"), "{err}");
    }

    #[test]
    fn the_engine_and_its_models_come_from_the_environment() {
        let e = env(&[
            (OIDC_ISSUER, "https://idp.example.com/"),
            (OIDC_AUD, "llm"),
            (UPSTREAM_ENGINE, "vLLM"),
            (DEFAULT_MODEL, "meta-llama/Llama-3.1-8B"),
            (SERVED_MODELS, "meta-llama/Llama-3.1-8B, my-lora"),
            (TRUSTED_PROXIES, "10.0.0.0/8, 192.168.1.1/32"),
        ]);
        let config = config_from_env(&e, &Overrides::default()).unwrap();
        assert_eq!(config.upstream.engine, crate::config::Engine::Vllm);
        assert_eq!(
            config.upstream.default_model.as_deref(),
            Some("meta-llama/Llama-3.1-8B")
        );
        assert_eq!(config.upstream.served_models.len(), 2);
        assert_eq!(config.trusted_proxies.len(), 2);
        for (key, value) in [
            (UPSTREAM_ENGINE, "tgi"),
            (TRUSTED_PROXIES, "10.0.0.0/33"),
            (DEFAULT_MODEL, " spaced "),
        ] {
            let mut bad = e.clone();
            bad.insert(key, value);
            if key == DEFAULT_MODEL {
                // Trimmed by the reader: still valid.
                assert!(config_from_env(&bad, &Overrides::default()).is_ok());
                continue;
            }
            let err = config_from_env(&bad, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        // Ollama has no default model: asking for one is an error, not ignored.
        let mut ollama = e.clone();
        ollama.insert(UPSTREAM_ENGINE, "ollama");
        ollama.remove(SERVED_MODELS);
        let err = config_from_env(&ollama, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream.defaultModel"), "{err}");
    }

    #[test]
    fn the_descope_exchange_variables_turn_exchange_on() {
        let e = env(&[
            (OIDC_ISSUER, "https://api.descope.com/P2abc"),
            (OIDC_AUD, "P2abc"),
            (AUTH_BACKEND, "descope"),
            (ENABLE_DESCOPE_EXCHANGE, "true"),
            (DESCOPE_PROJECT_ID, "P2abc"),
            (DESCOPE_CLIENT_ID, "gateway"),
            (DESCOPE_CLIENT_SECRET, "s3cret"),
            (TOKEN_EXCHANGE_AUDIENCE, "llm-downstream"),
        ]);
        let config = config_from_env(&e, &Overrides::default()).unwrap();
        let exchange = config.issuers[0].token_exchange.as_ref().unwrap();
        assert_eq!(
            exchange.discovery_issuer.as_deref(),
            Some("https://api.descope.com/P2abc"),
            "the endpoint comes from the project's discovery"
        );
        assert_eq!(exchange.client_id, "gateway");
        assert_eq!(exchange.audience.as_deref(), Some("llm-downstream"));
        assert_eq!(exchange.header, "authorization");
        // Without a secret: a clear error, naming the variable.
        let e = env(&[
            (OIDC_ISSUER, "https://api.descope.com/P2abc"),
            (OIDC_AUD, "P2abc"),
            (ENABLE_DESCOPE_EXCHANGE, "true"),
            (DESCOPE_PROJECT_ID, "P2abc"),
            (DESCOPE_CLIENT_ID, "gateway"),
        ]);
        let err = config_from_env(&e, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(DESCOPE_CLIENT_SECRET), "{err}");
        // A workload's token, exchanged at an IdP that federates its issuer.
        let e = env(&[
            (OIDC_ISSUER, "https://kubernetes.default.svc.cluster.local"),
            (OIDC_AUD, "attach.dev/models/chat"),
            (TOKEN_EXCHANGE_CLIENT_ID, "gateway"),
            (TOKEN_EXCHANGE_CLIENT_SECRET, "s3cret"),
            (TOKEN_EXCHANGE_ENDPOINT, "https://idp.example/token"),
            (TOKEN_EXCHANGE_AUDIENCE, "llm-downstream"),
            (TOKEN_EXCHANGE_SUBJECT_TOKEN_TYPE, "jwt"),
            (TOKEN_EXCHANGE_SUBJECT_ISSUER, "cluster"),
        ]);
        let config = config_from_env(&e, &Overrides::default()).unwrap();
        let exchange = config.issuers[0].token_exchange.as_ref().unwrap();
        assert_eq!(
            exchange.subject_token_type,
            crate::exchange::SubjectTokenType::Jwt
        );
        assert_eq!(exchange.subject_issuer.as_deref(), Some("cluster"));
        let mut bad = e.clone();
        bad.insert(TOKEN_EXCHANGE_SUBJECT_TOKEN_TYPE, "id_token");
        let err = config_from_env(&bad, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(TOKEN_EXCHANGE_SUBJECT_TOKEN_TYPE), "{err}");
        // Off unless asked.
        let e = env(&[(OIDC_ISSUER, "https://idp.example"), (OIDC_AUD, "llm")]);
        assert!(
            config_from_env(&e, &Overrides::default()).unwrap().issuers[0]
                .token_exchange
                .is_none()
        );
    }

    #[test]
    fn max_tokens_per_min_is_a_per_user_quota() {
        let e = env(&[
            (OIDC_ISSUER, "https://idp.example"),
            (OIDC_AUD, "llm"),
            (MAX_TOKENS_PER_MIN, "5000"),
            (MAX_REQUESTS_PER_MIN, "60"),
        ]);
        let config = config_from_env(&e, &Overrides::default()).unwrap();
        let limit = &config.quotas.limits[0];
        assert_eq!(limit.per, crate::quota::QuotaKey::User);
        assert_eq!(limit.tokens_per_minute, Some(5000));
        assert_eq!(limit.requests_per_minute, Some(60));
        let bad = env(&[
            (OIDC_ISSUER, "https://idp"),
            (OIDC_AUD, "a"),
            (MAX_TOKENS_PER_MIN, "lots"),
        ]);
        let err = config_from_env(&bad, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("MAX_TOKENS_PER_MIN"), "{err}");
    }

    #[test]
    fn flags_win_over_the_environment() {
        let e = env(&[
            (OIDC_ISSUER, "https://idp.example"),
            (OIDC_AUD, "llm"),
            (UPSTREAM_URL, "http://127.0.0.1:8000"),
        ]);
        let overrides = Overrides {
            port: Some(9000),
            admin_port: Some(9001),
            upstream: Some("http://127.0.0.1:8001".into()),
        };
        let config = config_from_env(&e, &overrides).unwrap();
        assert_eq!(config.listen.port, 9000);
        assert_eq!(config.admin.port, 9001);
        assert_eq!(config.upstream.url, "http://127.0.0.1:8001");
    }

    #[test]
    fn missing_or_unknown_settings_are_clear_errors() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[], "OIDC_ISSUER: is required"),
            (&[(OIDC_ISSUER, "https://idp")], "OIDC_AUD: is required"),
            (
                &[
                    (OIDC_ISSUER, "https://idp"),
                    (OIDC_AUD, "a"),
                    (AUTH_BACKEND, "cognito"),
                ],
                "AUTH_BACKEND: unknown",
            ),
            (
                &[
                    (OIDC_ISSUER, "https://idp"),
                    (OIDC_AUD, "a"),
                    (OIDC_ALGORITHMS, "HS256"),
                ],
                "OIDC_ALGORITHMS",
            ),
            (
                &[(OIDC_ISSUER, "http://idp.example"), (OIDC_AUD, "a")],
                "must be https://",
            ),
            (
                &[
                    (OIDC_ISSUER, "https://idp"),
                    (OIDC_AUD, "a"),
                    (FORWARD_AUTHORIZATION, "maybe"),
                ],
                "FORWARD_AUTHORIZATION",
            ),
        ];
        for (pairs, expected) in cases {
            let e: HashMap<&str, &str> = pairs.iter().copied().collect();
            let err = config_from_env(&e, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }
}
