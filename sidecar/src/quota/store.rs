//! The quota store a gateway uses: in memory, or Redis shared by replicas.
//! When Redis fails, the configured mode decides: fail closed (503) or fail
//! open to a local in-memory limit; either way a log line and
//! `attach_quota_store_errors_total` say so, and the gateway goes back to
//! Redis by itself once it answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::memory::MemoryStore;
use super::redis_store::RedisStore;
use super::{Check, Refusal};
use crate::metrics::Metrics;

/// Which store, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "type",
    deny_unknown_fields
)]
pub enum StoreConfig {
    /// Counters in this gateway's memory (one replica, or per-replica limits).
    #[default]
    Memory,
    /// Counters in Redis, shared by every replica.
    Redis {
        /// `redis://[:password@]host:port/db`; never logged. Give this or
        /// `urlFile`.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        url: String,
        /// A file holding the URL (a mounted Secret), read when the config
        /// file is loaded; it wins over `url`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url_file: Option<std::path::PathBuf>,
        /// What to do when Redis cannot be reached.
        #[serde(default)]
        fail_mode: FailMode,
        /// Prefix of every key.
        #[serde(default = "default_prefix")]
        key_prefix: String,
    },
}

fn default_prefix() -> String {
    "attach:quota:".into()
}

/// Behaviour while the shared store is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refuse requests that a quota applies to with 503.
    #[default]
    Closed,
    /// Admit against a local, in-memory copy of the limits.
    Open,
}

/// Which store admitted a request (its charge goes to the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Shared,
    Local,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAdmitted {
    Refused(Refusal),
    /// The shared store is down and the mode is fail-closed.
    Unavailable,
}

/// The store in use.
#[derive(Debug)]
pub struct QuotaStore {
    local: Arc<MemoryStore>,
    shared: Option<(RedisStore, FailMode)>,
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
}

impl QuotaStore {
    pub fn memory(local: Arc<MemoryStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            local,
            shared: None,
            healthy: AtomicBool::new(true),
            metrics,
        }
    }

    pub fn redis(
        shared: RedisStore,
        fail_mode: FailMode,
        local: Arc<MemoryStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            local,
            shared: Some((shared, fail_mode)),
            healthy: AtomicBool::new(true),
            metrics,
        }
    }

    /// The in-memory store (the only one, or the fail-open fallback).
    pub fn local(&self) -> &MemoryStore {
        &self.local
    }

    pub async fn admit(&self, checks: &[Check]) -> Result<Admitted, NotAdmitted> {
        let Some((shared, mode)) = &self.shared else {
            return self
                .local
                .admit(checks)
                .map(|()| Admitted::Local)
                .map_err(NotAdmitted::Refused);
        };
        match shared.admit(checks).await {
            Ok(result) => {
                self.mark_healthy(true, None);
                result
                    .map(|()| Admitted::Shared)
                    .map_err(NotAdmitted::Refused)
            }
            Err(e) => {
                self.mark_healthy(false, Some(&e));
                match mode {
                    FailMode::Closed => Err(NotAdmitted::Unavailable),
                    FailMode::Open => self
                        .local
                        .admit(checks)
                        .map(|()| Admitted::Local)
                        .map_err(NotAdmitted::Refused),
                }
            }
        }
    }

    /// Charges `tokens` and frees concurrency, in the store that admitted.
    pub fn finish(self: &Arc<Self>, admitted: Admitted, checks: Vec<Check>, tokens: u64) {
        match (admitted, &self.shared) {
            (Admitted::Shared, Some(_)) => {
                let store = self.clone();
                tokio::spawn(async move {
                    if let Some((shared, _)) = &store.shared
                        && let Err(e) = shared.finish(&checks, tokens).await
                    {
                        store.mark_healthy(false, Some(&e));
                    }
                });
            }
            _ => self.local.finish(&checks, tokens),
        }
    }

    fn mark_healthy(&self, healthy: bool, error: Option<&redis::RedisError>) {
        if !healthy {
            self.metrics.quota_store_errors.inc();
        }
        let was = self.healthy.swap(healthy, Ordering::SeqCst);
        match (was, healthy) {
            (true, false) => tracing::error!(
                error = %error.map(|e| e.to_string()).unwrap_or_default(),
                "the shared quota store (Redis) is unreachable"
            ),
            (false, true) => tracing::info!("the shared quota store (Redis) is back"),
            _ => {}
        }
    }
}
