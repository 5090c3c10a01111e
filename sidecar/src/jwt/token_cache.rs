//! Tokens already verified, so that a client reusing its token does not pay
//! for a signature check on every request.
//!
//! Keyed by the SHA-256 of the token (the token itself is never stored), held
//! until the token's `exp` plus leeway, bounded in entries (least recently
//! used entries are evicted first).

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

    /// The identity of a token verified before, if it is still valid at `now`.
    pub fn get(&self, hash: &TokenHash, now: u64) -> Option<Arc<Identity>> {
        let entry = self.entries.get(hash)?;
        if now > entry.valid_until {
            self.entries.remove(hash);
            return None;
        }
        Some(entry.identity)
    }

    /// Remembers a verified token until `valid_until`.
    pub fn insert(&self, hash: TokenHash, identity: Arc<Identity>, valid_until: u64) {
        self.entries.insert(
            hash,
            Entry {
                identity,
                valid_until,
            },
        );
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
