//! Retrying failed reconciles: per object, the pause doubles with every
//! failure in a row (from [`Backoff::base`] up to [`Backoff::max`]), with
//! jitter so that objects failing together (an API server outage) do not
//! retry together; a success resets it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// Failures in a row, per object.
#[derive(Debug)]
pub struct Backoff<K> {
    failures: Mutex<HashMap<K, u32>>,
    pub base: Duration,
    pub max: Duration,
}

impl<K: Eq + Hash> Default for Backoff<K> {
    fn default() -> Self {
        Self {
            failures: Mutex::default(),
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

/// The pause before retry number `failures` (1 for the first): `base`
/// doubled `failures - 1` times, capped at `max`, then scaled by `jitter`
/// (in `[0, 1)`) into its upper half, so it is at least half the nominal
/// pause.
pub fn pause(base: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let nominal = base
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(31)))
        .min(max);
    nominal.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

impl<K: Eq + Hash> Backoff<K> {
    /// Records a failure of `key`; the pause before its retry.
    pub fn failed(&self, key: K) -> Duration {
        let failures = match self.failures.lock() {
            Ok(mut map) => {
                let n = map.entry(key).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        pause(self.base, self.max, failures, rand::random::<f64>())
    }

    /// Records a success of `key`.
    pub fn succeeded(&self, key: &K) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_are_capped_and_jittered_into_their_upper_half() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(pause(base, max, 1, 1.0), Duration::from_secs(1));
        assert_eq!(pause(base, max, 1, 0.0), Duration::from_millis(500));
        assert_eq!(pause(base, max, 4, 1.0), Duration::from_secs(8));
        assert_eq!(pause(base, max, 30, 1.0), max, "capped");
        assert_eq!(pause(base, max, u32::MAX, 1.0), max, "no overflow");
        let spread: Vec<_> = [0.0, 0.3, 0.9]
            .iter()
            .map(|j| pause(base, max, 3, *j))
            .collect();
        assert!(spread.windows(2).all(|w| w[0] < w[1]), "{spread:?}");
    }

    #[test]
    fn failures_count_per_object_and_a_success_resets() {
        let backoff = Backoff::<&str>::default();
        let first = backoff.failed("a");
        assert!(first <= Duration::from_secs(1));
        backoff.failed("a");
        let third = backoff.failed("a");
        assert!(third >= Duration::from_secs(2), "{third:?}");
        assert!(
            backoff.failed("b") <= Duration::from_secs(1),
            "b has its own count"
        );
        backoff.succeeded(&"a");
        assert!(backoff.failed("a") <= Duration::from_secs(1), "reset");
    }
}
