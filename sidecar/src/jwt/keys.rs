//! Verification keys parsed out of a JWKS document.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, OctetKeyPairParameters, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;
use sha2::Digest;

/// One public key that may verify token signatures.
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    /// The `alg` the JWKS pins the key to, if any.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
    /// SHA-256 of the key material (and its `kid`): the same key in a later
    /// key set has the same fingerprint.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Whether this key may verify a token signed with `alg`: same key type,
    /// and the key's own `alg`, when it names one, is exactly `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    without_kid: Vec<Arc<VerifyingKey>>,
    fingerprints: std::collections::HashSet<[u8; 32]>,
    /// Entries skipped: symmetric, encryption-only, or unparseable keys.
    pub skipped: usize,
}

impl KeySet {
    /// Parses a JWKS (`{"keys": [...]}`), keeping only asymmetric signature
    /// keys. Symmetric (`oct`) keys are dropped: a shared secret published in
    /// a JWKS would let anyone mint tokens.
    pub fn from_jwks(doc: &Value) -> Self {
        let mut set = Self::default();
        let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
            return set;
        };
        for raw in keys {
            match serde_json::from_value::<Jwk>(raw.clone())
                .ok()
                .and_then(|jwk| parse_key(&jwk))
            {
                Some(key) => set.insert(key),
                None => set.skipped += 1,
            }
        }
        set
    }

    fn insert(&mut self, key: VerifyingKey) {
        self.fingerprints.insert(key.fingerprint);
        let key = Arc::new(key);
        match &key.kid {
            Some(kid) => {
                self.by_kid.insert(kid.clone(), key);
            }
            None => self.without_kid.push(key),
        }
    }

    /// How many usable keys there are.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    /// Whether there are no usable keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the key with this fingerprint is in the set.
    pub fn contains(&self, fingerprint: &[u8; 32]) -> bool {
        self.fingerprints.contains(fingerprint)
    }

    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyingKey>> {
        self.by_kid.get(kid)
    }

    /// Candidates for a token without `kid`: every key that fits `alg`.
    pub fn candidates(&self, alg: Algorithm) -> impl Iterator<Item = &Arc<VerifyingKey>> {
        self.by_kid
            .values()
            .chain(self.without_kid.iter())
            .filter(move |k| k.fits(alg))
    }
}

fn parse_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
        AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
        // jsonwebtoken takes the first 32 bytes of `x` when it verifies:
        // a shorter key would panic there, so only a whole Ed25519 key is
        // kept.
        AlgorithmParameters::OctetKeyPair(okp) if is_ed25519_public_key(okp) => AlgorithmFamily::Ed,
        // Symmetric (`oct`) and unknown key types never verify anything.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(declared) => Some(signature_algorithm(declared)?),
    };
    if alg.is_some_and(|a| a.family() != family) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let material = serde_json::to_vec(&(&jwk.algorithm, &jwk.common.key_id, alg)).ok()?;
    Some(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        family,
        alg,
        key,
        fingerprint: sha2::Sha256::digest(&material).into(),
    })
}

/// An Ed25519 public key: the curve, and `x` of exactly 32 bytes.
fn is_ed25519_public_key(okp: &OctetKeyPairParameters) -> bool {
    use base64::Engine as _;
    okp.curve == EllipticCurve::Ed25519
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&okp.x)
            .is_ok_and(|x| x.len() == 32)
}

/// The asymmetric signature algorithm a JWK declares; `None` for HMAC and
/// encryption algorithms, whose keys are dropped.
fn signature_algorithm(declared: KeyAlgorithm) -> Option<Algorithm> {
    Some(match declared {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
