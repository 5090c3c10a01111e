//! Where key records live: Redis, on the quota store's connection and under
//! its prefix, shared by every replica of a backend. (Unit tests use an
//! in-process map with the same semantics; it is never a deployment's.)
//!
//! | key | type | what |
//! |---|---|---|
//! | `P apikey:r:<id>` | string | the sealed record, expiring a day after the key |
//! | `P apikey:u:<owner>` | sorted set | one owner's key ids by expiry (`owner`: a hash of issuer and subject) |
//! | `P apikey:all` | sorted set | every key id by expiry, for administrators |
//!
//! No key contains `|`, which every budget key does, so the two never meet.
//! Only keys that have not expired count against `maxKeysPerUser`.

use std::sync::Arc;

use redis::{RedisResult, Script};

use crate::quota::redis_store::RedisStore;

/// Stores a record unless its owner already holds the most live keys.
/// KEYS: record, owner index, index of all. ARGV: stored value, time to
/// live (ms: relative, so Redis's clock never has to agree with the
/// gateway's), id, the most live keys, now, the key's expiry, and the time
/// before which expired keys' records are gone (seconds since the epoch).
const CREATE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[7])
local live = redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[5], '+inf')
if live >= tonumber(ARGV[4]) then return live end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[3])
return -1
";

/// A new record: what [`Records::create`] stores.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub stored: &'a str,
    pub expires: u64,
    /// How long the record stays after its key expired.
    pub keep_after: u64,
}

/// The records of one backend.
pub enum Records {
    Redis {
        redis: Arc<RedisStore>,
        create: Script,
    },
    #[cfg(test)]
    Memory(Arc<std::sync::Mutex<memory::Map>>),
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Redis { .. } => "Records::Redis",
            #[cfg(test)]
            Self::Memory(_) => "Records::Memory",
        })
    }
}

impl Records {
    /// Records in `redis`.
    pub fn redis(redis: Arc<RedisStore>) -> Self {
        Self::Redis {
            redis,
            create: Script::new(CREATE),
        }
    }

    fn record_key(prefix: &str, id: &str) -> String {
        format!("{prefix}apikey:r:{id}")
    }

    fn owner_key(prefix: &str, owner: &str) -> String {
        format!("{prefix}apikey:u:{owner}")
    }

    fn all_key(prefix: &str) -> String {
        format!("{prefix}apikey:all")
    }

    /// The stored record of `id`.
    pub async fn get(&self, id: &str) -> RedisResult<Option<String>> {
        match self {
            Self::Redis { redis, .. } => {
                redis
                    .query(redis::cmd("GET").arg(Self::record_key(redis.prefix(), id)))
                    .await
            }
            #[cfg(test)]
            Self::Memory(map) => Ok(memory::lock(map).records.get(id).cloned()),
        }
    }

    /// Stores `new` unless its owner holds `max` live keys at `now`;
    /// returns whether it was stored.
    pub async fn create(&self, new: NewRecord<'_>, max: u32, now: u64) -> RedisResult<bool> {
        let forget_before = now.saturating_sub(new.keep_after);
        match self {
            Self::Redis { redis, create } => {
                let prefix = redis.prefix();
                let ttl_ms = new
                    .expires
                    .saturating_sub(now)
                    .saturating_add(new.keep_after)
                    .saturating_mul(1000);
                let mut invocation = create.prepare_invoke();
                invocation
                    .key(Self::record_key(prefix, new.id))
                    .key(Self::owner_key(prefix, new.owner))
                    .key(Self::all_key(prefix))
                    .arg(new.stored)
                    .arg(ttl_ms)
                    .arg(new.id)
                    .arg(max)
                    .arg(now)
                    .arg(new.expires)
                    .arg(forget_before);
                let reply: i64 = redis.invoke(&invocation).await?;
                Ok(stored(reply))
            }
            #[cfg(test)]
            Self::Memory(map) => Ok(memory::lock(map).create(new, max, now, forget_before)),
        }
    }

    /// The ids of `owner`'s keys, or of every key.
    pub async fn ids(&self, owner: Option<&str>) -> RedisResult<Vec<String>> {
        match self {
            Self::Redis { redis, .. } => {
                let index = match owner {
                    Some(owner) => Self::owner_key(redis.prefix(), owner),
                    None => Self::all_key(redis.prefix()),
                };
                redis.query(&whole_range(index)).await
            }
            #[cfg(test)]
            Self::Memory(map) => Ok(memory::lock(map).ids(owner)),
        }
    }

    /// The stored records of `ids` (`None` where one is gone).
    pub async fn values(&self, ids: &[String]) -> RedisResult<Vec<Option<String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Self::Redis { redis, .. } => {
                let keys: Vec<String> = ids
                    .iter()
                    .map(|id| Self::record_key(redis.prefix(), id))
                    .collect();
                redis.query(redis::cmd("MGET").arg(keys)).await
            }
            #[cfg(test)]
            Self::Memory(map) => {
                let map = memory::lock(map);
                Ok(ids.iter().map(|id| map.records.get(id).cloned()).collect())
            }
        }
    }

    /// Deletes `id`'s record and its index entries, at once.
    pub async fn delete(&self, id: &str, owner: &str) -> RedisResult<()> {
        match self {
            Self::Redis { redis, .. } => {
                let prefix = redis.prefix();
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("DEL")
                    .arg(Self::record_key(prefix, id))
                    .ignore()
                    .cmd("ZREM")
                    .arg(Self::owner_key(prefix, owner))
                    .arg(id)
                    .ignore()
                    .cmd("ZREM")
                    .arg(Self::all_key(prefix))
                    .arg(id)
                    .ignore();
                redis.query_pipe(&pipe).await
            }
            #[cfg(test)]
            Self::Memory(map) => {
                memory::lock(map).delete(id, owner);
                Ok(())
            }
        }
    }
}

/// Whether `CREATE` stored the record: it answers -1 when it did, and the
/// owner's count of live keys when they already hold the most.
fn stored(reply: i64) -> bool {
    reply < 0
}

/// Every member of the sorted set `index`, lowest score (soonest expiry)
/// first.
fn whole_range(index: String) -> redis::Cmd {
    let mut cmd = redis::cmd("ZRANGE");
    cmd.arg(index).arg(0).arg(-1);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_records_are_named_as_the_table_says() {
        let prefix = "{ns/llm:}";
        assert_eq!(Records::record_key(prefix, "abc"), "{ns/llm:}apikey:r:abc");
        assert_eq!(Records::owner_key(prefix, "0f1e"), "{ns/llm:}apikey:u:0f1e");
        assert_eq!(Records::all_key(prefix), "{ns/llm:}apikey:all");
    }

    #[test]
    fn the_create_scripts_answer_says_whether_it_stored() {
        assert!(stored(-1));
        for held in [0, 1, 20] {
            assert!(!stored(held), "{held} live keys: not stored");
        }
    }

    #[test]
    fn a_listing_reads_the_whole_index() {
        assert_eq!(
            whole_range("i".into()).get_packed_command(),
            b"*4\r\n$6\r\nZRANGE\r\n$1\r\ni\r\n$1\r\n0\r\n$2\r\n-1\r\n"
        );
    }

    #[test]
    fn the_debug_form_names_the_kind() {
        let map = Records::Memory(Default::default());
        assert_eq!(format!("{map:?}"), "Records::Memory");
    }
}

/// The unit tests' records: the Redis semantics, in a map.
#[cfg(test)]
pub mod memory {
    use std::collections::{BTreeMap, HashMap};

    use super::NewRecord;

    /// Records, and the owners' and the global indexes (id -> expiry).
    #[derive(Debug, Default)]
    pub struct Map {
        pub records: HashMap<String, String>,
        owners: HashMap<String, BTreeMap<String, u64>>,
        all: BTreeMap<String, u64>,
    }

    pub fn lock(map: &std::sync::Mutex<Map>) -> std::sync::MutexGuard<'_, Map> {
        map.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    impl Map {
        pub fn create(
            &mut self,
            new: NewRecord<'_>,
            max: u32,
            now: u64,
            forget_before: u64,
        ) -> bool {
            let owned = self.owners.entry(new.owner.to_owned()).or_default();
            owned.retain(|_, expires| *expires > forget_before);
            self.all.retain(|_, expires| *expires > forget_before);
            let live = owned.values().filter(|expires| **expires > now).count();
            if live >= max as usize {
                return false;
            }
            owned.insert(new.id.to_owned(), new.expires);
            self.all.insert(new.id.to_owned(), new.expires);
            self.records
                .insert(new.id.to_owned(), new.stored.to_owned());
            true
        }

        pub fn ids(&self, owner: Option<&str>) -> Vec<String> {
            match owner {
                Some(owner) => self
                    .owners
                    .get(owner)
                    .map(|ids| ids.keys().cloned().collect())
                    .unwrap_or_default(),
                None => self.all.keys().cloned().collect(),
            }
        }

        /// Puts `id` in `owner`'s index, as whoever can write to Redis
        /// could.
        pub fn tamper_index(&mut self, owner: &str, id: &str, expires: u64) {
            self.owners
                .entry(owner.to_owned())
                .or_default()
                .insert(id.to_owned(), expires);
        }

        pub fn delete(&mut self, id: &str, owner: &str) {
            self.records.remove(id);
            if let Some(ids) = self.owners.get_mut(owner) {
                ids.remove(id);
            }
            self.all.remove(id);
        }
    }
}
