//! The shared quota store: budgets in Redis, so that every replica of a
//! backend draws from the same limit. Admission and charging are Lua
//! scripts, so each is atomic across all of a request's keys.
//!
//! Keys: `<prefix><budget>:m:<minute>` (hash: `t` tokens, `r` requests),
//! `<prefix><budget>:d:<day>` (tokens) and `<prefix><budget>:c` (requests in
//! flight). Windows are the UTC minute and day by the gateway's clock; keys
//! expire on their own.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::clock::Clock;
use super::{Check, LimitKind, Refusal};

const ADMIT: &str = r#"
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local a = 1 + i * 4
  local tpm, rpm, conc, tpd = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local mk, dk, ck = KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3]
  if tpm >= 0 and tonumber(redis.call('HGET', mk, 't') or '0') >= tpm then return {i, 1} end
  if rpm >= 0 and tonumber(redis.call('HGET', mk, 'r') or '0') >= rpm then return {i, 2} end
  if tpd >= 0 and tonumber(redis.call('GET', dk) or '0') >= tpd then return {i, 3} end
  if conc >= 0 and tonumber(redis.call('GET', ck) or '0') >= conc then return {i, 4} end
end
for i = 0, n - 1 do
  local a = 1 + i * 4
  local mk, ck = KEYS[i * 3 + 1], KEYS[i * 3 + 3]
  redis.call('HINCRBY', mk, 'r', 1)
  redis.call('EXPIRE', mk, 120)
  if tonumber(ARGV[a + 3]) >= 0 then
    redis.call('INCR', ck)
    redis.call('EXPIRE', ck, 900)
  end
end
return {-1, 0}
"#;

const FINISH: &str = r#"
local n = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
for i = 0, n - 1 do
  local mk, dk, ck = KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3]
  if tokens > 0 then
    redis.call('HINCRBY', mk, 't', tokens)
    redis.call('EXPIRE', mk, 120)
    redis.call('INCRBY', dk, tokens)
    redis.call('EXPIRE', dk, 172800)
  end
  if tonumber(ARGV[2 + i + 1]) == 1 then
    if tonumber(redis.call('DECR', ck)) < 0 then redis.call('SET', ck, 0) end
  end
end
return 0
"#;

/// Budgets in Redis.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    admit: Arc<Script>,
    finish: Arc<Script>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never printed.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects lazily (the gateway starts while Redis is down) and
    /// reconnects on its own after an outage.
    pub fn new(url: &str, prefix: &str, clock: Arc<dyn Clock>) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(Self {
            connection: ConnectionManager::new_lazy_with_config(client, config)?,
            prefix: prefix.to_owned(),
            admit: Arc::new(Script::new(ADMIT)),
            finish: Arc::new(Script::new(FINISH)),
            clock,
        })
    }

    fn keys(&self, check: &Check, now: u64) -> [String; 3] {
        let base = format!("{}{}", self.prefix, check.key);
        [
            format!("{base}:m:{}", now / 60),
            format!("{base}:d:{}", now / 86_400),
            format!("{base}:c"),
        ]
    }

    /// Admits a request against every check, or says which is full.
    pub async fn admit(&self, checks: &[Check]) -> redis::RedisResult<Result<(), Refusal>> {
        let now = self.clock.now();
        let mut invocation = self.admit.prepare_invoke();
        invocation.arg(checks.len());
        for check in checks {
            for key in self.keys(check, now) {
                invocation.key(key);
            }
            let or_none = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
            invocation
                .arg(or_none(check.tokens_per_minute))
                .arg(or_none(check.requests_per_minute))
                .arg(or_none(check.concurrent))
                .arg(or_none(check.tokens_per_day));
        }
        let mut connection = self.connection.clone();
        let (index, kind): (i64, i64) = invocation.invoke_async(&mut connection).await?;
        let Ok(index) = usize::try_from(index) else {
            return Ok(Ok(()));
        };
        let Some(check) = checks.get(index) else {
            return Ok(Ok(()));
        };
        let minute_left = 60 - now % 60;
        let day_left = 86_400 - now % 86_400;
        let (kind, quota, window, retry_after) = match kind {
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
            _ => (LimitKind::Concurrent, check.concurrent, 0, 1),
        };
        Ok(Err(Refusal {
            limit_name: check.limit_name.clone(),
            kind,
            quota: quota.unwrap_or_default(),
            window,
            retry_after,
        }))
    }

    /// Charges tokens and frees concurrency slots.
    pub async fn finish(&self, checks: &[Check], tokens: u64) -> redis::RedisResult<()> {
        let now = self.clock.now();
        let mut invocation = self.finish.prepare_invoke();
        invocation.arg(checks.len()).arg(tokens);
        for check in checks {
            for key in self.keys(check, now) {
                invocation.key(key);
            }
            invocation.arg(i64::from(check.concurrent.is_some()));
        }
        let mut connection = self.connection.clone();
        invocation
            .invoke_async::<i64>(&mut connection)
            .await
            .map(|_| ())
    }
}
