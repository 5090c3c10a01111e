//! Verifies a bearer token: issuer by `iss`, key by `kid`, algorithm against
//! the allow-list and the key, signature, then `exp`/`nbf`/`iat` with leeway,
//! exact `iss`, `aud` any-of, required scopes, and the user claim.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::error::AuthError;
use super::jwks::JwksCache;
use super::keys::VerifyingKey;
use super::token_cache::{TokenCache, hash_token};
use crate::claims::{Identity, MappingError, ResolvedMapping};
use crate::config::IssuerConfig;
use crate::metrics::{Metrics, VerifyLabels};

/// Tokens longer than this are refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What the gateway checks for one issuer.
#[derive(Debug)]
pub struct IssuerPolicy {
    pub jwks: Arc<JwksCache>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    validation: Validation,
    required_scopes: Vec<String>,
    mapping: ResolvedMapping,
    /// The issuer, for metric labels.
    issuer: String,
}

impl IssuerPolicy {
    /// Builds the checks for `config`, verifying with keys from `jwks`.
    pub fn new(config: &IssuerConfig, jwks: Arc<JwksCache>) -> Result<Self, String> {
        let algorithms: Vec<Algorithm> = config.algorithms.iter().map(|a| a.to_jwt()).collect();
        let leeway = config.leeway.as_secs();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = algorithms.clone();
        validation.leeway = leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_audience(&config.audiences);
        validation.set_issuer(&[&config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        Ok(Self {
            jwks,
            algorithms,
            leeway,
            validation,
            required_scopes: config.required_scopes.clone(),
            mapping: config
                .claims
                .resolve()?
                .with_user_clients(&config.user_clients),
            issuer: config.issuer.clone(),
        })
    }
}

/// The verifier of one config generation.
#[derive(Debug)]
pub struct Verifier {
    issuers: HashMap<String, IssuerPolicy>,
    cache: TokenCache,
    forward_claims: Vec<String>,
    metrics: Arc<Metrics>,
}

/// The parts of a JOSE header the gateway reads.
struct JoseHeader {
    alg: Algorithm,
    kid: Option<String>,
}

impl Verifier {
    pub fn new(
        issuers: Vec<(String, IssuerPolicy)>,
        cache_entries: usize,
        forward_claims: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            issuers: issuers.into_iter().collect(),
            cache: TokenCache::new(cache_entries),
            forward_claims,
            metrics,
        }
    }

    /// The issuers' key caches, for readiness and status.
    pub fn key_caches(&self) -> impl Iterator<Item = &Arc<JwksCache>> {
        self.issuers.values().map(|p| &p.jwks)
    }

    /// Whether every issuer has keys (and there is at least one issuer).
    pub fn is_ready(&self) -> bool {
        !self.issuers.is_empty() && self.issuers.values().all(|p| p.jwks.is_loaded())
    }

    /// How many tokens are cached as verified.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Verifies `token` and returns the caller's identity.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        let started = Instant::now();
        let now = unix_now();
        let hash = hash_token(token);
        let mut revoked = false;
        let cached = self.cache.get(&hash, now, |identity, key| {
            let present = self
                .issuers
                .get(&identity.iss)
                .and_then(|p| p.jwks.keys())
                .is_some_and(|keys| keys.contains(key));
            revoked = !present;
            present
        });
        if let Some(identity) = cached {
            self.observe("hit", started);
            return Ok(identity);
        }
        if revoked {
            self.metrics.token_cache_revoked.inc();
        }
        let result = self.verify_uncached(token, now).await;
        self.observe("miss", started);
        let (identity, valid_until, key) = result?;
        self.cache.insert(hash, identity.clone(), valid_until, key);
        Ok(identity)
    }

    fn observe(&self, cache: &'static str, started: Instant) {
        self.metrics
            .verify_duration
            .get_or_create(&VerifyLabels { cache })
            .observe(started.elapsed().as_secs_f64());
    }

    /// The checks behind [`Self::verify`], at `now` (seconds since the epoch).
    pub(super) async fn verify_uncached(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(Arc<Identity>, u64, [u8; 32]), AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature.is_empty() {
            return Err(AuthError::Malformed);
        }
        let header = parse_header(header_b64)?;
        let unverified = decode_object(payload_b64)?;
        let issuer = match unverified.get("iss") {
            Some(Value::String(iss)) => iss,
            Some(_) => return Err(AuthError::InvalidClaim("iss")),
            None => return Err(AuthError::MissingClaim("iss")),
        };
        // Refused either way; checked first so the answer names the problem.
        for name in ["exp", "nbf", "iat"] {
            numeric_claim(&unverified, name)?;
        }
        let policy = self.issuers.get(issuer).ok_or(AuthError::UntrustedIssuer)?;
        if !policy.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let key = self.find_key(policy, &header).await?;

        // jsonwebtoken wants every listed algorithm to fit the key's family;
        // the allow-list was checked above, so pin it to this token's.
        let mut validation = policy.validation.clone();
        validation.algorithms = vec![header.alg];
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| map_jwt_error(e.kind()))?
            .claims;

        let exp = numeric_claim(&claims, "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
        if let Some(iat) = numeric_claim(&claims, "iat")?
            && iat > now.saturating_add(policy.leeway)
        {
            return Err(AuthError::IssuedInFuture);
        }
        let mapped = policy
            .mapping
            .identity(&claims, exp, &self.forward_claims)
            .map_err(|e| match e {
                MappingError::NoUser => AuthError::NoUser,
                MappingError::InvalidActor => AuthError::InvalidClaim("act"),
                MappingError::TooManyActors => AuthError::ActorChainTooLong,
                MappingError::NoWorkload => AuthError::InvalidClaim("kubernetes.io"),
            })?;
        for claim in mapped.ignored {
            // Once per verified token: the identity is cached with it.
            self.metrics.claim_ignored(&policy.issuer, claim);
            tracing::debug!(issuer = %policy.issuer, claim, "claim of an unexpected shape ignored");
        }
        let identity = mapped.identity;
        let missing: Vec<String> = policy
            .required_scopes
            .iter()
            .filter(|s| !identity.scopes.contains(s))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(AuthError::InsufficientScope {
                required: policy.required_scopes.clone(),
            });
        }
        Ok((
            Arc::new(identity),
            exp.saturating_add(policy.leeway),
            key.fingerprint,
        ))
    }

    async fn find_key(
        &self,
        policy: &IssuerPolicy,
        header: &JoseHeader,
    ) -> Result<Arc<VerifyingKey>, AuthError> {
        let keys = policy.jwks.keys().ok_or(AuthError::KeysUnavailable)?;
        let key = match &header.kid {
            Some(kid) => match keys.get(kid) {
                Some(key) => key.clone(),
                None => policy
                    .jwks
                    .key_for_unknown_kid(kid)
                    .await
                    .ok_or(AuthError::UnknownKey)?,
            },
            // Without a kid, only an unambiguous key is used.
            None => {
                let mut fitting = keys.candidates(header.alg);
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => key.clone(),
                    _ => return Err(AuthError::UnknownKey),
                }
            }
        };
        if !key.fits(header.alg) {
            return Err(AuthError::KeyMismatch);
        }
        Ok(key)
    }
}

fn parse_header(b64: &str) -> Result<JoseHeader, AuthError> {
    let header = decode_object(b64)?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg,
        _ => return Err(AuthError::Malformed),
    };
    // `none`, HMAC and anything unknown stop here, whatever the allow-list.
    let alg = crate::config::Algorithm::parse(alg)
        .ok_or(AuthError::AlgorithmNotAllowed)?
        .to_jwt();
    if header.contains_key("crit") {
        return Err(AuthError::UnsupportedCritical);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    Ok(JoseHeader { alg, kid })
}

fn decode_object(b64: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed),
    }
}

/// A NumericDate claim: absent, or a non-negative number below 2^64. That
/// is the range jsonwebtoken reads `exp` and `nbf` in, so a value it could
/// not read is refused here first, with the claim's name.
fn numeric_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, AuthError> {
    const BEYOND_U64: f64 = u64::MAX as f64;
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| (0.0..BEYOND_U64).contains(f))
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or(AuthError::InvalidClaim(name)),
    }
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::UntrustedIssuer,
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => AuthError::MissingClaim("exp"),
            "aud" => AuthError::WrongAudience,
            "iss" => AuthError::MissingClaim("iss"),
            _ => AuthError::Malformed,
        },
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::AlgorithmNotAllowed,
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => AuthError::KeyMismatch,
        _ => AuthError::Malformed,
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
