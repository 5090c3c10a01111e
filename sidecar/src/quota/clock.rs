//! Time for quota windows and lease deadlines, behind a trait so tests move
//! it by hand instead of sleeping out a window.
//!
//! The gateway binary uses [`SystemClock`]. Built with the `test-clock`
//! feature (only the test harness builds it so), [`from_env`] returns a
//! clock frozen at `ATTACH_TEST_CLOCK` (seconds since the epoch) that only
//! moves when the admin port is told to advance it: end-to-end tests then
//! never depend on the wall-clock minute or on UTC midnight. Without the
//! feature neither the variable nor the admin route exists.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Whole seconds.
    fn now(&self) -> u64;
    /// Milliseconds (lease deadlines).
    fn now_millis(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        self.now_millis() / 1000
    }
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock tests set and advance.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn at(secs: u64) -> Self {
        Self(AtomicU64::new(secs.saturating_mul(1000)))
    }
    pub fn advance(&self, secs: u64) {
        self.0
            .fetch_add(secs.saturating_mul(1000), Ordering::SeqCst);
    }
    pub fn advance_millis(&self, millis: u64) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.now_millis() / 1000
    }
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The environment variable that freezes the quota clock (test builds only).
#[cfg(feature = "test-clock")]
pub const TEST_CLOCK_ENV: &str = "ATTACH_TEST_CLOCK";

/// The clock the process uses: the system clock, or (test builds only) the
/// frozen clock `ATTACH_TEST_CLOCK` names.
pub fn from_env() -> Arc<dyn Clock> {
    #[cfg(feature = "test-clock")]
    if let Some(clock) = test_clock() {
        return clock;
    }
    Arc::new(SystemClock)
}

#[cfg(feature = "test-clock")]
static TEST_CLOCK: std::sync::OnceLock<Option<Arc<ManualClock>>> = std::sync::OnceLock::new();

/// The process's frozen test clock, if `ATTACH_TEST_CLOCK` set one.
#[cfg(feature = "test-clock")]
pub fn test_clock() -> Option<Arc<ManualClock>> {
    TEST_CLOCK
        .get_or_init(|| {
            let secs: u64 = std::env::var(TEST_CLOCK_ENV).ok()?.trim().parse().ok()?;
            tracing::warn!(
                secs,
                "the quota clock is frozen for tests ({TEST_CLOCK_ENV}); never use this build in production"
            );
            Some(Arc::new(ManualClock::at(secs)))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_reads_the_time_since_the_epoch() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let (secs, millis) = (SystemClock.now(), SystemClock.now_millis());
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!((before.as_secs()..=after.as_secs()).contains(&secs));
        let (lo, hi) = (before.as_millis(), after.as_millis());
        assert!((lo..=hi).contains(&u128::from(millis)));
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::at(60);
        assert_eq!((clock.now(), clock.now_millis()), (60, 60_000));
        clock.advance_millis(999);
        assert_eq!((clock.now(), clock.now_millis()), (60, 60_999));
        clock.advance(2);
        assert_eq!((clock.now(), clock.now_millis()), (62, 62_999));
    }
}
