//! Tokens already verified, so that a client reusing its token does not pay
//! for a signature check on every request.
//!
//! Keyed by the SHA-256 of the token (the token itself is never stored), held
//! until the token's `exp` plus leeway, or until the key that verified it
//! leaves the issuer's key set (a key refresh that drops a `kid` revokes
//! every cached verification made with it), bounded in entries (least
//! recently used entries are evicted first).

use std::sync::Arc;

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

use crate::claims::Identity;

/// The SHA-256 of a token.
pub type TokenHash = [u8; 32];

/// Hashes a token for use as a cache key.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Clone)]
struct Entry {
    identity: Arc<Identity>,
    /// Past this second (exp + leeway) the entry is dead.
    valid_until: u64,
    /// The key that verified it: once that key leaves the issuer's key set,
    /// the entry is dead too.
    key: [u8; 32],
}

/// A bounded map from token hash to verified identity.
pub struct TokenCache {
    entries: Cache<TokenHash, Entry>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("len", &self.entries.len())
            .finish()
    }
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Cache::new(capacity.max(1)),
        }
    }

    /// The identity of a token verified before, if it is still valid at
    /// `now` and `key_present` says the key that verified it is still in
    /// the key set. A dead entry is removed.
    pub fn get(
        &self,
        hash: &TokenHash,
        now: u64,
        key_present: impl FnOnce(&Identity, &[u8; 32]) -> bool,
    ) -> Option<Arc<Identity>> {
        let entry = self.entries.get(hash)?;
        if now > entry.valid_until || !key_present(&entry.identity, &entry.key) {
            self.entries.remove(hash);
            return None;
        }
        Some(entry.identity)
    }

    /// Remembers a token verified with `key` until `valid_until`.
    pub fn insert(
        &self,
        hash: TokenHash,
        identity: Arc<Identity>,
        valid_until: u64,
        key: [u8; 32],
    ) {
        self.entries.insert(
            hash,
            Entry {
                identity,
                valid_until,
                key,
            },
        );
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}
