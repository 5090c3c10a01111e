//! The shared store against a real `redis-server` (one per test, on a Unix
//! socket in a temporary folder: no port to race for), driven by a manual
//! clock. The end-to-end tests run the same scripts through the gateway;
//! these judge the store's own decisions in `make unit`, where mutation
//! testing looks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::clock::ManualClock;
use super::redis_store::{LeaseSettings, RedisStore, is_out_of_memory};
use super::{Check, LimitKind, Refusal};

/// A `redis-server` of its own, stopped when dropped.
pub(super) struct Server {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    pub(super) fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/install-deps installs it)");
        let server = Self {
            child,
            socket,
            _dir: dir,
        };
        // Connectable, not merely present: the socket file appears at
        // bind(), and connections are refused until listen().
        for _ in 0..500 {
            if std::os::unix::net::UnixStream::connect(&server.socket).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not listen on {}", server.socket.display());
    }

    pub(super) fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    pub(super) fn store(&self, clock: &Arc<ManualClock>, settings: LeaseSettings) -> RedisStore {
        RedisStore::new(&self.url(), "test:", clock.clone(), settings).expect("a well-formed URL")
    }

    pub(super) async fn raw(&self) -> MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The error this server answers a write with once it is full (its
    /// memory limit set to one byte).
    pub(super) async fn out_of_memory(&self) -> redis::RedisError {
        let mut redis = self.raw().await;
        ask::<()>(&mut redis, &["CONFIG", "SET", "maxmemory", "1"])
            .await
            .unwrap();
        ask::<()>(&mut redis, &["SET", "oom", "x"])
            .await
            .unwrap_err()
    }
}

/// Sends one command, given as its words, the way the tests read the keys.
pub(super) async fn ask<T: redis::FromRedisValue>(
    redis: &mut MultiplexedConnection,
    words: &[&str],
) -> redis::RedisResult<T> {
    let (name, args) = words.split_first().expect("a command");
    redis::cmd(name).arg(args).query_async(redis).await
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Day 100, 7 min 30 s in: 30 s left in the minute, 85,950 in the day.
const T: u64 = 100 * 86_400 + 7 * 60 + 30;
const MINUTE_LEFT: u64 = 30;
const DAY_LEFT: u64 = 86_400 - (7 * 60 + 30);

fn check(name: &str, key: &str, edit: impl FnOnce(&mut Check)) -> Check {
    let mut c = Check {
        limit_name: name.into(),
        key: key.into(),
        tokens_per_minute: None,
        requests_per_minute: None,
        concurrent: None,
        tokens_per_day: None,
    };
    edit(&mut c);
    c
}

fn refusal(name: &str, kind: LimitKind, quota: u64, window: u64, retry_after: u64) -> Refusal {
    Refusal {
        limit_name: name.into(),
        kind,
        quota,
        window,
        retry_after,
    }
}

fn settings(ttl_secs: u64) -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(ttl_secs),
        ..LeaseSettings::default()
    }
}

#[tokio::test]
async fn each_limit_refuses_with_its_kind_window_and_retry() {
    let server = Server::start();
    let clock = Arc::new(ManualClock::at(T));
    let store = server.store(
        &clock,
        LeaseSettings {
            max_models_per_owner: 1,
            ..settings(60)
        },
    );
    let admit = |checks: Vec<Check>, lease: &'static str, reserve: u64| {
        let store = &store;
        async move {
            let checks: Arc<[Check]> = checks.into();
            store.admit(&checks, lease, reserve).await.unwrap()
        }
    };
    let settle = |checks: Vec<Check>, lease: &'static str, tokens: u64| {
        let store = &store;
        async move { store.settle(&checks, lease, tokens).await.unwrap() }
    };

    // Spent windows: retry when the window ends.
    let tpm = || vec![check("tpm", "tpm|u", |c| c.tokens_per_minute = Some(10))];
    admit(tpm(), "a", 0).await.unwrap();
    settle(tpm(), "a", 10).await;
    assert_eq!(
        admit(tpm(), "b", 0).await,
        Err(refusal(
            "tpm",
            LimitKind::TokensPerMinute,
            10,
            60,
            MINUTE_LEFT
        ))
    );
    let rpm = || vec![check("rpm", "rpm|u", |c| c.requests_per_minute = Some(2))];
    for lease in ["a", "b"] {
        admit(rpm(), lease, 0).await.unwrap();
        settle(rpm(), lease, 0).await;
    }
    assert_eq!(
        admit(rpm(), "c", 0).await,
        Err(refusal(
            "rpm",
            LimitKind::RequestsPerMinute,
            2,
            60,
            MINUTE_LEFT
        ))
    );
    let tpd = || vec![check("tpd", "tpd|u", |c| c.tokens_per_day = Some(10))];
    admit(tpd(), "a", 0).await.unwrap();
    settle(tpd(), "a", 9).await;
    admit(tpd(), "b", 0).await.unwrap();
    settle(tpd(), "b", 1).await;
    assert_eq!(
        admit(tpd(), "c", 0).await,
        Err(refusal(
            "tpd",
            LimitKind::TokensPerDay,
            10,
            86_400,
            DAY_LEFT
        ))
    );

    // Taken by requests in flight: retry in a second.
    let conc = || vec![check("conc", "conc|u", |c| c.concurrent = Some(1))];
    admit(conc(), "a", 0).await.unwrap();
    assert_eq!(
        admit(conc(), "b", 0).await,
        Err(refusal("conc", LimitKind::Concurrent, 1, 0, 1))
    );
    let reserved = || vec![check("res", "res|u", |c| c.tokens_per_minute = Some(100))];
    admit(reserved(), "a", 60).await.unwrap();
    assert_eq!(
        admit(reserved(), "b", 60).await,
        Err(refusal("res", LimitKind::TokensPerMinute, 100, 60, 1)),
        "60 reserved and 60 more do not fit in 100"
    );
    admit(reserved(), "c", 40).await.unwrap();
    let reserved_day = || vec![check("resd", "resd|u", |c| c.tokens_per_day = Some(100))];
    admit(reserved_day(), "a", 60).await.unwrap();
    assert_eq!(
        admit(reserved_day(), "b", 60).await,
        Err(refusal("resd", LimitKind::TokensPerDay, 100, 86_400, 1))
    );
    admit(reserved_day(), "c", 40).await.unwrap();
    assert_eq!(
        admit(reserved_day(), "d", 0).await,
        Err(refusal("resd", LimitKind::TokensPerDay, 100, 86_400, 1)),
        "all of it reserved"
    );

    // A second model for an owner allowed one.
    let model = |m: &str| {
        vec![check("pm", &format!("pm|u|model={m}"), |c| {
            c.requests_per_minute = Some(100)
        })]
    };
    admit(model("a"), "a", 0).await.unwrap();
    admit(model("a"), "b", 0).await.unwrap();
    assert_eq!(
        admit(model("b"), "c", 0).await,
        Err(refusal(
            "pm",
            LimitKind::DistinctModels,
            1,
            86_400,
            DAY_LEFT
        ))
    );

    // The refusal names the budget that is full, not the first one.
    let two = vec![
        check("open", "open|u", |c| c.requests_per_minute = Some(100)),
        check("tpm", "tpm|u", |c| c.tokens_per_minute = Some(10)),
    ];
    assert_eq!(
        admit(two, "d", 0).await,
        Err(refusal(
            "tpm",
            LimitKind::TokensPerMinute,
            10,
            60,
            MINUTE_LEFT
        ))
    );
}

#[tokio::test]
async fn the_next_minute_and_the_next_day_reopen_a_budget() {
    let server = Server::start();
    let clock = Arc::new(ManualClock::at(T));
    let store = server.store(&clock, settings(60));
    let checks: Arc<[Check]> = vec![
        check("tpm", "tpm|u", |c| c.tokens_per_minute = Some(10)),
        check("tpd", "tpd|u", |c| c.tokens_per_day = Some(20)),
    ]
    .into();
    store.admit(&checks, "a", 0).await.unwrap().unwrap();
    store.settle(&checks, "a", 10).await.unwrap();
    clock.advance(MINUTE_LEFT - 1);
    let refused = store.admit(&checks, "b", 0).await.unwrap().unwrap_err();
    assert_eq!(
        (refused.kind, refused.retry_after),
        (LimitKind::TokensPerMinute, 1)
    );
    clock.advance(1);
    store.admit(&checks, "b", 0).await.unwrap().unwrap();
    store.settle(&checks, "b", 10).await.unwrap();
    clock.advance(60);
    let refused = store.admit(&checks, "c", 0).await.unwrap().unwrap_err();
    assert_eq!(refused.kind, LimitKind::TokensPerDay, "20 spent today");
    clock.advance(DAY_LEFT - MINUTE_LEFT - 60);
    store.admit(&checks, "c", 0).await.unwrap().unwrap();
}

#[tokio::test]
async fn settling_charges_every_budget_under_the_documented_keys() {
    let server = Server::start();
    let clock = Arc::new(ManualClock::at(T));
    let store = server.store(&clock, settings(10));
    let checks: Arc<[Check]> = vec![
        check("a", "a|u", |c| c.requests_per_minute = Some(5)),
        check("b", "b|u", |c| c.concurrent = Some(5)),
    ]
    .into();
    store.admit(&checks, "lease-1", 42).await.unwrap().unwrap();
    assert_eq!(store.live_leases(), 1);
    let mut redis = server.raw().await;
    let (minute, day) = (T / 60, T / 86_400);
    for budget in ["{test:}a|u", "{test:}b|u"] {
        let deadline: Option<f64> = ask(&mut redis, &["ZSCORE", &format!("{budget}:l"), "lease-1"])
            .await
            .unwrap();
        assert_eq!(
            deadline,
            Some((T * 1000 + 10_000) as f64),
            "{budget}: now + ttl"
        );
        let reserved: Option<u64> = ask(&mut redis, &["HGET", &format!("{budget}:v"), "lease-1"])
            .await
            .unwrap();
        assert_eq!(reserved, Some(42));
        // Lease keys outlive two lease times.
        let ttl: i64 = ask(&mut redis, &["PTTL", &format!("{budget}:l")])
            .await
            .unwrap();
        assert!((19_000..=20_000).contains(&ttl), "{budget}: {ttl} ms");
        let requests: Option<u64> =
            ask(&mut redis, &["HGET", &format!("{budget}:m:{minute}"), "r"])
                .await
                .unwrap();
        assert_eq!(requests, Some(1));
    }

    store.settle(&checks, "lease-1", 7).await.unwrap();
    assert_eq!(store.live_leases(), 0, "a settled lease is not renewed");
    for budget in ["{test:}a|u", "{test:}b|u"] {
        let tokens: Option<u64> = ask(&mut redis, &["HGET", &format!("{budget}:m:{minute}"), "t"])
            .await
            .unwrap();
        let today: Option<u64> = ask(&mut redis, &["GET", &format!("{budget}:d:{day}")])
            .await
            .unwrap();
        assert_eq!((tokens, today), (Some(7), Some(7)), "{budget}");
        let leases: u64 = ask(&mut redis, &["ZCARD", &format!("{budget}:l")])
            .await
            .unwrap();
        let reservations: u64 = ask(&mut redis, &["HLEN", &format!("{budget}:v")])
            .await
            .unwrap();
        assert_eq!((leases, reservations), (0, 0), "{budget}");
    }

    // A short lease time still keeps its keys a second.
    let short = server.store(
        &clock,
        LeaseSettings {
            ttl: Duration::from_millis(100),
            ..LeaseSettings::default()
        },
    );
    short.admit(&checks, "lease-2", 0).await.unwrap().unwrap();
    let ttl: i64 = ask(&mut redis, &["PTTL", "{test:}a|u:l"]).await.unwrap();
    assert!((900..=1_000).contains(&ttl), "{ttl} ms");
}

#[tokio::test]
async fn a_lease_holds_its_slot_until_settled_expired_or_renewed() {
    let server = Server::start();
    let clock = Arc::new(ManualClock::at(T));
    let store = server.store(&clock, settings(10));
    let one: Arc<[Check]> = vec![check("c", "c|u", |c| c.concurrent = Some(1))].into();
    let taken = || refusal("c", LimitKind::Concurrent, 1, 0, 1);

    // A lease nobody renews (its gateway was killed) frees the slot once
    // its deadline has passed, and not before.
    store.admit(&one, "killed", 0).await.unwrap().unwrap();
    store.forget("killed");
    assert_eq!(store.live_leases(), 0);
    assert_eq!(store.renew_all().await.unwrap(), 0);
    clock.advance(9);
    assert_eq!(store.admit(&one, "x", 0).await.unwrap(), Err(taken()));
    clock.advance(1);
    store.admit(&one, "running", 0).await.unwrap().unwrap();

    // A running request's lease is renewed: its slot stays taken.
    assert_eq!(store.live_leases(), 1);
    clock.advance(6);
    assert_eq!(store.renew_all().await.unwrap(), 1);
    clock.advance(6);
    assert_eq!(
        store.admit(&one, "y", 0).await.unwrap(),
        Err(taken()),
        "renewed 6 s ago, for 10"
    );
    clock.advance(4);
    store.admit(&one, "z", 0).await.unwrap().unwrap();
    store.settle(&one, "z", 0).await.unwrap();
    store.admit(&one, "w", 0).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_redis_out_of_memory_is_told_apart_from_other_errors() {
    let server = Server::start();
    let mut redis = server.raw().await;
    ask::<()>(&mut redis, &["SET", "s", "x"]).await.unwrap();
    let wrong_type = ask::<Option<String>>(&mut redis, &["HGET", "s", "f"])
        .await
        .unwrap_err();
    assert!(!is_out_of_memory(&wrong_type), "{wrong_type}");
    let full = server.out_of_memory().await;
    assert!(is_out_of_memory(&full), "{full}");
}

#[tokio::test]
async fn a_shared_admission_is_settled_in_redis_and_flush_waits_for_it() {
    use super::store::{FailMode, NotAdmitted, QuotaStore};
    let server = Server::start();
    let clock = Arc::new(ManualClock::at(T));
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let local = Arc::new(super::memory::MemoryStore::new(100, clock.clone()));
    let store = Arc::new(QuotaStore::redis(
        server.store(&clock, settings(60)),
        FailMode::Closed,
        local.clone(),
        metrics,
    ));
    let one = || vec![check("c", "c|u", |c| c.concurrent = Some(1))];
    let admission = store
        .admit(one(), 10)
        .await
        .unwrap()
        .expect("a limit applies");
    assert!(matches!(
        store.admit(one(), 10).await,
        Err(NotAdmitted::Refused(Refusal {
            kind: LimitKind::Concurrent,
            ..
        }))
    ));
    admission.settle(7);
    store.flush(Duration::from_secs(60)).await;
    // Settled in Redis (not in the local store, which never admitted it),
    // before flush returned.
    let mut redis = server.raw().await;
    let tokens: Option<u64> = ask(
        &mut redis,
        &["HGET", &format!("{{test:}}c|u:m:{}", T / 60), "t"],
    )
    .await
    .unwrap();
    assert_eq!(tokens, Some(7));
    assert_eq!((local.in_flight(), local.reserved()), (0, 0));
    let again = store.admit(one(), 10).await.unwrap();
    assert!(again.is_some(), "the slot is free again");
}

#[tokio::test]
async fn running_requests_renew_their_leases_and_each_admission_has_its_own() {
    use super::store::{FailMode, NotAdmitted, QuotaStore};
    let server = Server::start();
    let clock = Arc::new(ManualClock::at(T));
    let store = Arc::new(QuotaStore::redis(
        // Renewed every third of the lease time: each second.
        server.store(&clock, settings(3)),
        FailMode::Closed,
        Arc::new(super::memory::MemoryStore::new(100, clock.clone())),
        Arc::new(crate::metrics::Metrics::new()),
    ));
    let two = || vec![check("c", "c|u", |c| c.concurrent = Some(2))];
    let first = store.admit(two(), 0).await.unwrap();
    let second = store.admit(two(), 0).await.unwrap();
    assert!(
        matches!(store.admit(two(), 0).await, Err(NotAdmitted::Refused(_))),
        "two leases, two slots"
    );
    let mut redis = server.raw().await;
    let deadlines = |redis: &mut MultiplexedConnection| {
        let mut redis = redis.clone();
        async move {
            ask::<Vec<(String, f64)>>(
                &mut redis,
                &["ZRANGE", "{test:}c|u:l", "0", "-1", "WITHSCORES"],
            )
            .await
            .unwrap()
        }
    };
    let leases = deadlines(&mut redis).await;
    assert_eq!(leases.len(), 2);
    for (id, deadline) in &leases {
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(*deadline, (T * 1000 + 3_000) as f64);
    }
    // The gateway's clock moves on; the renewer pushes both deadlines back
    // within a period or two (bounded wait, not a timing assertion).
    clock.advance(2);
    let renewed = (T + 2) as f64 * 1000.0 + 3_000.0;
    let mut seen = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = deadlines(&mut redis).await;
        if seen.iter().all(|(_, d)| *d == renewed) {
            break;
        }
    }
    assert!(seen.iter().all(|(_, d)| *d == renewed), "{seen:?}");
    drop((first, second));
    store.flush(Duration::from_secs(60)).await;
    assert!(deadlines(&mut redis).await.is_empty(), "released");
}
