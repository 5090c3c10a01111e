//! RFC 8693 token exchange: the verified inbound token is exchanged at the
//! IdP's token endpoint for a downstream-scoped token, which is what the
//! model receives. Results are cached per (subject token hash, audience,
//! scope) until the new token's expiry minus a skew, with single flight
//! (concurrent requests for the same token make one exchange), in a bounded
//! cache. Tokens and the client secret are never logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::idp_client::{FetchError, IdpClient};

/// `grant_type` of RFC 8693.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The type of the inbound token and of the one asked for.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

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
}

impl std::fmt::Debug for TokenExchangeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchangeConfig")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .field("scopes", &self.scopes)
            .field("header", &self.header)
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
            header: default_header(),
            cache_entries: default_cache_entries(),
            expiry_skew: default_skew(),
        }
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

#[derive(Clone)]
struct Exchanged {
    token: Arc<str>,
    usable_until: Instant,
}

type Key = ([u8; 32], Option<String>, String);

/// Exchanges tokens for one issuer.
pub struct TokenExchanger {
    config: TokenExchangeConfig,
    issuer: String,
    http: IdpClient,
    endpoint: tokio::sync::OnceCell<String>,
    cache: Cache<Key, Exchanged>,
}

impl std::fmt::Debug for TokenExchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchanger")
            .field("issuer", &self.issuer)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether an exchange was answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Exchange,
}

impl TokenExchanger {
    pub fn new(issuer: &str, config: TokenExchangeConfig, http: IdpClient) -> Self {
        Self {
            cache: Cache::new(config.cache_entries.max(1)),
            issuer: issuer.trim_end_matches('/').to_owned(),
            config,
            http,
            endpoint: tokio::sync::OnceCell::new(),
        }
    }

    /// The header the exchanged token goes in.
    pub fn header(&self) -> &str {
        &self.config.header
    }

    /// What this exchanger was built from.
    pub fn config(&self) -> &TokenExchangeConfig {
        &self.config
    }

    /// The downstream token for `subject_token`.
    pub async fn exchange(&self, subject_token: &str) -> Result<(Arc<str>, Source), ExchangeError> {
        let key: Key = (
            Sha256::digest(subject_token.as_bytes()).into(),
            self.config.audience.clone(),
            self.config.scopes.join(" "),
        );
        for _ in 0..2 {
            match self.cache.get_value_or_guard_async(&key).await {
                Ok(hit) if hit.usable_until > Instant::now() => {
                    return Ok((hit.token, Source::Cache));
                }
                // Expired: drop it and go round once more for a guard.
                Ok(_) => {
                    self.cache.remove(&key);
                }
                Err(guard) => {
                    let exchanged = self.request(subject_token).await?;
                    let token = exchanged.token.clone();
                    let _ = guard.insert(exchanged);
                    return Ok((token, Source::Exchange));
                }
            }
        }
        self.request(subject_token)
            .await
            .map(|e| (e.token, Source::Exchange))
    }

    async fn token_endpoint(&self) -> Result<&str, ExchangeError> {
        if let Some(url) = &self.config.token_endpoint {
            return Ok(url);
        }
        self.endpoint
            .get_or_try_init(|| async {
                #[derive(Deserialize)]
                struct Discovery {
                    token_endpoint: String,
                }
                let issuer = self
                    .config
                    .discovery_issuer
                    .as_deref()
                    .unwrap_or(&self.issuer)
                    .trim_end_matches('/');
                let url = format!("{issuer}/.well-known/openid-configuration");
                self.http
                    .get_json::<Discovery>(&url)
                    .await
                    .map(|d| d.token_endpoint)
                    .map_err(|e| unavailable(&e))
            })
            .await
            .map(String::as_str)
    }

    async fn request(&self, subject_token: &str) -> Result<Exchanged, ExchangeError> {
        let endpoint = self.token_endpoint().await?;
        let scope = self.config.scopes.join(" ");
        let mut form = vec![
            ("grant_type", GRANT_TYPE),
            ("subject_token", subject_token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
        ];
        if let Some(audience) = &self.config.audience {
            form.push(("audience", audience));
        }
        if let Some(resource) = &self.config.resource {
            form.push(("resource", resource));
        }
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let started = Instant::now();
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
            let code = body["error"].as_str().unwrap_or("invalid_response");
            // Only the OAuth code, never a description that may echo input.
            let code: String = code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
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
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(60));
        Ok(Exchanged {
            token: Arc::from(token),
            usable_until: started + lifetime.saturating_sub(self.config.expiry_skew),
        })
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A token endpoint that counts calls and answers after a pause.
    async fn endpoint(answer: &'static str, status: u16) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let _ = s.read(&mut buf).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        (url, calls)
    }

    fn exchanger(url: String) -> TokenExchanger {
        let mut config = TokenExchangeConfig::new("gw", "s3cret");
        config.token_endpoint = Some(url);
        config.audience = Some("downstream".into());
        TokenExchanger::new("http://idp", config, IdpClient::new())
    }

    #[tokio::test]
    async fn concurrent_requests_for_one_token_make_one_exchange() {
        let (url, calls) = endpoint(
            r#"{"access_token":"down","token_type":"Bearer","expires_in":300}"#,
            200,
        )
        .await;
        let exchanger = Arc::new(exchanger(url));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let e = exchanger.clone();
                tokio::spawn(async move { e.exchange("subject").await })
            })
            .collect();
        let mut sources = Vec::new();
        for t in tasks {
            let (token, source) = t.await.unwrap().unwrap();
            assert_eq!(&*token, "down");
            sources.push(source);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "single flight");
        assert_eq!(
            sources.iter().filter(|s| **s == Source::Exchange).count(),
            1
        );
        // Another subject token is another exchange.
        exchanger.exchange("other").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_map_to_refused_or_unavailable_and_are_not_cached() {
        let (url, calls) = endpoint(
            r#"{"error":"unauthorized_client","error_description":"x"}"#,
            400,
        )
        .await;
        let e = exchanger(url);
        assert_eq!(
            e.exchange("subject").await.unwrap_err(),
            ExchangeError::Refused("unauthorized_client".into())
        );
        e.exchange("subject").await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "refusals are not cached");
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/token", l.local_addr().unwrap())
        };
        assert_eq!(
            exchanger(closed).exchange("subject").await.unwrap_err(),
            ExchangeError::Unavailable
        );
    }

    #[test]
    fn the_secret_stays_out_of_debug() {
        let config = TokenExchangeConfig::new("gw", "s3cret");
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
