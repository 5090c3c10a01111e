//! The signing keys of one issuer, fetched from its JWKS and kept fresh.
//!
//! - Keys are refreshed in the background every `jwks_refresh_interval`.
//! - A token with an unknown `kid` triggers one refresh, single-flight and at
//!   most once per `jwks_cooldown`: a storm of made-up kids costs the IdP one
//!   fetch per cooldown, not one per request.
//! - A failed fetch keeps the last good keys.
//! - Until keys have been loaded once, the issuer is not ready and requests
//!   for it are refused with 503 (fail closed).
//! - Header-supplied `jku`, `x5u` and `jwk` are never used: keys come only
//!   from the configured source.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::keys::{KeySet, VerifyingKey};
use crate::idp_client::{FetchError, IdpClient};
use crate::metrics::{IssuerLabels, JwksLabels, Metrics};

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// `<issuer>/.well-known/openid-configuration` names the `jwks_uri`.
    Discovery { issuer: String },
    /// A configured JWKS URL.
    Uri(String),
    /// A local JWKS file.
    File(PathBuf),
    /// The JWKS given in the config (its JSON text).
    Inline(String),
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("discovery document has no jwks_uri")]
    NoJwksUri,
    #[error("discovery refused: {0}")]
    Discovery(String),
    #[error("cannot read {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("the configured JWKS is not JSON: {0}")]
    Inline(String),
    #[error("the JWKS has no usable signing keys ({skipped} skipped)")]
    NoUsableKeys { skipped: usize },
}

/// Fetch bookkeeping, behind the single-flight lock.
#[derive(Debug, Default)]
struct FetchState {
    /// When an unknown `kid` last caused a fetch: the cooldown runs from here,
    /// so background refreshes never delay the pick-up of a rotated key.
    last_unknown_kid_fetch: Option<Instant>,
    /// The discovered JWKS URL, remembered between refreshes.
    jwks_uri: Option<String>,
}

/// A snapshot of what is loaded, for `/readyz` and the operator's status.
#[derive(Debug, Clone)]
pub struct JwksStatus {
    pub issuer: String,
    pub keys: usize,
    pub last_refresh: Option<SystemTime>,
}

/// One issuer's key cache.
#[derive(Debug)]
pub struct JwksCache {
    issuer: String,
    source: KeySource,
    cooldown: Duration,
    refresh_interval: Duration,
    http: IdpClient,
    metrics: Arc<Metrics>,
    keys: ArcSwapOption<KeySet>,
    last_refresh: ArcSwapOption<SystemTime>,
    fetch: Mutex<FetchState>,
}

impl JwksCache {
    /// A cache with no keys yet; call [`Self::spawn_refresher`] to load them.
    pub fn new(
        issuer: String,
        source: KeySource,
        refresh_interval: Duration,
        cooldown: Duration,
        http: IdpClient,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            issuer,
            source,
            cooldown,
            refresh_interval,
            http,
            metrics,
            keys: ArcSwapOption::empty(),
            last_refresh: ArcSwapOption::empty(),
            fetch: Mutex::new(FetchState::default()),
        }
    }

    /// A cache pre-loaded with `jwks`, that never fetches.
    #[cfg(test)]
    pub fn with_keys(issuer: String, jwks: &Value, metrics: Arc<Metrics>) -> Self {
        let cache = Self::new(
            issuer,
            KeySource::Uri("unused://".into()),
            Duration::MAX,
            Duration::MAX,
            IdpClient::new(),
            metrics,
        );
        cache.keys.store(Some(Arc::new(KeySet::from_jwks(jwks))));
        cache
    }

    /// The issuer these keys belong to.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Where the keys come from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Whether keys have ever been loaded.
    pub fn is_loaded(&self) -> bool {
        self.keys.load().as_ref().is_some_and(|k| !k.is_empty())
    }

    /// What is loaded now.
    pub fn status(&self) -> JwksStatus {
        JwksStatus {
            issuer: self.issuer.clone(),
            keys: self.keys.load().as_ref().map_or(0, |k| k.len()),
            last_refresh: self.last_refresh.load().as_deref().copied(),
        }
    }

    /// The current key set, if any was ever loaded.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Looks up `kid`, refreshing once (single-flight, rate-limited by the
    /// cooldown) when it is unknown.
    pub async fn key_for_unknown_kid(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        let mut state = self.fetch.lock().await;
        // Whoever held the lock before may have fetched it already.
        if let Some(key) = self.keys.load().as_ref().and_then(|k| k.get(kid).cloned()) {
            return Some(key);
        }
        if state
            .last_unknown_kid_fetch
            .is_some_and(|at| at.elapsed() < self.cooldown)
        {
            return None;
        }
        state.last_unknown_kid_fetch = Some(Instant::now());
        let _ = self.refresh_locked(&mut state, "unknown_kid").await;
        self.keys.load().as_ref().and_then(|k| k.get(kid).cloned())
    }

    /// Fetches the keys now, whatever the cooldown says.
    pub async fn refresh(&self, trigger: &'static str) -> Result<usize, RefreshError> {
        let mut state = self.fetch.lock().await;
        self.refresh_locked(&mut state, trigger).await
    }

    async fn refresh_locked(
        &self,
        state: &mut FetchState,
        trigger: &'static str,
    ) -> Result<usize, RefreshError> {
        let result = self.fetch_keys(state).await;
        let label = JwksLabels {
            issuer: self.issuer.clone(),
            result: if result.is_ok() { "ok" } else { "error" },
            trigger,
        };
        self.metrics.jwks_refreshes.get_or_create(&label).inc();
        match result {
            Ok(set) => {
                let count = set.len();
                self.metrics
                    .jwks_keys
                    .get_or_create(&IssuerLabels {
                        issuer: self.issuer.clone(),
                    })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
                self.keys.store(Some(Arc::new(set)));
                self.last_refresh.store(Some(Arc::new(SystemTime::now())));
                tracing::debug!(issuer = %self.issuer, keys = count, trigger, "JWKS refreshed");
                Ok(count)
            }
            Err(e) => {
                tracing::warn!(
                    issuer = %self.issuer,
                    trigger,
                    error = %e,
                    kept_keys = self.keys.load().as_ref().map_or(0, |k| k.len()),
                    "JWKS refresh failed; keeping the last good keys"
                );
                Err(e)
            }
        }
    }

    async fn fetch_keys(&self, state: &mut FetchState) -> Result<KeySet, RefreshError> {
        let doc: Value = match &self.source {
            KeySource::File(path) => {
                let text =
                    tokio::fs::read_to_string(path)
                        .await
                        .map_err(|e| RefreshError::File {
                            path: path.clone(),
                            message: e.to_string(),
                        })?;
                serde_json::from_str(&text).map_err(|e| RefreshError::File {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            KeySource::Inline(text) => {
                serde_json::from_str(text).map_err(|e| RefreshError::Inline(e.to_string()))?
            }
            KeySource::Uri(uri) => self.http.get_json(uri).await?,
            KeySource::Discovery { issuer } => {
                let uri = match &state.jwks_uri {
                    Some(uri) => uri.clone(),
                    None => {
                        let uri = self.discover(issuer).await?;
                        state.jwks_uri = Some(uri.clone());
                        uri
                    }
                };
                match self.http.get_json(&uri).await {
                    Ok(doc) => doc,
                    Err(e) => {
                        // The IdP may have moved its keys: rediscover next time.
                        state.jwks_uri = None;
                        return Err(e.into());
                    }
                }
            }
        };
        let set = KeySet::from_jwks(&doc);
        if set.is_empty() {
            return Err(RefreshError::NoUsableKeys {
                skipped: set.skipped,
            });
        }
        Ok(set)
    }

    async fn discover(&self, issuer: &str) -> Result<String, RefreshError> {
        discover_jwks_uri(&self.http, issuer).await
    }

    /// Loads the keys now and then keeps them fresh in a background task.
    /// Until the first success it retries with backoff (1 s doubling up to
    /// the refresh interval). The task ends when the cache is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut trigger = "initial";
            let mut backoff = Duration::from_secs(1);
            loop {
                let Some(cache) = weak.upgrade() else { return };
                let ok = cache.refresh(trigger).await.is_ok();
                let wait = if ok {
                    backoff = Duration::from_secs(1);
                    cache.refresh_interval
                } else {
                    let wait = backoff;
                    backoff = (backoff * 2).min(cache.refresh_interval);
                    wait
                };
                drop(cache);
                trigger = "background";
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// Finds `jwks_uri` in `issuer`'s discovery document, as strictly as every
/// discovered endpoint (see [`crate::discovery`]).
pub async fn discover_jwks_uri(http: &IdpClient, issuer: &str) -> Result<String, RefreshError> {
    use crate::discovery::DiscoveryError;
    let found = crate::discovery::discover(http, issuer)
        .await
        .and_then(|d| d.endpoint("jwks_uri"));
    found.map_err(|e| match e {
        DiscoveryError::Fetch(e) => RefreshError::Fetch(e),
        DiscoveryError::Missing(_) => RefreshError::NoJwksUri,
        other => RefreshError::Discovery(other.to_string()),
    })
}
