//! The operator's Prometheus metrics, served at `/metrics`: reconciles,
//! their errors and durations by kind, the objects waiting for one, whether this replica leads, the
//! webhook's admissions and their latency by result, and when its serving
//! certificate expires.

use std::future::Future;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming the kind reconciled.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// `attach_operator_admissions_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `injected`, `skipped` or `invalid`.
    pub result: &'static str,
    /// Why a pod was skipped (empty otherwise).
    pub reason: &'static str,
}

/// Labels naming an admission's result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Labels naming an LLMBackend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct BackendLabels {
    pub namespace: String,
    pub backend: String,
}

/// Every metric, in one registry for the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    queue_depth: Family<KindLabels, Gauge>,
    /// The objects waiting for a reconcile, by kind (the controllers'
    /// queues dedupe by object, and so does this set).
    queued: std::sync::Mutex<std::collections::HashSet<(&'static str, String)>>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    admissions: Family<AdmissionLabels, Counter>,
    admission_duration: Family<ResultLabels, Histogram>,
    /// When the webhook's serving certificate expires (Unix seconds).
    pub webhook_certificate_expiry: Gauge,
    unprotected_pods: Family<BackendLabels, Gauge>,
    /// The backends `unprotected_pods` has a series for, to drop the series
    /// of deleted ones.
    reported_backends: std::sync::Mutex<std::collections::BTreeSet<BackendLabels>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("attach_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let errors = Family::<KindLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let leader = Gauge::default();
        let queue_depth = Family::<KindLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Objects waiting for a reconcile (changed, or woken by what they watch, and not yet started), by kind; retries waiting out their backoff are not counted",
            queue_depth.clone(),
        );
        let admissions = Family::<AdmissionLabels, Counter>::default();
        let admission_duration = Family::<ResultLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        let unprotected_pods = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "unprotected_pods",
            "Pods a backend selects that run without attach-gateway (created before the webhook could inject them), by backend",
            unprotected_pods.clone(),
        );
        let webhook_certificate_expiry = Gauge::default();
        registry.register(
            "webhook_certificate_expiry_timestamp_seconds",
            "When the certificate the webhook serves expires, in Unix seconds",
            webhook_certificate_expiry.clone(),
        );
        registry.register(
            "admissions",
            "AdmissionReviews answered, by result and skip reason",
            admissions.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "How long answering an AdmissionReview took, by result",
            admission_duration.clone(),
        );
        registry.register("reconciles", "Reconciles run, by kind", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and will be retried, by kind",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles took, by kind",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            queue_depth,
            queued: std::sync::Mutex::default(),
            leader,
            admissions,
            admission_duration,
            webhook_certificate_expiry,
            unprotected_pods,
            reported_backends: std::sync::Mutex::default(),
        }
    }

    /// Counts one admission.
    pub fn admission(&self, result: &'static str, reason: &'static str) {
        self.admissions
            .get_or_create(&AdmissionLabels { result, reason })
            .inc();
    }

    /// Sets how many pods `backend` selects that run unprotected, and drops
    /// the series of the backends `exists` says are gone.
    pub fn unprotected_pods(
        &self,
        backend: BackendLabels,
        count: usize,
        exists: impl Fn(&BackendLabels) -> bool,
    ) {
        let mut reported = self
            .reported_backends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reported.retain(|labels| {
            let keep = *labels == backend || exists(labels);
            if !keep {
                self.unprotected_pods.remove(labels);
            }
            keep
        });
        self.unprotected_pods
            .get_or_create(&backend)
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        reported.insert(backend);
    }

    /// Drops the series of a deleted backend.
    pub fn backend_deleted(&self, backend: &BackendLabels) {
        let mut reported = self
            .reported_backends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reported.remove(backend);
        self.unprotected_pods.remove(backend);
    }

    /// Times one answered AdmissionReview.
    pub fn admission_took(&self, result: &'static str, seconds: f64) {
        self.admission_duration
            .get_or_create(&ResultLabels { result })
            .observe(seconds);
    }

    /// An object of `kind` now waits for a reconcile.
    pub fn queued(&self, kind: &'static str, key: String) {
        self.queue_changed(kind, |queued| {
            queued.insert((kind, key));
        });
    }

    /// An object of `kind` left the queue: its reconcile started, or it was
    /// gone when its turn came.
    pub fn dequeued(&self, kind: &'static str, key: &str) {
        self.queue_changed(kind, |queued| {
            queued.remove(&(kind, key.to_owned()));
        });
    }

    fn queue_changed(
        &self,
        kind: &'static str,
        change: impl FnOnce(&mut std::collections::HashSet<(&'static str, String)>),
    ) {
        let mut queued = self
            .queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut queued);
        let depth = queued.iter().filter(|(k, _)| *k == kind).count();
        self.queue_depth
            .get_or_create(&KindLabels { kind })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Runs one reconcile of `kind`, counting and timing it.
    pub async fn measure<T, E>(
        &self,
        kind: &'static str,
        reconcile: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let labels = KindLabels { kind };
        let started = Instant::now();
        let result = reconcile.await;
        self.reconciles.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        // The error series exists from the first reconcile, at 0, so that
        // rates and alerts over it have something to read.
        let errors = self.errors.get_or_create(&labels);
        if result.is_err() {
            errors.inc();
        }
        result
    }

    /// Reconciles run so far of `kind`.
    pub fn reconciles(&self, kind: &'static str) -> u64 {
        self.reconciles.get_or_create(&KindLabels { kind }).get()
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_depth_counts_each_waiting_object_once_per_kind() {
        let m = Metrics::new();
        m.queued("LLMBackend", "ml/chat".into());
        m.queued("LLMBackend", "ml/chat".into());
        m.queued("LLMBackend", "ml/embed".into());
        m.queued("Namespace", "ml".into());
        let text = m.encode();
        assert!(
            text.contains("attach_operator_queue_depth{kind=\"LLMBackend\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("attach_operator_queue_depth{kind=\"Namespace\"} 1"),
            "{text}"
        );
        m.dequeued("LLMBackend", "ml/chat");
        m.dequeued("LLMBackend", "ml/chat");
        m.dequeued("Namespace", "other");
        let text = m.encode();
        assert!(
            text.contains("attach_operator_queue_depth{kind=\"LLMBackend\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("attach_operator_queue_depth{kind=\"Namespace\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn reconciles_are_counted_timed_and_errors_kept_apart() {
        let m = Metrics::new();
        m.measure("LLMBackend", async { Ok::<_, ()>(()) })
            .await
            .unwrap();
        m.measure("LLMBackend", async { Err::<(), _>(()) })
            .await
            .unwrap_err();
        let text = m.encode();
        assert!(
            text.contains("attach_operator_reconciles_total{kind=\"LLMBackend\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("attach_operator_reconcile_errors_total{kind=\"LLMBackend\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "attach_operator_reconcile_duration_seconds_count{kind=\"LLMBackend\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("attach_operator_leader 0"), "{text}");
        assert_eq!(m.reconciles("LLMBackend"), 2);

        // A kind that never failed shows 0 errors, not nothing.
        m.measure("Namespace", async { Ok::<_, ()>(()) })
            .await
            .unwrap();
        let text = m.encode();
        assert!(
            text.contains("attach_operator_reconcile_errors_total{kind=\"Namespace\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn unprotected_pods_are_reported_per_backend_until_it_is_gone() {
        let m = Metrics::new();
        let backend = |name: &str| BackendLabels {
            namespace: "team".into(),
            backend: name.into(),
        };
        m.unprotected_pods(backend("a"), 2, |_| true);
        m.unprotected_pods(backend("b"), 0, |_| true);
        let text = m.encode();
        assert!(
            text.contains("attach_operator_unprotected_pods{namespace=\"team\",backend=\"a\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("attach_operator_unprotected_pods{namespace=\"team\",backend=\"b\"} 0"),
            "{text}"
        );
        // `a` was deleted: the next report of another backend drops it.
        m.unprotected_pods(backend("b"), 1, |b| b.backend != "a");
        let text = m.encode();
        assert!(!text.contains("backend=\"a\""), "{text}");
        assert!(text.contains("backend=\"b\"} 1"), "{text}");
        m.backend_deleted(&backend("b"));
        assert!(!m.encode().contains("backend=\"b\""));
    }
}
