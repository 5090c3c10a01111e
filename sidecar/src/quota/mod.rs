//! Quotas: admission against per-user, group, tenant or client budgets of
//! LLM tokens, requests and concurrency. Admission reserves the request's
//! estimated tokens and takes a slot, held by an RAII [`admission::Admission`]
//! until the answer ends (or the request is dropped on any path); the
//! model's real usage, read from its answer as it streams, is then charged
//! in place of the reservation.

pub mod admission;
pub mod clock;
pub mod estimate;
pub mod limits;
pub mod memory;
pub mod metered_body;
pub mod redis_store;
pub mod sse;
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
    /// Too many distinct per-model budgets for one owner today.
    DistinctModels,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokensPerMinute => "tokens_per_minute",
            Self::RequestsPerMinute => "requests_per_minute",
            Self::TokensPerDay => "tokens_per_day",
            Self::Concurrent => "concurrent",
            Self::DistinctModels => "distinct_models",
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

impl Check {
    /// The budget's owner part (`<limit>|<owner>`) and, for a per-model
    /// budget, the model: the Redis store bounds how many models one owner
    /// has budgets for.
    pub fn owner_and_scope(&self) -> (&str, Option<&str>) {
        match self.key.rsplit_once("|model=") {
            Some((owner, model)) => (owner, Some(model)),
            None => (&self.key, None),
        }
    }
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
mod redis_tests;
#[cfg(test)]
mod tests;
