//! Why a key could not be minted, listed or revoked.

use http::StatusCode;

/// A refusal or failure of `/.attach/keys`. None carries a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// `apiKeys.enabled` is off for this backend: 404.
    #[error("API keys are off for this backend")]
    Disabled,
    /// Keys are managed with a token from the identity provider: a key
    /// cannot mint, list or revoke keys (it would outlive itself): 403.
    #[error("API keys are managed with a token from the identity provider, not with an API key")]
    KeyCannotManage,
    /// Listing every key is for administrators: 403.
    #[error("only the backend's key administrators may list every key")]
    NotAdmin,
    /// No such key (or another user's): 404.
    #[error("no such key")]
    NotFound,
    /// Not a method `/.attach/keys` answers: 405.
    #[error("method not allowed")]
    Method,
    /// The request cannot be read or asks for what is not allowed: 400.
    #[error("{0}")]
    BadRequest(String),
    /// The caller holds the most live keys allowed: 409.
    #[error("you hold the most live keys allowed on this backend ({0}); revoke one first")]
    TooMany(u32),
    /// The key store cannot be reached: 503.
    #[error("the API key store cannot be reached")]
    Unavailable,
    /// A key could not be made (randomness, serialisation): 500.
    #[error("internal error")]
    Internal,
}

impl KeysError {
    /// The HTTP status and the `error` code of the answer.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Disabled => (StatusCode::NOT_FOUND, "api_keys_disabled"),
            Self::KeyCannotManage => (StatusCode::FORBIDDEN, "api_key_cannot_manage_keys"),
            Self::NotAdmin => (StatusCode::FORBIDDEN, "not_key_admin"),
            Self::NotFound => (StatusCode::NOT_FOUND, "no_such_key"),
            Self::Method => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::TooMany(_) => (StatusCode::CONFLICT, "too_many_keys"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "api_keys_unavailable"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}
