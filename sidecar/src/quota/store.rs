//! The quota store a gateway uses: in memory, or Redis shared by replicas.
//! When Redis fails, the configured mode decides: fail closed (503) or fail
//! open to a local in-memory limit; either way a log line and
//! `attach_quota_store_errors_total` say so, and the gateway goes back to
//! Redis by itself once it answers again.
//!
//! Admission hands out an [`Admission`]: the slot and the reservation are
//! held until it is settled or dropped, whichever path the request takes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::admission::{Admission, Ticket, Via};
use super::memory::{MemoryRefusal, MemoryStore};
use super::redis_store::{RedisStore, is_out_of_memory};
use super::{Check, Refusal};
use crate::metrics::{KindLabels, Metrics};

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
    /// Counters in Redis (a single server or a cluster), shared by every
    /// replica.
    Redis {
        /// `redis://[:password@]host:port/db`; never logged. Give this or
        /// `urlFile`. For a cluster, any one node: the others are found.
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

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAdmitted {
    Refused(Refusal),
    /// The shared store is down and the mode is fail-closed.
    Unavailable,
    /// The in-memory store is full of budgets it must keep.
    Full,
}

/// The store in use.
#[derive(Debug)]
pub struct QuotaStore {
    local: Arc<MemoryStore>,
    shared: Option<(Arc<RedisStore>, FailMode)>,
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
    /// Where settling with Redis runs: the runtime that outlives the
    /// request threads, so shutdown can wait for it.
    background: Option<tokio::runtime::Handle>,
    pending: AtomicUsize,
    settled: Notify,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for QuotaStore {
    fn drop(&mut self) {
        if let Some(renewer) = &self.renewer {
            renewer.abort();
        }
    }
}

impl QuotaStore {
    pub fn memory(local: Arc<MemoryStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            local,
            shared: None,
            healthy: AtomicBool::new(true),
            metrics,
            background: None,
            pending: AtomicUsize::new(0),
            settled: Notify::new(),
            renewer: None,
        }
    }

    /// A Redis store. Must be called on the long-lived runtime: lease
    /// renewal and settling run there.
    pub fn redis(
        shared: RedisStore,
        fail_mode: FailMode,
        local: Arc<MemoryStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let shared = Arc::new(shared);
        let background = tokio::runtime::Handle::try_current().ok();
        let renewer = background
            .as_ref()
            .map(|handle| handle.spawn(renew(Arc::downgrade(&shared), metrics.clone())));
        metrics.quota_store_up(1);
        Self {
            local,
            shared: Some((shared, fail_mode)),
            healthy: AtomicBool::new(true),
            metrics,
            background,
            pending: AtomicUsize::new(0),
            settled: Notify::new(),
            renewer,
        }
    }

    /// The in-memory store (the only one, or the fail-open fallback).
    pub fn local(&self) -> &Arc<MemoryStore> {
        &self.local
    }

    /// The Redis store and its mode, if this store is shared.
    pub fn shared(&self) -> Option<(&Arc<RedisStore>, FailMode)> {
        self.shared.as_ref().map(|(s, m)| (s, *m))
    }

    /// Admits a request against `checks`, reserving `reserve` tokens, or
    /// refuses it. `None` when no limit applies.
    pub async fn admit(
        self: &Arc<Self>,
        checks: Vec<Check>,
        reserve: u64,
    ) -> Result<Option<Admission>, NotAdmitted> {
        if checks.is_empty() {
            return Ok(None);
        }
        let checks: Arc<[Check]> = checks.into();
        let via = match &self.shared {
            None => self.admit_local(&checks, reserve)?,
            Some((shared, mode)) => {
                let lease = new_lease_id();
                match shared.admit(&checks, &lease, reserve).await {
                    Ok(Ok(())) => {
                        self.mark_healthy(None);
                        Via::Shared(lease)
                    }
                    Ok(Err(refusal)) => {
                        self.mark_healthy(None);
                        return Err(NotAdmitted::Refused(refusal));
                    }
                    Err(e) => {
                        self.mark_unhealthy(&e);
                        match mode {
                            FailMode::Closed => return Err(NotAdmitted::Unavailable),
                            FailMode::Open => {
                                let via = self.admit_local(&checks, reserve)?;
                                self.metrics.quota_fail_open.inc();
                                via
                            }
                        }
                    }
                }
            }
        };
        self.metrics.quota_admissions_in_flight.inc();
        Ok(Some(Admission::new(Ticket {
            store: self.clone(),
            checks,
            via,
            reserved: reserve,
        })))
    }

    fn admit_local(&self, checks: &[Check], reserve: u64) -> Result<Via, NotAdmitted> {
        match self.local.admit(checks, reserve) {
            Ok(()) => Ok(Via::Local),
            Err(MemoryRefusal::Refused(r)) => Err(NotAdmitted::Refused(r)),
            Err(MemoryRefusal::Full(_)) => {
                self.metrics
                    .quota_store_errors
                    .get_or_create(&KindLabels {
                        kind: "memory_full",
                    })
                    .inc();
                Err(NotAdmitted::Full)
            }
        }
    }

    /// Frees an admission's slot and reservation and charges `tokens`, in
    /// the store that admitted it. Never blocks: Redis is told in the
    /// background (and if it cannot be, the lease expires by itself).
    pub(super) fn release(self: &Arc<Self>, ticket: Ticket, tokens: u64) {
        self.metrics.quota_admissions_in_flight.dec();
        match (&ticket.via, &self.shared) {
            (Via::Shared(lease), Some((shared, _))) => {
                shared.forget(lease);
                let handle = self
                    .background
                    .clone()
                    .or_else(|| tokio::runtime::Handle::try_current().ok());
                let Some(handle) = handle else {
                    tracing::warn!("no runtime to settle a quota lease on; it will expire");
                    return;
                };
                self.pending.fetch_add(1, Ordering::SeqCst);
                let store = self.clone();
                let shared = shared.clone();
                handle.spawn(async move {
                    let Ticket { checks, via, .. } = ticket;
                    let lease = match &via {
                        Via::Shared(lease) => lease.as_str(),
                        Via::Local => "",
                    };
                    if let Err(e) = shared.settle(&checks, lease, tokens).await {
                        store.mark_unhealthy(&e);
                        tracing::warn!(
                            tokens,
                            "could not settle a quota lease in Redis; its slot frees itself when the lease expires"
                        );
                    }
                    if store.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                        store.settled.notify_waiters();
                    }
                });
            }
            _ => self.local.settle(&ticket.checks, ticket.reserved, tokens),
        }
    }

    /// Waits (at most `timeout`) until every release handed to Redis is
    /// done: the last step of a drain.
    pub async fn flush(&self, timeout: Duration) {
        let wait = async {
            loop {
                let notified = self.settled.notified();
                if self.pending.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }

    fn mark_healthy(&self, _: Option<()>) {
        self.metrics.quota_store_up(1);
        if !self.healthy.swap(true, Ordering::SeqCst) {
            tracing::info!("the shared quota store (Redis) is back");
        }
    }

    fn mark_unhealthy(&self, error: &redis::RedisError) {
        let kind = if is_out_of_memory(error) {
            "out_of_memory"
        } else {
            "unavailable"
        };
        self.metrics
            .quota_store_errors
            .get_or_create(&KindLabels { kind })
            .inc();
        self.metrics.quota_store_up(0);
        if self.healthy.swap(false, Ordering::SeqCst) {
            if kind == "out_of_memory" {
                tracing::error!(
                    "the shared quota store (Redis) is out of memory (maxmemory reached): it refuses writes"
                );
            } else {
                tracing::error!(
                    error = %error,
                    "the shared quota store (Redis) is unreachable"
                );
            }
        }
    }
}

/// Renews the leases of running requests every third of the lease time,
/// until the store goes.
async fn renew(store: Weak<RedisStore>, metrics: Arc<Metrics>) {
    let period = store
        .upgrade()
        .map_or(Duration::from_secs(20), |s| s.settings().ttl / 3)
        .max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(store) = store.upgrade() else { return };
        if let Err(e) = store.renew_all().await {
            metrics
                .quota_store_errors
                .get_or_create(&KindLabels {
                    kind: if is_out_of_memory(&e) {
                        "out_of_memory"
                    } else {
                        "unavailable"
                    },
                })
                .inc();
            tracing::warn!(error = %e, "could not renew quota leases");
        }
    }
}

/// A lease id unique across gateways: 128 random bits.
fn new_lease_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::clock::SystemClock;

    #[test]
    fn the_shared_stores_health_goes_down_with_a_failure_and_up_with_a_success() {
        let metrics = Arc::new(Metrics::new());
        let local = Arc::new(MemoryStore::new(10, Arc::new(SystemClock)));
        let store = QuotaStore::memory(local, metrics.clone());
        let up = |metrics: &Metrics| {
            metrics
                .encode()
                .lines()
                .find_map(|l| l.strip_prefix("attach_quota_store_up{store=\"redis\"} "))
                .map(str::to_owned)
        };
        let refused = redis::RedisError::from((redis::ErrorKind::Io, "connection refused"));
        store.mark_unhealthy(&refused);
        assert_eq!(up(&metrics).as_deref(), Some("0"));
        assert!(
            metrics
                .encode()
                .contains("attach_quota_store_errors_total{kind=\"unavailable\"} 1")
        );
        store.mark_healthy(None);
        assert_eq!(up(&metrics).as_deref(), Some("1"));
    }

    #[test]
    fn a_redis_store_defaults_to_its_documented_prefix_and_fails_closed() {
        let parsed: StoreConfig =
            serde_json::from_value(serde_json::json!({"type": "redis", "url": "redis://r:6379"}))
                .unwrap();
        assert_eq!(
            parsed,
            StoreConfig::Redis {
                url: "redis://r:6379".into(),
                url_file: None,
                fail_mode: FailMode::Closed,
                key_prefix: "attach:quota:".into(),
            }
        );
        let memory: StoreConfig =
            serde_json::from_value(serde_json::json!({"type": "memory"})).unwrap();
        assert_eq!(memory, StoreConfig::Memory);
        let misspelt = serde_json::json!({"type": "redis", "url": "redis://r", "keyprefix": "x"});
        let error = serde_json::from_value::<StoreConfig>(misspelt).unwrap_err();
        assert!(error.to_string().contains("keyprefix"), "{error}");
    }

    #[tokio::test]
    async fn each_outage_and_each_recovery_is_logged_once_with_its_cause() {
        use std::sync::Mutex;
        use tracing_subscriber::fmt::MakeWriter;

        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Lines {
            type Writer = Lines;
            fn make_writer(&'a self) -> Self::Writer {
                self.clone()
            }
        }

        let oom = crate::quota::redis_tests::Server::start()
            .out_of_memory()
            .await;
        let refused = redis::RedisError::from((redis::ErrorKind::Io, "connection refused"));

        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_ansi(false)
            .finish();
        let store = QuotaStore::memory(
            Arc::new(MemoryStore::new(10, Arc::new(SystemClock))),
            Arc::new(Metrics::new()),
        );
        tracing::subscriber::with_default(subscriber, || {
            store.mark_healthy(None);
            store.mark_unhealthy(&refused);
            store.mark_unhealthy(&refused);
            store.mark_healthy(None);
            store.mark_healthy(None);
            store.mark_unhealthy(&oom);
            store.mark_unhealthy(&oom);
        });
        let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        // In order: the refused connection, the recovery, the full Redis;
        // each once.
        let lines: Vec<&str> = logged.lines().collect();
        assert_eq!(lines.len(), 3, "{logged}");
        for (line, says) in lines
            .iter()
            .zip(["is unreachable", "is back", "is out of memory"])
        {
            assert!(line.contains(says), "{line:?} should say {says:?}");
        }
    }
}
