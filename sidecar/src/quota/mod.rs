//! Quotas: admission against per-user, group, tenant or client budgets of
//! LLM tokens, requests and concurrency; the model's real usage, read from
//! its answer as it streams, is charged when the answer ends.

pub mod clock;
pub mod limits;
pub mod memory;
pub mod metered_body;
pub mod redis_store;
pub mod store;
pub mod usage;

use crate::claims::Identity;
pub use limits::{QuotaKey, QuotaLimit};

/// Which limit a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    TokensPerMinute,
    RequestsPerMinute,
    TokensPerDay,
    Concurrent,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokensPerMinute => "tokens_per_minute",
            Self::RequestsPerMinute => "requests_per_minute",
            Self::TokensPerDay => "tokens_per_day",
            Self::Concurrent => "concurrent",
        }
    }
}

/// A request refused for quota: answered 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub limit_name: String,
    pub kind: LimitKind,
    pub quota: u64,
    /// The window in seconds (0 for concurrency).
    pub window: u64,
    /// Seconds until the window resets (1 for concurrency).
    pub retry_after: u64,
}

/// One budget a request is admitted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub limit_name: String,
    pub key: String,
    pub tokens_per_minute: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub concurrent: Option<u64>,
    pub tokens_per_day: Option<u64>,
}

/// Every budget `identity` using `model` is admitted against.
pub fn checks(
    limits: &[QuotaLimit],
    identity: &Identity,
    engine: crate::canonical::Engine,
    model: Option<&crate::canonical::JudgedModel>,
) -> Vec<Check> {
    limits
        .iter()
        .flat_map(|limit| {
            limit
                .keys(identity, engine, model)
                .into_iter()
                .map(|key| Check {
                    limit_name: limit.name.clone(),
                    key,
                    tokens_per_minute: limit.tokens_per_minute,
                    requests_per_minute: limit.requests_per_minute,
                    concurrent: limit.concurrent,
                    tokens_per_day: limit.tokens_per_day,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests;
