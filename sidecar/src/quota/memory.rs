//! The embedded quota store: fixed one-minute and one-day windows per budget
//! key, in a sharded map whose size is bounded.
//!
//! Admission is atomic across all the keys of a request: their shards are
//! locked together (in index order, so two requests never deadlock), every
//! limit is checked, and only then is anything counted.
//!
//! Each admission reserves its estimated tokens (see
//! [`super::estimate`]) until it settles to the real usage; reservations
//! outlive window boundaries (the request is still in flight).
//!
//! When the map is full, a new budget takes the place of one that is empty
//! (nothing counted in the current windows, nothing in flight); failing
//! that, of the longest-unseen one that is neither in use nor spent. A
//! budget that is in use or at a limit is never forgotten: if every budget
//! is, the new one is refused ([`StoreFull`]), so that junk keys cannot
//! reset a spent budget.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::clock::Clock;
use super::{Check, LimitKind, Refusal};

const SHARDS: usize = 16;
const MINUTE: u64 = 60;
const DAY: u64 = 86_400;

/// The store is full of budgets it must not forget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreFull;

/// Why the store did not admit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryRefusal {
    Refused(Refusal),
    Full(StoreFull),
}

#[derive(Debug, Default, Clone)]
struct Budget {
    minute: u64,
    minute_tokens: u64,
    minute_requests: u64,
    day: u64,
    day_tokens: u64,
    /// Admissions not settled yet.
    in_flight: u64,
    /// Tokens they reserved.
    reserved: u64,
    last_seen: u64,
    /// The limits last checked against it, to tell a spent budget.
    tokens_per_minute: Option<u64>,
    requests_per_minute: Option<u64>,
    tokens_per_day: Option<u64>,
}

impl Budget {
    fn roll(&mut self, now: u64) {
        let minute = now / MINUTE;
        if self.minute != minute {
            self.minute = minute;
            self.minute_tokens = 0;
            self.minute_requests = 0;
        }
        let day = now / DAY;
        if self.day != day {
            self.day = day;
            self.day_tokens = 0;
        }
    }

    /// Admissions in flight (their reservations are theirs: `reserved` is
    /// 0 whenever `in_flight` is).
    fn in_use(&self) -> bool {
        self.in_flight > 0
    }

    /// Forgetting it changes nothing: nothing counted now, nothing in flight.
    fn is_empty_at(&self, now: u64) -> bool {
        let minute_clear =
            self.minute != now / MINUTE || (self.minute_tokens == 0 && self.minute_requests == 0);
        let day_clear = self.day != now / DAY || self.day_tokens == 0;
        !self.in_use() && minute_clear && day_clear
    }

    /// At or over a limit in a current window.
    fn is_spent_at(&self, now: u64) -> bool {
        let over = |limit: Option<u64>, used: u64| limit.is_some_and(|l| used >= l);
        (self.minute == now / MINUTE
            && (over(self.tokens_per_minute, self.minute_tokens)
                || over(self.requests_per_minute, self.minute_requests)))
            || (self.day == now / DAY && over(self.tokens_per_day, self.day_tokens))
    }
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<HashMap<String, Budget>>>,
    hasher: RandomState,
    max_keys_per_shard: AtomicUsize,
    clock: Arc<dyn Clock>,
}

impl MemoryStore {
    /// A store remembering at most about `max_keys` budgets.
    pub fn new(max_keys: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_keys_per_shard: AtomicUsize::new(per_shard(max_keys)),
            clock,
        }
    }

    /// A new, empty store with the same size and clock.
    pub fn clone_empty(&self) -> Self {
        Self::new(self.max_keys(), self.clock.clone())
    }

    /// About how many budgets it remembers at most.
    pub fn max_keys(&self) -> usize {
        self.max_keys_per_shard.load(Ordering::Relaxed) * SHARDS
    }

    /// Changes the bound in place (a reload), keeping every budget.
    pub fn resize(&self, max_keys: usize) {
        self.max_keys_per_shard
            .store(per_shard(max_keys), Ordering::Relaxed);
    }

    /// The clock its windows follow.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Locks the shards of `checks`, in index order so that two requests
    /// never wait on each other crosswise.
    fn lock(&self, checks: &[Check]) -> Vec<(usize, Shard<'_>)> {
        let mut indices: Vec<usize> = checks.iter().map(|c| self.shard_of(&c.key)).collect();
        indices.sort_unstable();
        indices.dedup();
        indices
            .into_iter()
            .map(|i| {
                let guard = self.shards[i]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (i, guard)
            })
            .collect()
    }

    /// Checks every key's limits with `reserve` more tokens; if all pass,
    /// counts the request, takes an in-flight slot and reserves the tokens
    /// on each, until [`Self::settle`].
    pub fn admit(&self, checks: &[Check], reserve: u64) -> Result<(), MemoryRefusal> {
        let now = self.clock.now();
        let mut guards = self.lock(checks);
        let max = self.max_keys_per_shard.load(Ordering::Relaxed);
        for check in checks {
            let map = guard_for(&mut guards, self.shard_of(&check.key));
            if let Some(budget) = map.get_mut(&check.key) {
                budget.roll(now);
                if let Some(refusal) = refusal(check, budget, reserve, now) {
                    return Err(MemoryRefusal::Refused(refusal));
                }
            } else {
                if let Some(refusal) = refusal(check, &Budget::default(), reserve, now) {
                    return Err(MemoryRefusal::Refused(refusal));
                }
                if map.len() >= max && !make_room(map, now, max) {
                    return Err(MemoryRefusal::Full(StoreFull));
                }
            }
        }
        for check in checks {
            let map = guard_for(&mut guards, self.shard_of(&check.key));
            let budget = map.entry(check.key.clone()).or_default();
            budget.roll(now);
            budget.last_seen = now;
            budget.minute_requests = budget.minute_requests.saturating_add(1);
            budget.in_flight = budget.in_flight.saturating_add(1);
            budget.reserved = budget.reserved.saturating_add(reserve);
            budget.tokens_per_minute = check.tokens_per_minute;
            budget.requests_per_minute = check.requests_per_minute;
            budget.tokens_per_day = check.tokens_per_day;
        }
        Ok(())
    }

    /// Settles an admission: frees its slot and its `reserved` tokens, and
    /// charges `tokens` to the current windows.
    pub fn settle(&self, checks: &[Check], reserved: u64, tokens: u64) {
        let now = self.clock.now();
        let mut guards = self.lock(checks);
        for check in checks {
            let map = guard_for(&mut guards, self.shard_of(&check.key));
            // Budgets in use are never evicted, so it is there.
            let Some(budget) = map.get_mut(&check.key) else {
                continue;
            };
            budget.roll(now);
            budget.last_seen = now;
            budget.minute_tokens = budget.minute_tokens.saturating_add(tokens);
            budget.day_tokens = budget.day_tokens.saturating_add(tokens);
            budget.in_flight = budget.in_flight.saturating_sub(1);
            budget.reserved = budget.reserved.saturating_sub(reserved);
        }
    }

    /// Admissions in flight, summed over every budget (0 when idle: a
    /// leaked slot shows here).
    pub fn in_flight(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map_or(0, |m| m.values().map(|b| b.in_flight).sum::<u64>())
            })
            .sum()
    }

    /// Tokens reserved by admissions in flight, summed over every budget.
    pub fn reserved(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map_or(0, |m| m.values().map(|b| b.reserved).sum::<u64>())
            })
            .sum()
    }

    /// How many budgets are remembered (the tests' view of the bound).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

fn per_shard(max_keys: usize) -> usize {
    (max_keys / SHARDS).max(1)
}

type Shard<'a> = MutexGuard<'a, HashMap<String, Budget>>;

/// The locked map of shard `index` (always among `guards`).
fn guard_for<'g, 'a>(
    guards: &'g mut [(usize, Shard<'a>)],
    index: usize,
) -> &'g mut HashMap<String, Budget> {
    let pos = guards.iter().position(|(i, _)| *i == index).unwrap_or(0);
    &mut guards[pos].1
}

/// Frees a place in a full shard; false if every budget must be kept.
fn make_room(map: &mut HashMap<String, Budget>, now: u64, max: usize) -> bool {
    map.retain(|_, b| !b.is_empty_at(now));
    if map.len() < max {
        return true;
    }
    let victim = map
        .iter()
        .filter(|(_, b)| !b.in_use() && !b.is_spent_at(now))
        .min_by_key(|(_, b)| b.last_seen)
        .map(|(k, _)| k.clone());
    match victim {
        Some(key) => {
            map.remove(&key);
            true
        }
        None => false,
    }
}

/// The limit `budget` cannot take `reserve` more tokens under, if any.
///
/// A token limit refuses when what is used plus what is reserved reaches
/// it, and when the reservation would not fit while other requests are in
/// flight. A request alone may start while anything is left, so a request
/// bigger than the whole limit is served one at a time; the overshoot is
/// at most that one request's reservation.
fn refusal(check: &Check, budget: &Budget, reserve: u64, now: u64) -> Option<Refusal> {
    let minute_left = MINUTE - now % MINUTE;
    let day_left = DAY - now % DAY;
    let refuse = |kind, quota, window, retry_after| {
        Some(Refusal {
            limit_name: check.limit_name.clone(),
            kind,
            quota,
            window,
            retry_after,
        })
    };
    let tokens = |limit: Option<u64>, used: u64, kind, window, left| {
        let limit = limit?;
        let committed = used.saturating_add(budget.reserved);
        if committed >= limit {
            // Spent, or spoken for by requests in flight: those settle
            // soon, and may hand tokens back.
            let retry = if used >= limit { left } else { 1 };
            return refuse(kind, limit, window, retry);
        }
        if budget.reserved > 0 && committed.saturating_add(reserve) > limit {
            return refuse(kind, limit, window, 1);
        }
        None
    };
    tokens(
        check.tokens_per_minute,
        budget.minute_tokens,
        LimitKind::TokensPerMinute,
        MINUTE,
        minute_left,
    )
    .or_else(|| {
        let limit = check.requests_per_minute?;
        (budget.minute_requests >= limit).then(|| Refusal {
            limit_name: check.limit_name.clone(),
            kind: LimitKind::RequestsPerMinute,
            quota: limit,
            window: MINUTE,
            retry_after: minute_left,
        })
    })
    .or_else(|| {
        tokens(
            check.tokens_per_day,
            budget.day_tokens,
            LimitKind::TokensPerDay,
            DAY,
            day_left,
        )
    })
    .or_else(|| {
        let limit = check.concurrent?;
        (budget.in_flight >= limit).then(|| Refusal {
            limit_name: check.limit_name.clone(),
            kind: LimitKind::Concurrent,
            quota: limit,
            window: 0,
            retry_after: 1,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A time well into day 100, 30 s into its minute, so that `/`, `%`
    /// and `*` give different windows.
    const NOW: u64 = 100 * DAY + 7 * MINUTE + 30;

    fn budget(edit: impl FnOnce(&mut Budget)) -> Budget {
        let mut b = Budget {
            minute: NOW / MINUTE,
            day: NOW / DAY,
            ..Budget::default()
        };
        edit(&mut b);
        b
    }

    #[test]
    fn a_budget_is_empty_when_nothing_counts_now_and_nothing_is_in_flight() {
        let cases = [
            ("fresh", budget(|_| {}), true),
            ("tokens this minute", budget(|b| b.minute_tokens = 1), false),
            (
                "requests this minute",
                budget(|b| b.minute_requests = 1),
                false,
            ),
            ("tokens today", budget(|b| b.day_tokens = 1), false),
            (
                "tokens and requests of an earlier minute",
                budget(|b| {
                    b.minute -= 1;
                    b.minute_tokens = 5;
                    b.minute_requests = 5;
                }),
                true,
            ),
            (
                "tokens of an earlier day",
                budget(|b| {
                    b.day -= 1;
                    b.day_tokens = 5;
                }),
                true,
            ),
            (
                "in flight",
                budget(|b| {
                    b.in_flight = 1;
                    b.reserved = 10;
                }),
                false,
            ),
        ];
        for (what, b, empty) in cases {
            assert_eq!(b.is_empty_at(NOW), empty, "{what}");
        }
    }

    #[test]
    fn a_budget_is_spent_at_a_limit_of_a_current_window_only() {
        let limited = |edit: fn(&mut Budget)| {
            budget(|b| {
                b.tokens_per_minute = Some(10);
                b.requests_per_minute = Some(2);
                b.tokens_per_day = Some(100);
                edit(b);
            })
        };
        let cases: [(&str, Budget, bool); 7] = [
            ("unused", limited(|_| {}), false),
            ("tokens per minute", limited(|b| b.minute_tokens = 10), true),
            (
                "requests per minute",
                limited(|b| b.minute_requests = 2),
                true,
            ),
            ("tokens per day", limited(|b| b.day_tokens = 100), true),
            (
                "under every limit",
                limited(|b| {
                    b.minute_tokens = 9;
                    b.minute_requests = 1;
                    b.day_tokens = 99;
                }),
                false,
            ),
            (
                "spent in an earlier minute",
                limited(|b| {
                    b.minute -= 1;
                    b.minute_tokens = 10;
                    b.minute_requests = 2;
                }),
                false,
            ),
            (
                "spent on an earlier day",
                limited(|b| {
                    b.day -= 1;
                    b.day_tokens = 100;
                }),
                false,
            ),
        ];
        for (what, b, spent) in cases {
            assert_eq!(b.is_spent_at(NOW), spent, "{what}");
        }
    }

    #[test]
    fn windows_roll_at_the_minute_and_the_day_and_not_before() {
        let mut b = budget(|b| {
            b.minute_tokens = 5;
            b.minute_requests = 5;
            b.day_tokens = 5;
        });
        // Later in the same minute: nothing resets.
        b.roll(NOW + 29);
        assert_eq!(
            (b.minute_tokens, b.minute_requests, b.day_tokens),
            (5, 5, 5)
        );
        // The next minute, same day: the minute resets.
        b.roll(NOW + 30);
        assert_eq!((b.minute, b.day), ((NOW + 30) / MINUTE, NOW / DAY));
        assert_eq!(
            (b.minute_tokens, b.minute_requests, b.day_tokens),
            (0, 0, 5)
        );
        // The next day.
        b.roll(101 * DAY);
        assert_eq!((b.minute, b.day), (101 * DAY / MINUTE, 101));
        assert_eq!(b.day_tokens, 0);
    }
}
