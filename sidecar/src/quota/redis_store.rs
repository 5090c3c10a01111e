//! The shared quota store: budgets in Redis, so that every replica of a
//! backend draws from the same limit. Admission, settling and lease renewal
//! are Lua scripts, each atomic across all of a request's keys.
//!
//! Per budget `B` (all under one hash tag, see [`tag`]):
//!
//! | key | type | what |
//! |---|---|---|
//! | `B:m:<minute>` | hash | `t` tokens charged, `r` requests, this UTC minute |
//! | `B:d:<day>` | string | tokens charged this UTC day |
//! | `B:l` | sorted set | admissions in flight: lease id scored by its deadline (ms) |
//! | `B:v` | hash | lease id → tokens it reserved |
//! | `<limit>|<owner>:i` | set | model names this owner has budgets for today |
//!
//! A lease is added at admission and removed when the request settles; a
//! request still running renews its lease every third of the lease time.
//! Every admission first trims expired leases (and their reservations), so
//! the slots of a gateway that was killed come back within one lease time.
//! Concurrency is the number of live leases. Windows are the UTC minute and
//! day by the gateway's clock; keys expire on their own.
//!
//! All keys of one gateway config share the hash slot of its key prefix, so
//! one script can touch every budget of a request on Redis Cluster too
//! (`{<prefix>}...`); the cluster mode is found by asking the server
//! (`INFO cluster`) on first connect. Backends with distinct prefixes land
//! on different slots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script, ScriptInvocation};
use tokio::sync::OnceCell;

use super::clock::Clock;
use super::{Check, LimitKind, Refusal};

const ADMIT: &str = r#"
local n = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local deadline = tonumber(ARGV[3])
local lease = ARGV[4]
local reserve = tonumber(ARGV[5])
local max_scopes = tonumber(ARGV[6])
local keep_ms = tonumber(ARGV[7])
for i = 0, n - 1 do
  local a = 8 + i * 5
  local k = i * 5
  local tpm, rpm, conc, tpd = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local scope = ARGV[a + 4]
  local mk, dk, lk, vk, ik = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
  local expired = redis.call('ZRANGEBYSCORE', lk, '-inf', now)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', lk, '-inf', now)
    for _, id in ipairs(expired) do redis.call('HDEL', vk, id) end
  end
  local reserved = 0
  for _, v in ipairs(redis.call('HVALS', vk)) do reserved = reserved + tonumber(v) end
  local used_m = tonumber(redis.call('HGET', mk, 't') or '0')
  if tpm >= 0 then
    if used_m + reserved >= tpm then
      if used_m >= tpm then return {i, 1, 0} end
      return {i, 1, 1}
    end
    if reserved > 0 and used_m + reserved + reserve > tpm then return {i, 1, 1} end
  end
  if rpm >= 0 and tonumber(redis.call('HGET', mk, 'r') or '0') >= rpm then return {i, 2, 0} end
  local used_d = tonumber(redis.call('GET', dk) or '0')
  if tpd >= 0 then
    if used_d + reserved >= tpd then
      if used_d >= tpd then return {i, 3, 0} end
      return {i, 3, 1}
    end
    if reserved > 0 and used_d + reserved + reserve > tpd then return {i, 3, 1} end
  end
  if conc >= 0 and redis.call('ZCARD', lk) >= conc then return {i, 4, 1} end
  if scope ~= '' and redis.call('SISMEMBER', ik, scope) == 0 and redis.call('SCARD', ik) >= max_scopes then
    return {i, 5, 0}
  end
end
for i = 0, n - 1 do
  local a = 8 + i * 5
  local k = i * 5
  local scope = ARGV[a + 4]
  local mk, lk, vk, ik = KEYS[k + 1], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
  redis.call('HINCRBY', mk, 'r', 1)
  redis.call('EXPIRE', mk, 120)
  redis.call('ZADD', lk, deadline, lease)
  redis.call('HSET', vk, lease, reserve)
  redis.call('PEXPIRE', lk, keep_ms)
  redis.call('PEXPIRE', vk, keep_ms)
  if scope ~= '' then
    redis.call('SADD', ik, scope)
    redis.call('EXPIRE', ik, 172800)
  end
end
return {-1, 0, 0}
"#;

const SETTLE: &str = r#"
local n = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local lease = ARGV[3]
for i = 0, n - 1 do
  local k = i * 4
  local mk, dk, lk, vk = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  if tokens > 0 then
    redis.call('HINCRBY', mk, 't', tokens)
    redis.call('EXPIRE', mk, 120)
    redis.call('INCRBY', dk, tokens)
    redis.call('EXPIRE', dk, 172800)
  end
  redis.call('ZREM', lk, lease)
  redis.call('HDEL', vk, lease)
end
return 0
"#;

const RENEW: &str = r#"
local deadline = tonumber(ARGV[1])
local lease = ARGV[2]
local keep_ms = tonumber(ARGV[3])
local renewed = 0
for i = 1, #KEYS, 2 do
  renewed = renewed + redis.call('ZADD', KEYS[i], 'XX', 'CH', deadline, lease)
  redis.call('PEXPIRE', KEYS[i], keep_ms)
  redis.call('PEXPIRE', KEYS[i + 1], keep_ms)
end
return renewed
"#;

/// Lease timing.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// How long a lease lives unless renewed: the longest a killed
    /// gateway's slots stay taken.
    pub ttl: Duration,
    /// The most distinct models one owner may have per-model budgets for
    /// in a day, per limit.
    pub max_models_per_owner: u64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            max_models_per_owner: 64,
        }
    }
}

/// A connection, single server or cluster (found out on first connect).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Budgets in Redis.
pub struct RedisStore {
    client: redis::Client,
    url: String,
    connection: OnceCell<Connection>,
    prefix: String,
    admit: Script,
    settle: Script,
    renew: Script,
    clock: Arc<dyn Clock>,
    settings: LeaseSettings,
    /// Leases of requests still running, for renewal.
    live: Mutex<HashMap<String, Arc<[Check]>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never printed.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The hash tag all of a prefix's keys share: `{prefix}`, or the prefix as
/// it is when it already names a tag.
pub fn tag(prefix: &str) -> String {
    let names_tag = prefix
        .find('{')
        .is_some_and(|open| prefix[open + 1..].find('}').is_some_and(|len| len > 0));
    if names_tag {
        prefix.to_owned()
    } else {
        format!("{{{prefix}}}")
    }
}

/// Whether an error is Redis refusing writes for lack of memory.
pub fn is_out_of_memory(error: &redis::RedisError) -> bool {
    error.code() == Some("OOM")
}

impl RedisStore {
    /// Connects lazily (the gateway starts while Redis is down) and
    /// reconnects on its own after an outage.
    pub fn new(
        url: &str,
        prefix: &str,
        clock: Arc<dyn Clock>,
        settings: LeaseSettings,
    ) -> RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            url: url.to_owned(),
            connection: OnceCell::new(),
            prefix: tag(prefix),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            renew: Script::new(RENEW),
            clock,
            settings,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this store is the one `url`, `prefix` and `settings` describe.
    pub fn is(&self, url: &str, prefix: &str, settings: &LeaseSettings) -> bool {
        self.url == url
            && self.prefix == tag(prefix)
            && self.settings.ttl == settings.ttl
            && self.settings.max_models_per_owner == settings.max_models_per_owner
    }

    /// The lease settings.
    pub fn settings(&self) -> LeaseSettings {
        self.settings
    }

    async fn connection(&self) -> RedisResult<Connection> {
        self.connection
            .get_or_try_init(|| async {
                let timeout = Duration::from_millis(500);
                let mut probe =
                    tokio::time::timeout(timeout, self.client.get_multiplexed_async_connection())
                        .await
                        .map_err(|_| {
                            redis::RedisError::from(std::io::Error::from(
                                std::io::ErrorKind::TimedOut,
                            ))
                        })??;
                let info: String = redis::cmd("INFO")
                    .arg("cluster")
                    .query_async(&mut probe)
                    .await?;
                if info.contains("cluster_enabled:1") {
                    let cluster =
                        redis::cluster::ClusterClientBuilder::new(vec![self.url.as_str()])
                            .connection_timeout(timeout)
                            .response_timeout(timeout)
                            .retries(2)
                            .min_retry_wait(50)
                            .max_retry_wait(500)
                            .build()?;
                    Ok(Connection::Cluster(cluster.get_async_connection().await?))
                } else {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout))
                        .set_number_of_retries(1)
                        .set_max_delay(Duration::from_secs(1));
                    Ok(Connection::Single(
                        ConnectionManager::new_with_config(self.client.clone(), config).await?,
                    ))
                }
            })
            .await
            .cloned()
    }

    /// The hash-tagged prefix every key of this store starts with.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs `cmd` on this store's connection (for the API key store, which
    /// shares it).
    pub(crate) async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self.connection().await? {
            Connection::Single(mut c) => cmd.query_async(&mut c).await,
            Connection::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    /// Runs `pipe` on this store's connection.
    pub(crate) async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> RedisResult<T> {
        match self.connection().await? {
            Connection::Single(mut c) => pipe.query_async(&mut c).await,
            Connection::Cluster(mut c) => pipe.query_async(&mut c).await,
        }
    }

    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match self.connection().await? {
            Connection::Single(mut c) => invocation.invoke_async(&mut c).await,
            Connection::Cluster(mut c) => invocation.invoke_async(&mut c).await,
        }
    }

    fn budget(&self, check: &Check) -> String {
        format!("{}{}", self.prefix, check.key)
    }

    fn window_keys(&self, check: &Check, now: u64) -> [String; 2] {
        let base = self.budget(check);
        [
            format!("{base}:m:{}", now / 60),
            format!("{base}:d:{}", now / 86_400),
        ]
    }

    fn lease_keys(&self, check: &Check) -> [String; 2] {
        let base = self.budget(check);
        [format!("{base}:l"), format!("{base}:v")]
    }

    fn keep_ms(&self) -> u64 {
        u64::try_from(self.settings.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(2)
            .max(1000)
    }

    fn deadline(&self) -> u64 {
        self.clock
            .now_millis()
            .saturating_add(u64::try_from(self.settings.ttl.as_millis()).unwrap_or(u64::MAX))
    }

    /// Admits a request against every check with `reserve` tokens under
    /// lease `lease`, or says which is full.
    pub async fn admit(
        &self,
        checks: &Arc<[Check]>,
        lease: &str,
        reserve: u64,
    ) -> RedisResult<Result<(), Refusal>> {
        let now_ms = self.clock.now_millis();
        let now = now_ms / 1000;
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .arg(checks.len())
            .arg(now_ms)
            .arg(self.deadline())
            .arg(lease)
            .arg(reserve.min(1 << 52))
            .arg(self.settings.max_models_per_owner)
            .arg(self.keep_ms());
        for check in checks.iter() {
            let [mk, dk] = self.window_keys(check, now);
            let [lk, vk] = self.lease_keys(check);
            let (owner, scope) = check.owner_and_scope();
            invocation
                .key(mk)
                .key(dk)
                .key(lk)
                .key(vk)
                .key(format!("{}{owner}:i", self.prefix));
            // A limit is at most 2^52 (Lua's numbers are doubles), which
            // fits an i64; -1 is none.
            let or_none = |v: Option<u64>| v.map_or(-1, |v| v.min(1 << 52) as i64);
            invocation
                .arg(or_none(check.tokens_per_minute))
                .arg(or_none(check.requests_per_minute))
                .arg(or_none(check.concurrent))
                .arg(or_none(check.tokens_per_day))
                .arg(scope.unwrap_or_default());
        }
        let (index, kind, transient): (i64, i64, i64) = self.invoke(&invocation).await?;
        let Ok(index) = usize::try_from(index) else {
            self.live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(lease.to_owned(), checks.clone());
            return Ok(Ok(()));
        };
        let Some(check) = checks.get(index) else {
            return Ok(Ok(()));
        };
        let minute_left = 60 - now % 60;
        let day_left = 86_400 - now % 86_400;
        let (kind, quota, window, left) = match kind {
            1 => (
                LimitKind::TokensPerMinute,
                check.tokens_per_minute,
                60,
                minute_left,
            ),
            2 => (
                LimitKind::RequestsPerMinute,
                check.requests_per_minute,
                60,
                minute_left,
            ),
            3 => (
                LimitKind::TokensPerDay,
                check.tokens_per_day,
                86_400,
                day_left,
            ),
            5 => (
                LimitKind::DistinctModels,
                Some(self.settings.max_models_per_owner),
                86_400,
                day_left,
            ),
            _ => (LimitKind::Concurrent, check.concurrent, 0, 1),
        };
        Ok(Err(Refusal {
            limit_name: check.limit_name.clone(),
            kind,
            quota: quota.unwrap_or_default(),
            window,
            retry_after: if transient == 1 { 1 } else { left },
        }))
    }

    /// Charges `tokens` and frees the lease (its slot and its reservation).
    pub async fn settle(&self, checks: &[Check], lease: &str, tokens: u64) -> RedisResult<()> {
        self.forget(lease);
        let now = self.clock.now();
        let mut invocation = self.settle.prepare_invoke();
        invocation
            .arg(checks.len())
            .arg(tokens.min(1 << 52))
            .arg(lease);
        for check in checks {
            let [mk, dk] = self.window_keys(check, now);
            let [lk, vk] = self.lease_keys(check);
            invocation.key(mk).key(dk).key(lk).key(vk);
        }
        self.invoke::<i64>(&invocation).await.map(|_| ())
    }

    /// Stops renewing `lease` (its request ended, or settling it failed and
    /// it is left to expire).
    pub fn forget(&self, lease: &str) {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(lease);
    }

    /// Pushes back the deadline of every lease still running. Returns how
    /// many were renewed.
    pub async fn renew_all(&self) -> RedisResult<usize> {
        let live: Vec<(String, Arc<[Check]>)> = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut renewed = 0;
        for (lease, checks) in live {
            let mut invocation = self.renew.prepare_invoke();
            invocation
                .arg(self.deadline())
                .arg(&lease)
                .arg(self.keep_ms());
            for check in checks.iter() {
                let [lk, vk] = self.lease_keys(check);
                invocation.key(lk).key(vk);
            }
            let _: i64 = self.invoke(&invocation).await?;
            renewed += 1;
        }
        Ok(renewed)
    }

    /// Leases this gateway holds now.
    pub fn live_leases(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_prefix_shares_one_hash_tag() {
        assert_eq!(tag("attach:quota:"), "{attach:quota:}");
        assert_eq!(tag("ns/name:"), "{ns/name:}");
        assert_eq!(tag("x:{team}:"), "x:{team}:", "an explicit tag is kept");
        assert_eq!(tag("x:{}:"), "{x:{}:}", "an empty tag is no tag");
        assert_eq!(tag("x:{team"), "{x:{team}");
    }

    #[test]
    fn a_reload_keeps_the_store_only_when_url_prefix_and_settings_are_the_same() {
        let clock: Arc<dyn Clock> = Arc::new(super::super::clock::ManualClock::at(0));
        let settings = LeaseSettings {
            ttl: Duration::from_secs(30),
            max_models_per_owner: 8,
        };
        let store =
            RedisStore::new("redis://127.0.0.1:1", "ns/name:", clock, settings).expect("a URL");
        let (ttl, models) = (store.settings().ttl, store.settings().max_models_per_owner);
        assert_eq!((ttl, models), (Duration::from_secs(30), 8));
        let url = "redis://127.0.0.1:1";
        assert!(store.is(url, "ns/name:", &settings));
        assert!(store.is(url, "{ns/name:}", &settings), "the same tag");
        let cases = [
            ("redis://127.0.0.1:2", "ns/name:", settings),
            (url, "ns/other:", settings),
            (
                url,
                "ns/name:",
                LeaseSettings {
                    ttl: Duration::from_secs(31),
                    ..settings
                },
            ),
            (
                url,
                "ns/name:",
                LeaseSettings {
                    max_models_per_owner: 9,
                    ..settings
                },
            ),
        ];
        for (url, prefix, other) in cases {
            assert!(!store.is(url, prefix, &other), "{url} {prefix} {other:?}");
        }
    }

    #[test]
    fn debug_output_names_the_prefix_and_never_the_url() {
        let clock: Arc<dyn Clock> = Arc::new(super::super::clock::ManualClock::at(0));
        let store = RedisStore::new(
            "redis://:hunter2-password@127.0.0.1:1",
            "ns/name:",
            clock,
            LeaseSettings::default(),
        )
        .expect("a URL");
        let printed = format!("{store:?}");
        assert!(printed.starts_with("RedisStore {"), "{printed}");
        assert!(
            printed.contains("{ns/name:}") && printed.contains("ttl: 60s"),
            "{printed}"
        );
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn the_stores_sharing_its_connection_see_the_tagged_prefix() {
        // The API key records live beside the counters, in the same slot.
        let clock: Arc<dyn Clock> = Arc::new(super::super::clock::ManualClock::at(0));
        let store = RedisStore::new("redis://127.0.0.1:1", "ns/name:", clock, Default::default())
            .expect("a well-formed URL");
        assert_eq!(store.prefix(), "{ns/name:}");
    }
}
