//! One backend's keys: minting, checking, listing and revoking, over the
//! shared records (`records`), with a short-lived cache of checked keys. A
//! replica trusts a key it has checked for `cacheTtl`, then reads it again:
//! a revocation reaches every replica within that time (at once on the
//! replica that revoked it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::config::ApiKeysConfig;
use super::error::KeysError;
use super::format::{self, PresentedKey};
use super::record::{self, KeyRecord};
use super::records::{NewRecord, Records};
use crate::canonical::{Engine, ModelPattern};
use crate::claims::Identity;
use crate::quota::clock::Clock;

/// How long a record stays after its key expired, so that lists show it
/// as expired and a client is told `api_key_expired` rather than unknown.
const KEEP_EXPIRED: u64 = 86_400;
/// The most models a key may name.
const MAX_MODELS: usize = 64;
/// The longest key name.
const MAX_NAME: usize = 64;

/// Why a presented key was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    /// Malformed, never minted, revoked, or sealed for another key.
    #[error("unknown or revoked API key")]
    Unknown,
    #[error("API key expired")]
    Expired,
    /// Minted on another backend.
    #[error("API key of another backend")]
    OtherBackend,
    /// The store could not be read: 503, fail closed.
    #[error("API keys cannot be checked right now")]
    Unavailable,
}

/// What a key narrows its identity to, for the authorize layer.
#[derive(Debug, Clone)]
pub struct KeyGrant {
    /// The key's id (audit lines and `X-Attach-Key-Id` name it).
    pub id: Arc<str>,
    /// The models it may use; `None`: every model its identity may.
    models: Option<Arc<[ModelPattern]>>,
}

impl KeyGrant {
    /// Whether the key may use the canonical `model` (its identity's rules
    /// are judged besides).
    pub fn allows(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m.matches(model)))
    }
}

/// A key that was checked: the identity it acts as, and its grant.
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: Arc<Identity>,
    pub grant: KeyGrant,
}

#[derive(Clone)]
struct Cached {
    /// SHA-256 of the whole key: a cached id answers only its own key.
    hash: [u8; 32],
    verified: Verified,
    expires: u64,
    until: Instant,
}

/// What a user asks for when minting.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MintRequest {
    #[serde(default)]
    pub name: Option<String>,
    /// `30d`, `12h`, ... (at most `maxLifetime`).
    #[serde(default)]
    pub expires_in: Option<String>,
    /// Model names or globs, in the engine's grammar.
    #[serde(default)]
    pub models: Option<Vec<String>>,
}

/// A key as listed: never the key, never its seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    /// The user it acts as, and their issuer.
    pub user: String,
    pub issuer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    pub created: u64,
    pub expires: u64,
    pub expired: bool,
}

/// A key just minted: the one time the key itself is shown.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Minted {
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// One backend's keys.
pub struct KeyStore {
    records: Records,
    signing_key: Arc<[u8]>,
    backend: String,
    engine: Engine,
    max_lifetime: Duration,
    default_lifetime: Duration,
    cache_ttl: Duration,
    max_keys_per_user: u32,
    cache: Cache<String, Cached>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the signing key.
        f.debug_struct("KeyStore")
            .field("backend", &self.backend)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

/// The owner's part of key names: issuer and subject, hashed (a subject
/// may hold any character).
fn owner(identity: &Identity) -> String {
    owner_of(&identity.iss, &identity.sub)
}

fn owner_of(iss: &str, sub: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(iss.as_bytes());
    hash.update([0]);
    hash.update(sub.as_bytes());
    hex(&hash.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn info(record: &KeyRecord, now: u64) -> KeyInfo {
    KeyInfo {
        id: record.id.clone(),
        name: record.name.clone(),
        user: record.identity.user.clone(),
        issuer: record.identity.iss.clone(),
        models: record.models.clone(),
        created: record.created,
        expires: record.expires,
        expired: record.expires <= now,
    }
}

fn unavailable(error: &redis::RedisError) -> KeysError {
    tracing::warn!(error = %error, "the API key store cannot be reached");
    KeysError::Unavailable
}

/// Reads a lifetime such as `30d` or `12h`.
pub fn lifetime(text: &str, max: Duration) -> Result<Duration, KeysError> {
    let lifetime = humantime::parse_duration(text.trim()).map_err(|_| {
        KeysError::BadRequest(format!(
            "expiresIn {text:?} is not a duration such as 30d or 12h"
        ))
    })?;
    if lifetime < Duration::from_secs(1) {
        return Err(KeysError::BadRequest(
            "expiresIn must be at least 1s".into(),
        ));
    }
    if lifetime > max {
        return Err(KeysError::BadRequest(format!(
            "expiresIn exceeds this backend's maxLifetime of {}",
            humantime::format_duration(max)
        )));
    }
    Ok(lifetime)
}

impl KeyStore {
    /// The keys of `backend` on `redis`, as `config` says.
    pub fn new(
        config: &ApiKeysConfig,
        records: Records,
        backend: String,
        engine: Engine,
        cache_entries: usize,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            records,
            signing_key: Arc::from(config.signing_key.as_slice()),
            backend,
            engine,
            max_lifetime: config.max_lifetime,
            default_lifetime: config.default_lifetime,
            cache_ttl: config.cache_ttl,
            max_keys_per_user: config.max_keys_per_user,
            cache: Cache::new(cache_entries.max(1)),
            clock,
        }
    }

    fn grant(&self, record: &KeyRecord) -> KeyGrant {
        KeyGrant {
            id: Arc::from(record.id.as_str()),
            // Checked at mint; a pattern that no longer parses (an engine
            // change) matches nothing rather than everything.
            models: record.models.as_ref().map(|models| {
                models
                    .iter()
                    .filter_map(|m| ModelPattern::parse(self.engine, m).ok())
                    .collect()
            }),
        }
    }

    /// The identity and grant of `key`, or why it is refused.
    pub async fn verify(&self, key: &str) -> Result<Verified, KeyRefusal> {
        let presented: PresentedKey<'_> = format::parse(key).ok_or(KeyRefusal::Unknown)?;
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let now = self.clock.now();
        if let Some(cached) = self.cache.get(presented.id)
            && cached.hash == hash
            && cached.until > Instant::now()
        {
            if cached.expires <= now {
                return Err(KeyRefusal::Expired);
            }
            return Ok(cached.verified);
        }
        let stored: Option<String> = self.records.get(presented.id).await.map_err(|e| {
            tracing::warn!(error = %e, "the API key store cannot be reached");
            KeyRefusal::Unavailable
        })?;
        let stored = stored.ok_or(KeyRefusal::Unknown)?;
        let record = record::open(&self.signing_key, key, presented.id, &stored)
            .map_err(|_| KeyRefusal::Unknown)?;
        if record.backend != self.backend {
            return Err(KeyRefusal::OtherBackend);
        }
        if record.expires <= now {
            return Err(KeyRefusal::Expired);
        }
        let mut identity = record.identity.clone();
        identity.exp = record.expires;
        let verified = Verified {
            identity: Arc::new(identity),
            grant: self.grant(&record),
        };
        self.cache.insert(
            record.id.clone(),
            Cached {
                hash,
                verified: verified.clone(),
                expires: record.expires,
                until: Instant::now() + self.cache_ttl,
            },
        );
        Ok(verified)
    }

    /// Mints a key acting as `identity` (verified from a token, never a key).
    pub async fn mint(
        &self,
        identity: &Identity,
        request: MintRequest,
    ) -> Result<Minted, KeysError> {
        let name = request.name.unwrap_or_default();
        if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(KeysError::BadRequest(format!(
                "name must be at most {MAX_NAME} printable characters"
            )));
        }
        let lifetime = match &request.expires_in {
            Some(text) => lifetime(text, self.max_lifetime)?,
            None => self.default_lifetime,
        };
        if let Some(models) = &request.models {
            if self.engine == Engine::Mcp {
                return Err(KeysError::BadRequest(
                    "models do not apply to an MCP server's keys".into(),
                ));
            }
            if models.is_empty() || models.len() > MAX_MODELS {
                return Err(KeysError::BadRequest(format!(
                    "models must list 1 to {MAX_MODELS} names or globs"
                )));
            }
            for model in models {
                ModelPattern::parse(self.engine, model)
                    .map_err(|e| KeysError::BadRequest(format!("models: {model:?}: {e}")))?;
            }
        }
        let (key, id) = format::generate().map_err(|_| KeysError::Internal)?;
        let now = self.clock.now();
        let mut snapshot = identity.clone();
        snapshot.rendered_headers = std::sync::OnceLock::new();
        let record = KeyRecord {
            id: id.clone(),
            name,
            backend: self.backend.clone(),
            identity: snapshot,
            models: request.models,
            created: now,
            expires: now.saturating_add(lifetime.as_secs()),
        };
        let stored =
            record::seal(&self.signing_key, &key, &record).map_err(|_| KeysError::Internal)?;
        let new = NewRecord {
            id: &id,
            owner: &owner(identity),
            stored: &stored,
            expires: record.expires,
            keep_after: KEEP_EXPIRED,
        };
        let created = self
            .records
            .create(new, self.max_keys_per_user, now)
            .await
            .map_err(|e| unavailable(&e))?;
        if !created {
            return Err(KeysError::TooMany(self.max_keys_per_user));
        }
        Ok(Minted {
            key,
            info: info(&record, now),
        })
    }

    /// `owner`'s keys, or every key with `None`; expired ones included.
    pub async fn list(&self, owner_of: Option<&Identity>) -> Result<Vec<KeyInfo>, KeysError> {
        let owner_of_key = owner_of.map(owner);
        let mut ids = self
            .records
            .ids(owner_of_key.as_deref())
            .await
            .map_err(|e| unavailable(&e))?;
        ids.sort();
        let stored = self
            .records
            .values(&ids)
            .await
            .map_err(|e| unavailable(&e))?;
        let now = self.clock.now();
        Ok(stored
            .iter()
            .flatten()
            .filter_map(|s| record::peek(s))
            .filter(|r| {
                r.backend == self.backend
                    && owner_of.is_none_or(|o| r.identity.iss == o.iss && r.identity.sub == o.sub)
            })
            .map(|r| info(&r, now))
            .collect())
    }

    /// Revokes key `id`: its owner's (`by`), or anyone's when `admin`.
    /// Another user's key is "not found", as an unknown one is.
    pub async fn revoke(&self, id: &str, by: &Identity, admin: bool) -> Result<KeyInfo, KeysError> {
        if !format::is_id(id) {
            return Err(KeysError::NotFound);
        }
        let stored = self.records.get(id).await.map_err(|e| unavailable(&e))?;
        let record = stored
            .as_deref()
            .and_then(record::peek)
            .filter(|r| r.id == id && r.backend == self.backend)
            .ok_or(KeysError::NotFound)?;
        let owns = record.identity.iss == by.iss && record.identity.sub == by.sub;
        if !owns && !admin {
            return Err(KeysError::NotFound);
        }
        self.records
            .delete(id, &owner(&record.identity))
            .await
            .map_err(|e| unavailable(&e))?;
        // At once here; other replicas within `cacheTtl`.
        self.cache.remove(id);
        Ok(info(&record, self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::keys::records::memory::{self, Map};
    use crate::quota::clock::ManualClock;

    const NOW: u64 = 1_800_000_000;

    fn person(iss: &str, sub: &str) -> Identity {
        Identity {
            iss: iss.into(),
            sub: sub.into(),
            user: sub.into(),
            groups: vec!["staff".into()],
            roles: vec![],
            scopes: vec![],
            tenant: None,
            client: None,
            actors: vec![],
            machine: false,
            exp: NOW + 300,
            pod: None,
            node: None,
            claims: serde_json::Map::new(),
            rendered_headers: Default::default(),
        }
    }

    /// A store of `backend` over `records`, trusting a checked key for
    /// `cache_ttl`.
    fn store_on(records: &Arc<Mutex<Map>>, backend: &str, cache_ttl: Duration) -> KeyStore {
        let config = ApiKeysConfig {
            enabled: true,
            signing_key: vec![9; 32],
            cache_ttl,
            ..ApiKeysConfig::default()
        };
        KeyStore::new(
            &config,
            Records::Memory(records.clone()),
            backend.into(),
            Engine::Ollama,
            16,
            Arc::new(ManualClock::at(NOW)),
        )
    }

    fn request(name: &str, models: Option<Vec<String>>) -> MintRequest {
        MintRequest {
            name: Some(name.into()),
            expires_in: Some("1d".into()),
            models,
        }
    }

    #[test]
    fn a_lifetime_is_one_second_to_the_maximum() {
        let max = Duration::from_secs(86_400);
        assert_eq!(lifetime("1s", max).unwrap(), Duration::from_secs(1));
        assert_eq!(lifetime(" 1d ", max).unwrap(), max);
        for bad in ["0s", "500ms", "1d 1s", "soon", ""] {
            assert!(
                matches!(lifetime(bad, max), Err(KeysError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn names_and_model_lists_are_accepted_up_to_their_bounds() {
        let store = store_on(&Arc::default(), "b", Duration::ZERO);
        let alice = person("https://idp", "alice");
        let at = |n: usize| Some((0..n).map(|i| format!("m{i}")).collect::<Vec<_>>());
        assert!(
            store
                .mint(&alice, request(&"n".repeat(MAX_NAME), None))
                .await
                .is_ok()
        );
        assert!(
            store
                .mint(&alice, request("ok", at(MAX_MODELS)))
                .await
                .is_ok()
        );
        for refused in [
            request(&"n".repeat(MAX_NAME + 1), None),
            request("tab\there", None),
            request("many", at(MAX_MODELS + 1)),
            request("none", at(0)),
        ] {
            assert!(
                matches!(
                    store.mint(&alice, refused).await,
                    Err(KeysError::BadRequest(_))
                ),
                "refused"
            );
        }
    }

    #[tokio::test]
    async fn a_checked_key_is_trusted_for_the_cache_ttl_and_no_longer() {
        // Revoked on another replica: the record is gone from the shared
        // store, and this replica learns it when its cached check lapses.
        let records: Arc<Mutex<Map>> = Arc::default();
        let alice = person("https://idp", "alice");
        for (ttl, works_after_revocation) in
            [(Duration::from_secs(3600), true), (Duration::ZERO, false)]
        {
            let store = store_on(&records, "b", ttl);
            let minted = store.mint(&alice, request("k", None)).await.unwrap();
            assert!(store.verify(&minted.key).await.is_ok());
            memory::lock(&records).delete(&minted.info.id, &owner(&alice));
            let again = store.verify(&minted.key).await;
            assert_eq!(again.is_ok(), works_after_revocation, "cacheTtl {ttl:?}");
            if !works_after_revocation {
                assert!(matches!(again, Err(KeyRefusal::Unknown)));
            }
        }
    }

    #[tokio::test]
    async fn only_the_owner_or_an_administrator_revokes_a_key() {
        let records: Arc<Mutex<Map>> = Arc::default();
        let store = store_on(&records, "b", Duration::ZERO);
        let alice = person("https://idp", "alice");
        let minted = store.mint(&alice, request("k", None)).await.unwrap();
        let id = minted.info.id.as_str();
        for other in [
            person("https://idp", "bob"),
            person("https://evil", "alice"),
        ] {
            assert!(
                matches!(
                    store.revoke(id, &other, false).await,
                    Err(KeysError::NotFound)
                ),
                "{} at {}",
                other.sub,
                other.iss
            );
            assert!(store.verify(&minted.key).await.is_ok(), "still alive");
        }
        // Another backend's gateway on the same store: not its key, even
        // for its administrators.
        let elsewhere = store_on(&records, "other", Duration::ZERO);
        for admin in [false, true] {
            assert!(matches!(
                elsewhere.revoke(id, &alice, admin).await,
                Err(KeysError::NotFound)
            ));
        }
        assert!(store.verify(&minted.key).await.is_ok(), "still alive");
        let admin = person("https://idp", "root");
        assert_eq!(store.revoke(id, &admin, true).await.unwrap().id, id);
        assert!(matches!(
            store.verify(&minted.key).await,
            Err(KeyRefusal::Unknown)
        ));
        let again = store.mint(&alice, request("k2", None)).await.unwrap();
        assert!(store.revoke(&again.info.id, &alice, false).await.is_ok());
        assert!(matches!(
            store.revoke("not-an-id", &alice, true).await,
            Err(KeysError::NotFound)
        ));
    }

    #[tokio::test]
    async fn a_listing_shows_this_backends_keys_of_that_person_only() {
        let records: Arc<Mutex<Map>> = Arc::default();
        let ours = store_on(&records, "team-a/llm", Duration::ZERO);
        let theirs = store_on(&records, "team-b/llm", Duration::ZERO);
        let alice = person("https://idp", "alice");
        let mine = ours.mint(&alice, request("mine", None)).await.unwrap();
        let elsewhere = theirs.mint(&alice, request("b", None)).await.unwrap();
        // Another subject of the same issuer, and the same subject at
        // another issuer: whoever can write to Redis puts their keys in
        // alice's index.
        for other in [
            person("https://idp", "mallory"),
            person("https://evil", "alice"),
        ] {
            let planted = ours.mint(&other, request("planted", None)).await.unwrap();
            memory::lock(&records).tamper_index(&owner(&alice), &planted.info.id, NOW + 86_400);
        }
        let listed: Vec<String> = ours
            .list(Some(&alice))
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(listed, vec![mine.info.id.clone()]);
        let all: Vec<String> = ours
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(all.len(), 3, "every key of this backend: {all:?}");
        assert!(!all.contains(&elsewhere.info.id));
    }

    #[test]
    fn an_owner_is_one_issuer_and_subject_and_nothing_else() {
        let alice = owner_of("https://idp", "alice");
        assert_eq!(alice.len(), 32);
        assert!(
            alice
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(alice, owner_of("https://idp", "alice"), "stable");
        assert_eq!(owner(&person("https://idp", "alice")), alice);
        // SHA-256("https://idp" 0x00 "alice"), first 16 bytes.
        assert_eq!(alice, "558ba9c227886834f75f6479c3b033a3");
        for other in [
            owner_of("https://idp", "bob"),
            owner_of("https://other", "alice"),
            owner_of("https://idpa", "lice"),
        ] {
            assert_ne!(alice, other);
        }
    }

    #[test]
    fn hex_is_two_lower_case_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn the_debug_form_shows_the_backend_and_never_the_signing_key() {
        let config = ApiKeysConfig {
            enabled: true,
            signing_key: b"0123456789abcdef0123456789abcdef".to_vec(),
            ..ApiKeysConfig::default()
        };
        let store = KeyStore::new(
            &config,
            Records::Memory(Default::default()),
            "team-a/llm".into(),
            Engine::Ollama,
            4,
            Arc::new(ManualClock::at(0)),
        );
        let shown = format!("{store:?}");
        assert!(
            shown.starts_with("KeyStore { backend: \"team-a/llm\""),
            "{shown}"
        );
        assert!(
            !shown.contains("0123456789abcdef") && !shown.contains("48, 49"),
            "{shown}"
        );
    }
}
