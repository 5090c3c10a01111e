//! Why a request's credentials were refused.

/// A refusal by the authentication step. Each variant maps to one HTTP
/// answer (see `rescue`) and one metric reason; none carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header at all.
    #[error("a bearer token is required")]
    MissingToken,
    /// The token cannot be parsed as a JWS compact serialisation.
    #[error("malformed token")]
    Malformed,
    /// Larger than any real access token; refused before parsing.
    #[error("token too large")]
    TooLarge,
    /// `alg` is `none`, HMAC, unknown, or not in the issuer's allow-list.
    #[error("signing algorithm not allowed")]
    AlgorithmNotAllowed,
    /// The header names extensions (`crit`) this gateway does not implement.
    #[error("unsupported critical header")]
    UnsupportedCritical,
    /// `iss` is absent or not a configured issuer.
    #[error("untrusted issuer")]
    UntrustedIssuer,
    /// No key in the issuer's JWKS has the token's `kid`.
    #[error("unknown signing key")]
    UnknownKey,
    /// The key's type or declared `alg` does not fit the token's `alg`.
    #[error("key does not match the signing algorithm")]
    KeyMismatch,
    #[error("invalid signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `aud` is absent or names none of the accepted audiences.
    #[error("audience not accepted")]
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud`) is absent.
    #[error("missing {0} claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong type (a string `exp`, say).
    #[error("invalid {0} claim")]
    InvalidClaim(&'static str),
    /// The mapped user claim is absent or empty.
    #[error("token has no user claim")]
    NoUser,
    /// The `act` chain is longer than the gateway accepts (it is refused,
    /// never cut short).
    #[error("actor chain too long")]
    ActorChainTooLong,
    /// Verified, but without a required scope: 403 `insufficient_scope`.
    #[error("insufficient scope")]
    InsufficientScope { required: Vec<String> },
    /// The issuer's keys have never been loaded: 503, fail closed.
    #[error("signing keys are not available yet")]
    KeysUnavailable,
    /// `Authorization` and `X-Api-Key`/`Api-Key` carry different
    /// credentials: which one is meant cannot be told, so neither is used.
    #[error("the Authorization and API key headers carry different credentials")]
    ConflictingCredentials,
    /// A personal API key, on a backend with `apiKeys` off.
    #[error("API keys are off for this backend")]
    ApiKeysDisabled,
    /// Not a key this backend minted, or revoked.
    #[error("unknown or revoked API key")]
    ApiKeyUnknown,
    #[error("API key expired")]
    ApiKeyExpired,
    /// A key minted on another backend.
    #[error("API key of another backend")]
    ApiKeyOtherBackend,
    /// The key's issuer has the gateway exchange tokens for the model,
    /// which needs the caller's own token.
    #[error(
        "this backend exchanges tokens for the model: use a token from the identity provider, not an API key"
    )]
    ApiKeyNotExchangeable,
    /// The key store cannot be read: 503, fail closed.
    #[error("API keys cannot be checked right now")]
    ApiKeyStoreUnavailable,
}

impl AuthError {
    /// The label used in metrics and audit lines.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::Malformed => "malformed_token",
            Self::TooLarge => "token_too_large",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnsupportedCritical => "unsupported_critical_header",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::UnknownKey => "unknown_key",
            Self::KeyMismatch => "key_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::NoUser => "no_user",
            Self::ActorChainTooLong => "actor_chain_too_long",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::KeysUnavailable => "keys_unavailable",
            Self::ConflictingCredentials => "conflicting_credentials",
            Self::ApiKeysDisabled => "api_keys_disabled",
            Self::ApiKeyUnknown => "api_key_unknown",
            Self::ApiKeyExpired => "api_key_expired",
            Self::ApiKeyOtherBackend => "api_key_other_backend",
            Self::ApiKeyNotExchangeable => "api_key_not_exchangeable",
            Self::ApiKeyStoreUnavailable => "api_key_store_unavailable",
        }
    }
}
