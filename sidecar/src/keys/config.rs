//! The `apiKeys` section of the gateway config.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::Subjects;

/// The fewest bytes a signing key may have (HMAC-SHA-256's block of
/// strength: 256 bits).
pub const MIN_SIGNING_KEY_BYTES: usize = 32;

/// Personal API keys: static keys a user mints for the clients that take
/// nothing else, each bound to the identity it was minted for. Off unless
/// `enabled`; they need the Redis quota store (every replica must see the
/// same keys) and a signing key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Whether keys are accepted and `/.attach/keys` is served. When off, a
    /// key is refused with 401 `api_keys_disabled`, however valid.
    #[serde(default)]
    pub enabled: bool,
    /// The secret every stored key record is sealed with (HMAC-SHA-256),
    /// read from `signingKeyFile`. Without it, whoever can write to Redis
    /// could forge a key for anyone; with it, they can only delete keys.
    #[serde(skip)]
    pub signing_key: Vec<u8>,
    /// The file holding the signing key (a mounted Secret), at least 32
    /// bytes. Required when `enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    /// The longest a key may live. A key keeps the groups and roles its
    /// user had when it was minted, so this bounds how long a user who
    /// leaves a group keeps that group's access through a key (an
    /// administrator can revoke it sooner).
    #[serde(default = "default_max_lifetime", with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// A new key's lifetime when the request names none.
    #[serde(default = "default_lifetime", with = "humantime_serde")]
    pub default_lifetime: Duration,
    /// How long a replica trusts a key it has checked before reading it
    /// again: the longest a revoked key still works on another replica.
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// The most live keys one user may hold on this backend.
    #[serde(default = "default_max_keys_per_user")]
    pub max_keys_per_user: u32,
    /// Who may list and revoke every user's keys.
    #[serde(default)]
    pub admins: Subjects,
}

impl std::fmt::Debug for ApiKeysConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The signing key is never printed.
        f.debug_struct("ApiKeysConfig")
            .field("enabled", &self.enabled)
            .field("signing_key_file", &self.signing_key_file)
            .field("max_lifetime", &self.max_lifetime)
            .field("default_lifetime", &self.default_lifetime)
            .field("cache_ttl", &self.cache_ttl)
            .field("max_keys_per_user", &self.max_keys_per_user)
            .field("admins", &self.admins)
            .finish_non_exhaustive()
    }
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            signing_key: Vec::new(),
            signing_key_file: None,
            max_lifetime: default_max_lifetime(),
            default_lifetime: default_lifetime(),
            cache_ttl: default_cache_ttl(),
            max_keys_per_user: default_max_keys_per_user(),
            admins: Subjects::default(),
        }
    }
}

fn default_max_lifetime() -> Duration {
    Duration::from_secs(90 * 86_400)
}

fn default_lifetime() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_max_keys_per_user() -> u32 {
    20
}

impl ApiKeysConfig {
    /// Checks what serde cannot; `redis` says whether the quota store is
    /// Redis and `issuers` how many issuers are trusted. Returns the field
    /// at fault and why.
    pub fn validate(
        &self,
        redis: bool,
        issuers: usize,
    ) -> Result<(), (&'static str, &'static str)> {
        if !self.enabled {
            return Ok(());
        }
        if !redis {
            return Err((
                "apiKeys.enabled",
                "needs quotas.store type redis, so that every replica sees the same keys and revocations",
            ));
        }
        // Rendered configs name the file; the key is read when the file is
        // (`GatewayConfig::read_files`), and checked again here after that.
        let unread = self.signing_key.is_empty() && self.signing_key_file.is_some();
        if !unread && self.signing_key.len() < MIN_SIGNING_KEY_BYTES {
            return Err((
                "apiKeys.signingKeyFile",
                "must name a file of at least 32 bytes (the key records are sealed with it)",
            ));
        }
        if self.max_lifetime.is_zero() || self.default_lifetime.is_zero() {
            return Err(("apiKeys.maxLifetime", "lifetimes must be above zero"));
        }
        if self.default_lifetime > self.max_lifetime {
            return Err(("apiKeys.defaultLifetime", "must not exceed maxLifetime"));
        }
        if self.cache_ttl > Duration::from_secs(300) {
            return Err((
                "apiKeys.cacheTtl",
                "must be at most 5m: it is how long a revoked key keeps working",
            ));
        }
        if self.max_keys_per_user == 0 {
            return Err(("apiKeys.maxKeysPerUser", "must be at least 1"));
        }
        if self.admins.any_authenticated {
            return Err((
                "apiKeys.admins",
                "anyAuthenticated would let every caller revoke every key",
            ));
        }
        if issuers > 1 && self.admins.names_anyone() && self.admins.issuer.is_none() {
            return Err((
                "apiKeys.admins.issuer",
                "is required with several issuers: names are unique only within one",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> ApiKeysConfig {
        ApiKeysConfig {
            enabled: true,
            signing_key: vec![7; 32],
            ..ApiKeysConfig::default()
        }
    }

    #[test]
    fn unset_settings_take_the_documented_defaults() {
        let parsed: ApiKeysConfig =
            serde_json::from_str(r#"{"enabled": true, "signingKeyFile": "/k"}"#).unwrap();
        assert_eq!(parsed.max_lifetime, Duration::from_secs(90 * 86_400));
        assert_eq!(parsed.default_lifetime, Duration::from_secs(30 * 86_400));
        assert_eq!(parsed.cache_ttl, Duration::from_secs(10));
        assert_eq!(parsed.max_keys_per_user, 20);
        assert_eq!(parsed.admins, Subjects::default());
        assert_eq!(
            parsed,
            ApiKeysConfig {
                enabled: true,
                signing_key_file: Some("/k".into()),
                ..ApiKeysConfig::default()
            },
            "the same defaults with nothing parsed"
        );
    }

    #[test]
    fn the_debug_form_shows_the_settings_and_never_the_signing_key() {
        let config = ApiKeysConfig {
            signing_key: b"0123456789abcdef0123456789abcdef".to_vec(),
            signing_key_file: Some("/etc/attach/secrets/api-keys-signing-key".into()),
            ..enabled()
        };
        let shown = format!("{config:?}");
        assert!(
            shown.starts_with("ApiKeysConfig { enabled: true")
                && shown.contains("api-keys-signing-key")
                && shown.contains("max_keys_per_user: 20"),
            "{shown}"
        );
        for secret in ["0123456789abcdef", "48, 49, 50"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn each_unusable_setting_is_refused_with_its_field() {
        type Change = fn(&mut ApiKeysConfig);
        let cases: &[(Change, bool, usize, Option<&str>)] = &[
            (|_| {}, true, 1, None),
            (|c| c.enabled = false, false, 1, None),
            (|_| {}, false, 1, Some("apiKeys.enabled")),
            (
                |c| c.signing_key = vec![1; 31],
                true,
                1,
                Some("apiKeys.signingKeyFile"),
            ),
            (
                |c| c.signing_key = Vec::new(),
                true,
                1,
                Some("apiKeys.signingKeyFile"),
            ),
            (
                |c| {
                    c.signing_key = Vec::new();
                    c.signing_key_file = Some("/etc/attach/key".into());
                },
                true,
                1,
                None,
            ),
            (
                |c| c.max_lifetime = Duration::ZERO,
                true,
                1,
                Some("apiKeys.maxLifetime"),
            ),
            (
                |c| c.default_lifetime = c.max_lifetime + Duration::from_secs(1),
                true,
                1,
                Some("apiKeys.defaultLifetime"),
            ),
            (
                |c| c.cache_ttl = Duration::from_secs(301),
                true,
                1,
                Some("apiKeys.cacheTtl"),
            ),
            (|c| c.cache_ttl = Duration::from_secs(300), true, 1, None),
            (|c| c.default_lifetime = c.max_lifetime, true, 1, None),
            (|c| c.max_keys_per_user = 1, true, 1, None),
            (
                |c| c.max_keys_per_user = 0,
                true,
                1,
                Some("apiKeys.maxKeysPerUser"),
            ),
            (
                |c| c.admins.any_authenticated = true,
                true,
                1,
                Some("apiKeys.admins"),
            ),
            (
                |c| c.admins = Subjects::groups(&["ops"]),
                true,
                2,
                Some("apiKeys.admins.issuer"),
            ),
            (
                |c| c.admins = Subjects::groups(&["ops"]).of_issuer("https://idp"),
                true,
                2,
                None,
            ),
            (|c| c.admins = Subjects::groups(&["ops"]), true, 1, None),
        ];
        for (i, (change, redis, issuers, field)) in cases.iter().enumerate() {
            let mut config = enabled();
            change(&mut config);
            let got = config.validate(*redis, *issuers).err().map(|(f, _)| f);
            assert_eq!(got, *field, "case {i}");
        }
    }

    #[test]
    fn the_signing_key_is_never_printed_or_serialized() {
        let config = ApiKeysConfig {
            signing_key: b"super-secret-signing-key-material!!".to_vec(),
            ..enabled()
        };
        assert!(!format!("{config:?}").contains("super-secret"));
        let yaml = serde_yaml::to_string(&config).unwrap();
        assert!(!yaml.contains("super-secret") && !yaml.contains("signingKey:"));
    }
}
