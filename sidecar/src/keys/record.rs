//! What is stored for a key, and the seal that binds it to the key.
//!
//! A record is stored as `v1.<seal>.<json>`: the seal is HMAC-SHA-256,
//! under the backend's signing key, of the whole key and the record's JSON.
//! So the store holds no key, nothing a key can be recovered from offline,
//! and nothing a writer to the store can forge: a record made or altered
//! without the signing key fails to open, whatever key is presented.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::claims::Identity;

/// A key's record: who it acts as, where, for what, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// The key's public id.
    pub id: String,
    /// The name its owner gave it.
    pub name: String,
    /// The backend it was minted on (`namespace/name`): another backend
    /// refuses it.
    pub backend: String,
    /// The identity it acts as: the minting token's, as verified then.
    pub identity: Identity,
    /// The models it may use, when narrower than the identity's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// When it was minted (seconds since the epoch).
    pub created: u64,
    /// When it expires (seconds since the epoch).
    pub expires: u64,
}

const VERSION: &str = "v1";

/// Why a stored record was not accepted for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the stored record is malformed")]
    Malformed,
    /// Made or altered without the signing key, or for another key.
    #[error("the stored record's seal does not match")]
    BadSeal,
}

fn message(key: &str, json: &str) -> Vec<u8> {
    // A key is base62 and `_`: no newline, so the split is unambiguous.
    let mut message = Vec::with_capacity(key.len() + 1 + json.len());
    message.extend_from_slice(key.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(json.as_bytes());
    message
}

/// The stored form of `record` for `key`.
pub fn seal(
    signing_key: &[u8],
    key: &str,
    record: &KeyRecord,
) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(record)?;
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, signing_key),
        &message(key, &json),
    );
    Ok(format!(
        "{VERSION}.{}.{json}",
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    ))
}

fn split(stored: &str) -> Result<(&str, &str), OpenError> {
    stored
        .strip_prefix(VERSION)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.split_once('.'))
        .ok_or(OpenError::Malformed)
}

/// The record stored for `key` (whose id is `id`), if its seal holds.
pub fn open(signing_key: &[u8], key: &str, id: &str, stored: &str) -> Result<KeyRecord, OpenError> {
    let (tag, json) = split(stored)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| OpenError::Malformed)?;
    // Constant time.
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, signing_key),
        &message(key, json),
        &tag,
    )
    .map_err(|_| OpenError::BadSeal)?;
    let record: KeyRecord = serde_json::from_str(json).map_err(|_| OpenError::Malformed)?;
    if record.id != id {
        return Err(OpenError::BadSeal);
    }
    Ok(record)
}

/// A stored record read without its key, for listings: its seal cannot be
/// checked, so nothing read this way is ever trusted to authenticate.
pub fn peek(stored: &str) -> Option<KeyRecord> {
    serde_json::from_str(split(stored).ok()?.1).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::identity;

    const SIGNING: &[u8] = b"0123456789abcdef0123456789abcdef";
    const KEY: &str = "attach_AAAAAAAAAAAA_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const OTHER: &str = "attach_AAAAAAAAAAAA_cbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn record() -> KeyRecord {
        KeyRecord {
            id: "AAAAAAAAAAAA".into(),
            name: "laptop".into(),
            backend: "team/llm".into(),
            identity: identity("alice", &["eng"]),
            models: Some(vec!["small".into()]),
            created: 1,
            expires: 2,
        }
    }

    #[test]
    fn a_sealed_record_opens_with_its_key_only() {
        let stored = seal(SIGNING, KEY, &record()).unwrap();
        assert!(!stored.contains(&KEY[20..]), "the key is stored");
        assert_eq!(open(SIGNING, KEY, "AAAAAAAAAAAA", &stored), Ok(record()));
        assert_eq!(
            open(SIGNING, OTHER, "AAAAAAAAAAAA", &stored),
            Err(OpenError::BadSeal)
        );
        assert_eq!(
            open(
                b"another-signing-key-of-32-bytes!",
                KEY,
                "AAAAAAAAAAAA",
                &stored
            ),
            Err(OpenError::BadSeal)
        );
        assert_eq!(peek(&stored), Some(record()));
    }

    #[test]
    fn a_record_altered_in_the_store_does_not_open() {
        let stored = seal(SIGNING, KEY, &record()).unwrap();
        // A writer to the store widens the models, or the groups, or swaps
        // the id: each breaks the seal.
        for (from, to) in [
            ("\"small\"", "\"large\""),
            ("\"eng\"", "\"admin\""),
            ("\"expires\":2", "\"expires\":9"),
        ] {
            assert!(stored.contains(from), "{from}");
            let altered = stored.replacen(from, to, 1);
            assert_eq!(
                open(SIGNING, KEY, "AAAAAAAAAAAA", &altered),
                Err(OpenError::BadSeal),
                "{from} -> {to}"
            );
        }
        // A record forged with the right shape but no signing key.
        let forged = seal(b"guessed-signing-key-of-32-bytes!", KEY, &record()).unwrap();
        assert_eq!(
            open(SIGNING, KEY, "AAAAAAAAAAAA", &forged),
            Err(OpenError::BadSeal)
        );
        // The right record under another id.
        assert_eq!(
            open(SIGNING, KEY, "BBBBBBBBBBBB", &stored),
            Err(OpenError::BadSeal)
        );
        for malformed in ["", "v1", "v1.", "v2.x.{}", "v1.!!.{}", "v1.AAAA"] {
            assert_eq!(
                open(SIGNING, KEY, "AAAAAAAAAAAA", malformed),
                Err(OpenError::Malformed),
                "{malformed:?}"
            );
        }
    }
}
