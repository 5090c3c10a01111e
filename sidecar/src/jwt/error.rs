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
        }
    }
}
