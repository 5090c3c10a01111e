//! The embedded quota store: fixed one-minute and one-day windows per budget
//! key, in a sharded map whose size is bounded by evicting idle keys.
//!
//! Admission is atomic across all the keys of a request: their shards are
//! locked together (in index order, so two requests never deadlock), every
//! limit is checked, and only then is anything counted.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use super::clock::Clock;
use super::{Check, LimitKind, Refusal};

const SHARDS: usize = 16;
const MINUTE: u64 = 60;
const DAY: u64 = 86_400;

#[derive(Debug, Default, Clone)]
struct Budget {
    minute: u64,
    minute_tokens: u64,
    minute_requests: u64,
    day: u64,
    day_tokens: u64,
    concurrent: u64,
    last_seen: u64,
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
        self.last_seen = now;
    }

    fn idle(&self, now: u64) -> bool {
        self.concurrent == 0 && now.saturating_sub(self.last_seen) > DAY
    }
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<HashMap<String, Budget>>>,
    hasher: RandomState,
    max_keys_per_shard: usize,
    clock: Arc<dyn Clock>,
}

impl MemoryStore {
    /// A store remembering at most about `max_keys` budgets.
    pub fn new(max_keys: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_keys_per_shard: (max_keys / SHARDS).max(1),
            clock,
        }
    }

    /// A new, empty store with the same size and clock.
    pub fn clone_empty(&self) -> Self {
        Self::new(self.max_keys_per_shard * SHARDS, self.clock.clone())
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

    /// Checks every key's limits; if all pass, counts the request (and a
    /// concurrency slot) against each.
    pub fn admit(&self, checks: &[Check]) -> Result<(), Refusal> {
        let now = self.clock.now();
        let mut guards = self.lock(checks);
        for check in checks {
            let map = guard_for(&mut guards, self.shard_of(&check.key));
            if let Some(budget) = map.get_mut(&check.key) {
                budget.roll(now);
                if let Some(refusal) = refusal(check, budget, now) {
                    return Err(refusal);
                }
            } else if let Some(refusal) = refusal(check, &Budget::default(), now) {
                return Err(refusal);
            }
        }
        let max = self.max_keys_per_shard;
        for check in checks {
            let map = guard_for(&mut guards, self.shard_of(&check.key));
            let budget = match map.get_mut(&check.key) {
                Some(budget) => budget,
                None => {
                    if map.len() >= max {
                        evict(map, now, max);
                    }
                    map.entry(check.key.clone()).or_default()
                }
            };
            budget.roll(now);
            budget.minute_requests += 1;
            if check.concurrent.is_some() {
                budget.concurrent += 1;
            }
        }
        Ok(())
    }

    /// Charges `tokens` to every key and frees the concurrency slots taken
    /// at admission.
    pub fn finish(&self, checks: &[Check], tokens: u64) {
        let now = self.clock.now();
        let mut guards = self.lock(checks);
        for check in checks {
            let map = guard_for(&mut guards, self.shard_of(&check.key));
            // Evicted meanwhile (only idle budgets are): nothing to charge.
            let Some(budget) = map.get_mut(&check.key) else {
                continue;
            };
            budget.roll(now);
            budget.minute_tokens = budget.minute_tokens.saturating_add(tokens);
            budget.day_tokens = budget.day_tokens.saturating_add(tokens);
            if check.concurrent.is_some() {
                budget.concurrent = budget.concurrent.saturating_sub(1);
            }
        }
    }

    /// How many budgets are remembered.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    /// Whether no budget is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

fn evict(map: &mut HashMap<String, Budget>, now: u64, max: usize) {
    map.retain(|_, b| !b.idle(now));
    if map.len() >= max {
        // Still full of live keys: drop the longest-unseen one without a
        // request in flight.
        if let Some(oldest) = map
            .iter()
            .filter(|(_, b)| b.concurrent == 0)
            .min_by_key(|(_, b)| b.last_seen)
            .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
}

/// The limit `budget` is at or over, if any.
fn refusal(check: &Check, budget: &Budget, now: u64) -> Option<Refusal> {
    let minute_left = MINUTE - now % MINUTE;
    let day_left = DAY - now % DAY;
    let over = |limit: Option<u64>, used: u64, kind, window, retry_after| {
        let limit = limit?;
        (used >= limit).then(|| Refusal {
            limit_name: check.limit_name.clone(),
            kind,
            quota: limit,
            window,
            retry_after,
        })
    };
    over(
        check.tokens_per_minute,
        budget.minute_tokens,
        LimitKind::TokensPerMinute,
        MINUTE,
        minute_left,
    )
    .or_else(|| {
        over(
            check.requests_per_minute,
            budget.minute_requests,
            LimitKind::RequestsPerMinute,
            MINUTE,
            minute_left,
        )
    })
    .or_else(|| {
        over(
            check.tokens_per_day,
            budget.day_tokens,
            LimitKind::TokensPerDay,
            DAY,
            day_left,
        )
    })
    .or_else(|| {
        over(
            check.concurrent,
            budget.concurrent,
            LimitKind::Concurrent,
            0,
            1,
        )
    })
}
