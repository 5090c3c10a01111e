//! RFC 8693 token exchange: the verified inbound token is exchanged at the
//! IdP's token endpoint for a downstream-scoped token, which is what the
//! model receives. Results are cached per (subject token hash, audience,
//! scope) until the new token's expiry minus a skew, with single flight
//! (concurrent requests for the same token make one exchange), in a bounded
//! cache. A refusal is cached too, for `refusalCacheTtl`, so one caller with
//! a refused token cannot make the gateway call the IdP on every request;
//! an unreachable or nonsensical IdP is remembered for two seconds, so the
//! requests that waited on one exchange all get its answer at once instead
//! of retrying one after another. Each exchange is bounded by `timeout`.
//! Tokens and the client secret are never logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::idp_client::{FetchError, IdpClient};

/// `grant_type` of RFC 8693.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The type of the token asked for, and of an inbound access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The type of an inbound token that is a JWT but no access token of the
/// IdP asked: a workload's ServiceAccount token, say.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// What the verified inbound token is, as RFC 8693 `subject_token_type`
/// names it to the IdP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SubjectTokenType {
    /// An access token (of this IdP, or one it validates at its issuer).
    #[default]
    AccessToken,
    /// A JWT the IdP validates by its signature: how an IdP takes a token of
    /// an issuer it federates, such as a cluster's ServiceAccount tokens.
    Jwt,
}

impl SubjectTokenType {
    /// The RFC 8693 URI.
    pub fn uri(self) -> &'static str {
        match self {
            Self::AccessToken => ACCESS_TOKEN_TYPE,
            Self::Jwt => JWT_TOKEN_TYPE,
        }
    }
}

/// Token exchange for one issuer's tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenExchangeConfig {
    /// The RFC 8693 token endpoint; found by OIDC discovery when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    /// The issuer whose discovery document names the token endpoint, when
    /// not this one (Descope: `https://api.descope.com/<project id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_issuer: Option<String>,
    /// The client the gateway authenticates as.
    pub client_id: String,
    /// Its secret; or `clientSecretFile`. Never logged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_secret: String,
    /// A file holding the secret (a mounted Secret), read when the config
    /// file is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// The `audience` asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The `resource` asked for (RFC 8707).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The scopes asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// What the inbound token is to the IdP (`subject_token_type`).
    #[serde(default)]
    pub subject_token_type: SubjectTokenType,
    /// The name the IdP knows the inbound token's issuer by, sent as
    /// `subject_issuer`: Keycloak's extension for a token of another issuer
    /// (the alias of the identity provider that federates it). Absent, the
    /// IdP takes the token as its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_issuer: Option<String>,
    /// The request header that carries the exchanged token to the model
    /// (as `Bearer <token>`).
    #[serde(default = "default_header")]
    pub header: String,
    /// Exchanged tokens kept at most.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// How long before its expiry an exchanged token is no longer used.
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub expiry_skew: Duration,
    /// How long one exchange may take, discovery included. Past it: 503.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a refusal is remembered for its subject token: requests with
    /// it get the same 403 without asking the IdP again.
    #[serde(default = "default_refusal_ttl", with = "humantime_serde")]
    pub refusal_cache_ttl: Duration,
}

impl std::fmt::Debug for TokenExchangeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchangeConfig")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .field("scopes", &self.scopes)
            .field("subject_token_type", &self.subject_token_type)
            .field("subject_issuer", &self.subject_issuer)
            .field("header", &self.header)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn default_header() -> String {
    "authorization".into()
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_skew() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_refusal_ttl() -> Duration {
    Duration::from_secs(10)
}

/// The longest lifetime believed of an exchanged token, whatever
/// `expires_in` says.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The lifetime assumed when the IdP gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// How long an unreachable or nonsensical IdP is remembered per token.
const FAILURE_TTL: Duration = Duration::from_secs(2);
/// The longest exchange timeout and refusal memory accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REFUSAL_TTL: Duration = Duration::from_secs(300);

impl TokenExchangeConfig {
    /// An exchange for `client_id` with defaults elsewhere.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            token_endpoint: None,
            discovery_issuer: None,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            client_secret_file: None,
            audience: None,
            resource: None,
            scopes: Vec::new(),
            subject_token_type: SubjectTokenType::default(),
            subject_issuer: None,
            header: default_header(),
            cache_entries: default_cache_entries(),
            expiry_skew: default_skew(),
            timeout: default_timeout(),
            refusal_cache_ttl: default_refusal_ttl(),
        }
    }

    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(format!(
                "timeout must be between 1ms and {}s",
                MAX_TIMEOUT.as_secs()
            ));
        }
        if self.refusal_cache_ttl > MAX_REFUSAL_TTL {
            return Err(format!(
                "refusalCacheTtl must be at most {}s",
                MAX_REFUSAL_TTL.as_secs()
            ));
        }
        if self.cache_entries == 0 {
            return Err("cacheEntries must be at least 1".into());
        }
        if self.expiry_skew >= MAX_LIFETIME {
            return Err("expirySkew must be under a day".into());
        }
        Ok(())
    }
}

/// Why an exchange failed; each maps to an answer, and none forwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The IdP refused (OAuth `error` code, e.g. `unauthorized_client`).
    #[error("the identity provider refused the token exchange: {0}")]
    Refused(String),
    /// The IdP could not be reached or timed out.
    #[error("the identity provider's token endpoint is unreachable")]
    Unavailable,
    /// The IdP answered something that is not a usable token response.
    #[error("the identity provider's token response is unusable: {0}")]
    BadResponse(String),
}

/// What the cache remembers for one subject token.
#[derive(Clone)]
enum Cached {
    Token {
        token: Arc<str>,
        usable_until: Instant,
    },
    Failed {
        error: ExchangeError,
        until: Instant,
    },
}

impl Cached {
    fn is_live(&self, now: Instant) -> bool {
        match self {
            Self::Token { usable_until, .. } => *usable_until > now,
            Self::Failed { until, .. } => *until > now,
        }
    }

    fn into_result(self) -> Result<Arc<str>, ExchangeError> {
        match self {
            Self::Token { token, .. } => Ok(token),
            Self::Failed { error, .. } => Err(error),
        }
    }
}

type Key = ([u8; 32], Option<String>, String);

/// Exchanges tokens for one issuer.
pub struct TokenExchanger {
    config: TokenExchangeConfig,
    /// The issuer as configured (discovery compares it exactly).
    issuer: String,
    header: http::HeaderName,
    http: IdpClient,
    endpoint: tokio::sync::OnceCell<String>,
    cache: Cache<Key, Cached>,
}

impl std::fmt::Debug for TokenExchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchanger")
            .field("issuer", &self.issuer)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether an answer came from the cache or from the IdP just now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Exchange,
}

impl TokenExchanger {
    pub fn new(issuer: &str, config: TokenExchangeConfig, http: IdpClient) -> Self {
        // The config was validated: the name parses.
        let header = http::HeaderName::from_bytes(config.header.as_bytes())
            .unwrap_or(http::header::AUTHORIZATION);
        Self {
            cache: Cache::new(config.cache_entries.max(1)),
            issuer: issuer.to_owned(),
            header,
            config,
            http,
            endpoint: tokio::sync::OnceCell::new(),
        }
    }

    /// The header the exchanged token goes in.
    pub fn header(&self) -> &http::HeaderName {
        &self.header
    }

    /// What this exchanger was built from.
    pub fn config(&self) -> &TokenExchangeConfig {
        &self.config
    }

    /// The downstream token for `subject_token`, and whether the answer (a
    /// token or a refusal) came from the cache.
    pub async fn exchange(&self, subject_token: &str) -> (Result<Arc<str>, ExchangeError>, Source) {
        let key: Key = (
            Sha256::digest(subject_token.as_bytes()).into(),
            self.config.audience.clone(),
            self.config.scopes.join(" "),
        );
        for _ in 0..2 {
            match self.cache.get_value_or_guard_async(&key).await {
                Ok(cached) if cached.is_live(Instant::now()) => {
                    return (cached.into_result(), Source::Cache);
                }
                // Expired: drop it and go round once more for a guard.
                Ok(_) => {
                    self.cache.remove(&key);
                }
                Err(guard) => {
                    let cached = self.bounded_request(subject_token).await;
                    let _ = guard.insert(cached.clone());
                    return (cached.into_result(), Source::Exchange);
                }
            }
        }
        (
            self.bounded_request(subject_token).await.into_result(),
            Source::Exchange,
        )
    }

    /// One exchange within `timeout`, as what the cache keeps of it.
    async fn bounded_request(&self, subject_token: &str) -> Cached {
        let started = Instant::now();
        let result = tokio::time::timeout(self.config.timeout, self.request(subject_token))
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(issuer = %self.issuer, timeout = ?self.config.timeout, "token exchange timed out");
                Err(ExchangeError::Unavailable)
            });
        let after = |ttl: Duration| started.checked_add(ttl).unwrap_or(started);
        match result {
            Ok((token, lifetime)) => Cached::Token {
                token,
                usable_until: after(lifetime.saturating_sub(self.config.expiry_skew)),
            },
            Err(error @ ExchangeError::Refused(_)) => Cached::Failed {
                error,
                until: after(self.config.refusal_cache_ttl),
            },
            Err(error) => Cached::Failed {
                error,
                until: after(FAILURE_TTL),
            },
        }
    }

    async fn token_endpoint(&self) -> Result<&str, ExchangeError> {
        if let Some(url) = &self.config.token_endpoint {
            return Ok(url);
        }
        self.endpoint
            .get_or_try_init(|| async {
                let issuer = self
                    .config
                    .discovery_issuer
                    .as_deref()
                    .unwrap_or(&self.issuer);
                crate::discovery::discover(&self.http, issuer)
                    .await
                    .and_then(|d| d.endpoint("token_endpoint"))
                    .map_err(|e| {
                        tracing::warn!(issuer, error = %e, "token endpoint discovery refused");
                        discovery_failure(&e)
                    })
            })
            .await
            .map(String::as_str)
    }

    /// Exchanges once: the token and how long it lives.
    async fn request(&self, subject_token: &str) -> Result<(Arc<str>, Duration), ExchangeError> {
        let endpoint = self.token_endpoint().await?;
        let scope = self.config.scopes.join(" ");
        let form = form(&self.config, subject_token, &scope);
        let (status, body) = self
            .http
            .post_form(
                endpoint,
                &form,
                (&self.config.client_id, &self.config.client_secret),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        if !status.is_success() {
            let code = crate::oauth_answer::error_code(&body);
            tracing::info!(issuer = %self.issuer, status = status.as_u16(), error = %code, "token exchange refused");
            return match status.as_u16() {
                400..=499 => Err(ExchangeError::Refused(code)),
                _ => Err(ExchangeError::Unavailable),
            };
        }
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ExchangeError::BadResponse("no access_token".into()))?;
        Ok((Arc::from(token), lifetime(&body["expires_in"])?))
    }
}

/// The RFC 8693 request for `subject_token`, as `config` asks (`scope` is
/// its scopes joined).
fn form<'a>(
    config: &'a TokenExchangeConfig,
    subject_token: &'a str,
    scope: &'a str,
) -> Vec<(&'static str, &'a str)> {
    let mut form = vec![
        ("grant_type", GRANT_TYPE),
        ("subject_token", subject_token),
        ("subject_token_type", config.subject_token_type.uri()),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
    ];
    if let Some(issuer) = &config.subject_issuer {
        form.push(("subject_issuer", issuer));
    }
    if let Some(audience) = &config.audience {
        form.push(("audience", audience));
    }
    if let Some(resource) = &config.resource {
        form.push(("resource", resource));
    }
    if !scope.is_empty() {
        form.push(("scope", scope));
    }
    form
}

/// The token's lifetime from `expires_in` (RFC 6749 §5.1): at most
/// [`MAX_LIFETIME`], [`DEFAULT_LIFETIME`] when absent; anything that is not
/// a positive integer is a bad answer.
fn lifetime(expires_in: &Value) -> Result<Duration, ExchangeError> {
    crate::oauth_answer::lifetime(expires_in, DEFAULT_LIFETIME, MAX_LIFETIME)
        .map_err(|e| ExchangeError::BadResponse(e.to_string()))
}

fn discovery_failure(e: &crate::discovery::DiscoveryError) -> ExchangeError {
    use crate::discovery::DiscoveryError as D;
    match e {
        D::Fetch(e) => unavailable(e),
        D::WrongIssuer { .. } => {
            ExchangeError::BadResponse("the discovery document names another issuer".into())
        }
        D::Missing(_) => ExchangeError::BadResponse("discovery names no token_endpoint".into()),
        D::Unusable { .. } => {
            ExchangeError::BadResponse("the discovered token endpoint is not usable".into())
        }
    }
}

fn unavailable(e: &FetchError) -> ExchangeError {
    tracing::warn!(error = %e, "token endpoint unreachable");
    match e {
        FetchError::Json { .. } => ExchangeError::BadResponse("not JSON".into()),
        _ => ExchangeError::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in IdP on loopback: serves a discovery document (built by
    /// `discovery` from its own base URL) and answers token requests with
    /// `status` and `answer` after `delay`, counting them.
    struct FakeIdp {
        base: String,
        token_calls: Arc<AtomicUsize>,
    }

    impl FakeIdp {
        async fn start(
            discovery: impl Fn(&str) -> Value + Send + 'static,
            status: u16,
            answer: String,
            delay: Duration,
        ) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let doc = discovery(&base).to_string();
            let token_calls = Arc::new(AtomicUsize::new(0));
            let counted = token_calls.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while let Ok((mut s, _)) = listener.accept().await {
                    let doc = doc.clone();
                    let answer = answer.clone();
                    let counted = counted.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16384];
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        let (status, body) = if buf[..n].starts_with(b"GET /.well-known/") {
                            (200, doc)
                        } else {
                            counted.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            (status, answer)
                        };
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(reply.as_bytes()).await;
                    });
                }
            });
            Self { base, token_calls }
        }

        /// Answers `answer` to token requests; its discovery is sound.
        async fn answering(status: u16, answer: &str) -> Self {
            Self::start(
                sound_discovery,
                status,
                answer.to_owned(),
                Duration::from_millis(100),
            )
            .await
        }

        fn calls(&self) -> usize {
            self.token_calls.load(Ordering::SeqCst)
        }

        /// An exchanger for this IdP as the issuer, its endpoint discovered.
        fn exchanger(&self, tune: impl FnOnce(&mut TokenExchangeConfig)) -> TokenExchanger {
            let mut config = TokenExchangeConfig::new("gw", "s3cret");
            config.audience = Some("downstream".into());
            tune(&mut config);
            TokenExchanger::new(&self.base, config, IdpClient::new())
        }
    }

    fn sound_discovery(base: &str) -> Value {
        json!({"issuer": base, "token_endpoint": format!("{base}/token")})
    }

    const GOOD: &str = r#"{"access_token":"down","token_type":"Bearer","expires_in":300}"#;
    const REFUSED: &str = r#"{"error":"unauthorized_client","error_description":"x"}"#;

    #[tokio::test]
    async fn concurrent_requests_for_one_token_make_one_exchange() {
        let idp = FakeIdp::answering(200, GOOD).await;
        let exchanger = Arc::new(idp.exchanger(|_| {}));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let e = exchanger.clone();
                tokio::spawn(async move { e.exchange("subject").await })
            })
            .collect();
        let mut sources = Vec::new();
        for t in tasks {
            let (token, source) = t.await.unwrap();
            assert_eq!(&*token.unwrap(), "down");
            sources.push(source);
        }
        assert_eq!(idp.calls(), 1, "single flight");
        assert_eq!(
            sources.iter().filter(|s| **s == Source::Exchange).count(),
            1
        );
        // Another subject token is another exchange.
        exchanger.exchange("other").await.0.unwrap();
        assert_eq!(idp.calls(), 2);
    }

    #[tokio::test]
    async fn a_refusal_is_remembered_for_its_token_then_asked_again() {
        let idp = FakeIdp::answering(400, REFUSED).await;
        let e = idp.exchanger(|c| c.refusal_cache_ttl = Duration::from_millis(600));
        let refused = ExchangeError::Refused("unauthorized_client".into());
        assert_eq!(
            e.exchange("subject").await,
            (Err(refused.clone()), Source::Exchange)
        );
        // A storm from the same caller: answered from memory.
        for _ in 0..150 {
            assert_eq!(
                e.exchange("subject").await,
                (Err(refused.clone()), Source::Cache)
            );
        }
        assert_eq!(idp.calls(), 1, "one IdP call for 151 refused requests");
        // Another token is its own question.
        e.exchange("another").await.0.unwrap_err();
        assert_eq!(idp.calls(), 2);
        // Briefly: after the TTL the IdP is asked again.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(e.exchange("subject").await.1, Source::Exchange);
        assert_eq!(idp.calls(), 3);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unavailable() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/token", l.local_addr().unwrap())
        };
        let mut config = TokenExchangeConfig::new("gw", "s3cret");
        config.token_endpoint = Some(closed);
        config.audience = Some("downstream".into());
        let e = TokenExchanger::new("http://127.0.0.1:1", config, IdpClient::new());
        assert_eq!(
            e.exchange("subject").await.0,
            Err(ExchangeError::Unavailable)
        );
    }

    #[tokio::test]
    async fn a_hanging_endpoint_fails_every_waiter_at_once_within_the_timeout() {
        let idp = FakeIdp::start(sound_discovery, 200, GOOD.into(), Duration::from_secs(60)).await;
        let e = Arc::new(idp.exchanger(|c| c.timeout = Duration::from_millis(400)));
        let started = Instant::now();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let e = e.clone();
                tokio::spawn(async move { e.exchange("subject").await.0 })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap(), Err(ExchangeError::Unavailable));
        }
        let took = started.elapsed();
        // Not one timeout after another: the waiters share the one answer.
        assert!(took < Duration::from_millis(1500), "took {took:?}");
        assert_eq!(idp.calls(), 1);
    }

    #[tokio::test]
    async fn expires_in_is_bounded_and_checked_never_a_panic() {
        for huge in [
            u64::MAX.to_string(),
            "18446744073709551615".into(),
            "1e300".into(),
        ] {
            let answer = format!(r#"{{"access_token":"down","expires_in":{huge}}}"#);
            let idp = FakeIdp::start(sound_discovery, 200, answer, Duration::ZERO).await;
            let e = idp.exchanger(|_| {});
            let (token, _) = e.exchange("subject").await;
            if huge == "1e300" {
                assert!(
                    matches!(token, Err(ExchangeError::BadResponse(_))),
                    "{huge}"
                );
            } else {
                assert_eq!(&*token.unwrap(), "down", "{huge}: capped, usable");
                assert_eq!(e.exchange("subject").await.1, Source::Cache);
            }
        }
        for bad in ["0", "-5", "\"300\"", "3.5", "[]"] {
            let answer = format!(r#"{{"access_token":"down","expires_in":{bad}}}"#);
            let idp = FakeIdp::start(sound_discovery, 200, answer, Duration::ZERO).await;
            let (token, _) = idp.exchanger(|_| {}).exchange("subject").await;
            assert!(matches!(token, Err(ExchangeError::BadResponse(_))), "{bad}");
        }
        assert_eq!(lifetime(&Value::Null).unwrap(), DEFAULT_LIFETIME);
        assert_eq!(lifetime(&json!(u64::MAX)).unwrap(), MAX_LIFETIME);
    }

    #[tokio::test]
    async fn discovery_for_the_token_endpoint_is_as_strict_as_for_the_keys() {
        // A document speaking for another issuer: the secret is never posted.
        let impostor = FakeIdp::start(
            |base| json!({"issuer": "https://corp.example", "token_endpoint": format!("{base}/token")}),
            200,
            GOOD.into(),
            Duration::ZERO,
        )
        .await;
        let (result, _) = impostor.exchanger(|_| {}).exchange("subject").await;
        assert!(
            matches!(result, Err(ExchangeError::BadResponse(_))),
            "{result:?}"
        );
        assert_eq!(impostor.calls(), 0, "nothing posted to it");
        // An https issuer whose document names an http token endpoint.
        let idp = FakeIdp::answering(200, GOOD).await;
        let doc = json!({"issuer": "https://idp.example", "token_endpoint": format!("{}/token", idp.base)});
        let discovered = crate::discovery::Discovery::checked("https://idp.example", doc).unwrap();
        assert!(discovered.endpoint("token_endpoint").is_err());
        // The sound document works.
        assert_eq!(
            &*idp.exchanger(|_| {}).exchange("subject").await.0.unwrap(),
            "down"
        );
        assert_eq!(idp.calls(), 1);
    }

    #[test]
    fn the_request_names_the_subject_as_configured() {
        let base = || TokenExchangeConfig::new("gw", "s3cret");
        let access = base();
        let mut workload = base();
        workload.subject_token_type = SubjectTokenType::Jwt;
        workload.subject_issuer = Some("cluster".into());
        workload.audience = Some("llm-downstream".into());
        let mut scoped = base();
        scoped.resource = Some("https://models.example".into());
        type Fields = &'static [(&'static str, &'static str)];
        let cases: [(&TokenExchangeConfig, &str, Fields); 3] = [
            (&access, "", &[("subject_token_type", ACCESS_TOKEN_TYPE)]),
            (
                &workload,
                "",
                &[
                    ("subject_token_type", JWT_TOKEN_TYPE),
                    ("subject_issuer", "cluster"),
                    ("audience", "llm-downstream"),
                ],
            ),
            (
                &scoped,
                "models.read models.write",
                &[
                    ("subject_token_type", ACCESS_TOKEN_TYPE),
                    ("resource", "https://models.example"),
                    ("scope", "models.read models.write"),
                ],
            ),
        ];
        for (config, scope, extra) in cases {
            let mut want = vec![
                ("grant_type", GRANT_TYPE),
                ("subject_token", "the-token"),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
            ];
            want.extend_from_slice(extra);
            let mut got = form(config, "the-token", scope);
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{config:?}");
        }
        // The secret authenticates the client; it is never a form field.
        assert!(form(&access, "t", "").iter().all(|(_, v)| *v != "s3cret"));
    }

    #[test]
    fn the_subject_token_type_reads_as_written() {
        let config: TokenExchangeConfig = serde_json::from_value(
            json!({"clientId": "gw", "subjectTokenType": "jwt", "subjectIssuer": "cluster"}),
        )
        .unwrap();
        assert_eq!(config.subject_token_type, SubjectTokenType::Jwt);
        let default: TokenExchangeConfig =
            serde_json::from_value(json!({"clientId": "gw"})).unwrap();
        assert_eq!(default.subject_token_type, SubjectTokenType::AccessToken);
        assert!(
            serde_json::from_value::<TokenExchangeConfig>(
                json!({"clientId": "gw", "subjectTokenType": "id_token"})
            )
            .is_err()
        );
    }

    #[test]
    fn the_secret_stays_out_of_debug() {
        let config = TokenExchangeConfig::new("gw", "s3cret");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn timeouts_and_memories_are_bounded() {
        let mut config = TokenExchangeConfig::new("gw", "s");
        assert!(config.validate().is_ok());
        config.timeout = Duration::ZERO;
        assert!(config.validate().is_err());
        config.timeout = Duration::from_secs(3600);
        assert!(config.validate().is_err());
        config.timeout = Duration::from_secs(5);
        config.refusal_cache_ttl = Duration::from_secs(86_400);
        assert!(config.validate().is_err());
    }
}
