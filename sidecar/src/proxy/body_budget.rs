//! A global cap on request-body bytes buffered at once, across every
//! request and worker. Bodies read whole (to find the model) take permits
//! as their bytes arrive; past `limits.maxBufferedBodyBytes` the request is
//! answered 503 with `Retry-After` at once, so a few large slow bodies can
//! never take the process out of memory. Permits are RAII: released when
//! the request that holds them is done or dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::gauge::Gauge;

/// The bytes buffered now.
#[derive(Debug, Default)]
pub struct BodyBudget {
    used: AtomicU64,
    gauge: Gauge,
}

impl BodyBudget {
    /// A budget reporting into `gauge` (`attach_buffered_body_bytes`).
    pub fn new(gauge: Gauge) -> Self {
        Self {
            used: AtomicU64::new(0),
            gauge,
        }
    }

    /// An empty permit, to grow as bytes arrive.
    pub fn permit(self: &Arc<Self>) -> BodyPermit {
        BodyPermit {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes buffered now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }
}

/// Bytes one request holds.
#[derive(Debug)]
pub struct BodyPermit {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl BodyPermit {
    /// Takes `more` bytes if the total stays within `max`.
    pub fn grow(&mut self, more: u64, max: u64) -> bool {
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(more).filter(|total| *total <= max)
            });
        if taken.is_err() {
            return false;
        }
        self.bytes = self.bytes.saturating_add(more);
        self.budget
            .gauge
            .inc_by(i64::try_from(more).unwrap_or(i64::MAX));
        true
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
        self.budget
            .gauge
            .dec_by(i64::try_from(self.bytes).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_share_one_cap_and_give_back_on_drop() {
        let budget = Arc::new(BodyBudget::default());
        let mut a = budget.permit();
        let mut b = budget.permit();
        assert!(a.grow(60, 100));
        assert!(!b.grow(41, 100), "over the cap");
        assert!(b.grow(40, 100));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(!b.grow(u64::MAX, u64::MAX), "no overflow");
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
