//! Every way the gateway refuses or fails a request. The rescue layer turns
//! each into exactly one HTTP answer; nothing else writes error responses.

use crate::jwt::AuthError;
use crate::policy::DenyKind;
use crate::policy::endpoint::PathError;

/// A request the gateway did not forward, or could not complete.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The caller is not authenticated: 401 (403 for insufficient scope,
    /// 503 while no keys are loaded).
    #[error("{error}")]
    Auth {
        error: AuthError,
        /// The RFC 9728 metadata URL for the `WWW-Authenticate` challenge.
        resource_metadata: Option<String>,
        /// The scopes a 401's challenge names (RFC 6750 §3): for an MCP
        /// server, those its metadata advertises, so a client knows what to
        /// ask the IdP for.
        scope: Option<String>,
    },
    /// The backend is configured to deny everything (fail closed): 403.
    #[error("this backend denies all requests: {0}")]
    DenyAll(&'static str),
    /// No rule allows this caller this endpoint or model: 403.
    #[error("access denied: {}", .0.as_str())]
    Forbidden(DenyKind),
    /// The path cannot be normalised: 400.
    #[error("bad request path: {0}")]
    BadPath(PathError),
    /// The request body could not be read: 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The body (or a model name) is one the model server could read
    /// differently from the gateway, or not at all: 400.
    #[error("bad request: {0}")]
    BadBody(crate::canonical::BodyError),
    /// An MCP request body that is not a JSON-RPC message the gateway can
    /// judge, or whose MCP headers disagree with it: 400.
    #[error("bad MCP request: {0}")]
    BadMessage(crate::mcp::message::MessageError),
    /// A client header the gateway cannot forward safely: 400.
    #[error("bad request: {0}")]
    BadHeader(crate::proxy::client_headers::HeaderError),
    /// A quota has no room: 429 with `Retry-After`.
    #[error("quota {} exceeded: {}", .0.limit_name, .0.kind.as_str())]
    QuotaExceeded(crate::quota::Refusal),
    /// The shared quota store is down and quotas fail closed: 503.
    #[error("quotas cannot be checked right now")]
    QuotaUnavailable,
    /// The quota store is full of budgets it must keep: 503.
    #[error("the quota store is full")]
    QuotaStoreFull,
    /// The gateway is at a bound it sheds load at (requests in flight, or
    /// request bytes buffered): 503 with `Retry-After`, at once.
    #[error("the gateway is overloaded: {0}")]
    Overloaded(&'static str),
    /// The request body did not arrive in time: 408.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The request body is over the limit: 413.
    #[error("request body over {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// The model could not be reached or failed mid-request: 502.
    #[error("the model is unavailable")]
    UpstreamUnavailable,
    /// The model did not connect or answer in time: 504.
    #[error("the model did not answer in time")]
    UpstreamTimeout,
    /// A bug or an impossible state: 500.
    #[error("internal error")]
    Internal,
    /// The token exchange failed; nothing was forwarded.
    #[error("{0}")]
    Exchange(crate::exchange::ExchangeError),
    /// A `/.attach/keys` request refused or failed.
    #[error("{0}")]
    Keys(crate::keys::KeysError),
}

impl GatewayError {
    /// The label used in metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Auth { error, .. } => error.reason(),
            Self::DenyAll(_) => "deny_all",
            Self::Forbidden(kind) => match kind {
                DenyKind::Subject => "denied_subject",
                DenyKind::Endpoint => "denied_endpoint",
                DenyKind::Model => "denied_model",
                DenyKind::UnknownEndpoint => "denied_unknown_endpoint",
                DenyKind::MissingModel => "denied_missing_model",
                DenyKind::Agent => "denied_agent",
            },
            Self::BadPath(_) => "bad_path",
            Self::QuotaUnavailable => "quota_store_unavailable",
            Self::QuotaStoreFull => "quota_store_full",
            Self::Overloaded(_) => "overloaded",
            Self::BodyTimeout => "body_timeout",
            Self::QuotaExceeded(r) => match r.kind {
                crate::quota::LimitKind::TokensPerMinute => "quota_tokens_per_minute",
                crate::quota::LimitKind::RequestsPerMinute => "quota_requests_per_minute",
                crate::quota::LimitKind::TokensPerDay => "quota_tokens_per_day",
                crate::quota::LimitKind::Concurrent => "quota_concurrent",
                crate::quota::LimitKind::DistinctModels => "quota_distinct_models",
            },
            Self::BadRequest(_) => "bad_request",
            Self::BadBody(_) => "bad_body",
            Self::BadMessage(_) => "bad_mcp_message",
            Self::BadHeader(_) => "bad_header",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Internal => "internal",
            Self::Keys(e) => e.status().1,
            Self::Exchange(e) => match e {
                crate::exchange::ExchangeError::Refused(_) => "token_exchange_refused",
                crate::exchange::ExchangeError::Unavailable => "token_exchange_unavailable",
                crate::exchange::ExchangeError::BadResponse(_) => "token_exchange_bad_response",
            },
        }
    }
}
