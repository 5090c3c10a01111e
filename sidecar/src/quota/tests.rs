use std::sync::Arc;

use serde_json::json;

use super::clock::ManualClock;
use super::memory::{MemoryRefusal, MemoryStore};
use super::*;
use crate::canonical::{Engine, JudgedModel, canonical_name};
use crate::claims::ClaimMapping;
use crate::policy::Subjects;

fn who(claims: serde_json::Value) -> Identity {
    ClaimMapping::default()
        .resolve()
        .unwrap()
        .identity(claims.as_object().unwrap(), 0, &[])
        .unwrap()
        .identity
}

/// A model the backend serves, by its canonical Ollama name.
fn served(name: &str) -> JudgedModel {
    JudgedModel {
        name: canonical_name(Engine::Ollama, name).unwrap(),
        served: true,
    }
}

/// Admits with nothing reserved (the tests of plain counting).
fn admit(s: &MemoryStore, c: &[Check]) -> Result<(), Refusal> {
    s.admit(c, 0).map_err(|e| match e {
        memory::MemoryRefusal::Refused(r) => r,
        memory::MemoryRefusal::Full(_) => panic!("store full"),
    })
}

/// Settles an admission made with nothing reserved.
fn finish(s: &MemoryStore, c: &[Check], tokens: u64) {
    s.settle(c, 0, tokens);
}

fn store(clock: &Arc<ManualClock>) -> MemoryStore {
    MemoryStore::new(10_000, clock.clone())
}

#[test]
fn a_token_budget_refuses_at_the_limit_and_reopens_with_the_next_minute() {
    let clock = Arc::new(ManualClock::at(60 * 16_667 + 20)); // 20 s into a minute
    let s = store(&clock);
    let bob = who(json!({"sub": "bob"}));
    let limits = [QuotaLimit {
        tokens_per_minute: Some(100),
        ..QuotaLimit::named("per-user")
    }];
    let c = checks(&limits, &bob, Engine::Ollama, Some(&served("m")));
    assert_eq!(c.len(), 1);
    admit(&s, &c).unwrap();
    finish(&s, &c, 60);
    admit(&s, &c).unwrap(); // 60 < 100: still admitted
    finish(&s, &c, 60); // now 120: over
    let refusal = admit(&s, &c).unwrap_err();
    assert_eq!(refusal.kind, LimitKind::TokensPerMinute);
    assert_eq!(refusal.quota, 100);
    assert_eq!(refusal.retry_after, 40, "until the minute ends");
    clock.advance(40);
    admit(&s, &c).unwrap();
}

#[test]
fn requests_concurrency_and_daily_tokens() {
    let clock = Arc::new(ManualClock::at(86_400 * 100));
    let s = store(&clock);
    let u = who(json!({"sub": "u"}));
    let limits = [QuotaLimit {
        requests_per_minute: Some(3),
        concurrent: Some(2),
        tokens_per_day: Some(1000),
        ..QuotaLimit::named("l")
    }];
    let c = checks(&limits, &u, Engine::Ollama, None);
    admit(&s, &c).unwrap();
    admit(&s, &c).unwrap();
    assert_eq!(admit(&s, &c).unwrap_err().kind, LimitKind::Concurrent);
    finish(&s, &c, 10);
    admit(&s, &c).unwrap(); // third request of the minute
    assert_eq!(
        admit(&s, &c).unwrap_err().kind,
        LimitKind::RequestsPerMinute
    );
    finish(&s, &c, 10);
    finish(&s, &c, 1000);
    clock.advance(60);
    let r = admit(&s, &c).unwrap_err();
    assert_eq!(r.kind, LimitKind::TokensPerDay);
    assert_eq!(r.retry_after, 86_400 - 60);
    clock.advance(86_400);
    admit(&s, &c).unwrap();
}

#[test]
fn budgets_are_per_user_per_group_per_tenant_and_per_model() {
    let clock = Arc::new(ManualClock::at(0));
    let s = store(&clock);
    let bob = who(json!({"sub": "bob", "groups": ["staff"], "tenant": "acme"}));
    let dan = who(json!({"sub": "dan", "groups": ["staff"], "tenant": "acme"}));
    let eve = who(json!({"sub": "eve", "groups": ["interns"], "tenant": "globex"}));
    let limits = [
        QuotaLimit {
            requests_per_minute: Some(1),
            ..QuotaLimit::named("per-user")
        },
        QuotaLimit {
            per: QuotaKey::Group,
            subjects: Some(Subjects {
                groups: vec!["staff".into()],
                ..Default::default()
            }),
            requests_per_minute: Some(3),
            ..QuotaLimit::named("staff-group")
        },
        QuotaLimit {
            per: QuotaKey::Tenant,
            models: vec!["*:70b".into()],
            requests_per_minute: Some(1),
            ..QuotaLimit::named("big-per-tenant")
        },
    ];
    assert_eq!(
        checks(&limits, &bob, Engine::Ollama, Some(&served("llama3.2:1b"))).len(),
        2,
        "user + group"
    );
    assert_eq!(
        checks(&limits, &bob, Engine::Ollama, Some(&served("llama3.1:70b"))).len(),
        3,
        "+ per model"
    );
    assert_eq!(
        checks(&limits, &eve, Engine::Ollama, Some(&served("llama3.2:1b"))).len(),
        1,
        "interns: no group budget"
    );
    admit(
        &s,
        &checks(&limits, &bob, Engine::Ollama, Some(&served("llama3.1:70b"))),
    )
    .unwrap();
    // Dan has his own user budget, but acme's 70b budget is spent.
    let r = admit(
        &s,
        &checks(&limits, &dan, Engine::Ollama, Some(&served("llama3.1:70b"))),
    )
    .unwrap_err();
    assert_eq!(r.limit_name, "big-per-tenant");
    admit(
        &s,
        &checks(&limits, &dan, Engine::Ollama, Some(&served("llama3.2:1b"))),
    )
    .unwrap();
    // A refused request counts nowhere: the group has used 2 of 3.
    let carl = who(json!({"sub": "carl", "groups": ["staff"]}));
    admit(&s, &checks(&limits, &carl, Engine::Ollama, None)).unwrap();
    let fay = who(json!({"sub": "fay", "groups": ["staff"]}));
    assert_eq!(
        admit(&s, &checks(&limits, &fay, Engine::Ollama, None))
            .unwrap_err()
            .limit_name,
        "staff-group"
    );
}

#[test]
fn limits_hold_exactly_under_concurrent_admission() {
    let clock = Arc::new(ManualClock::at(0));
    let s = Arc::new(store(&clock));
    let u = who(json!({"sub": "u"}));
    let limits = [QuotaLimit {
        requests_per_minute: Some(100),
        ..QuotaLimit::named("l")
    }];
    let c = Arc::new(checks(&limits, &u, Engine::Ollama, None));
    let admitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (s, c, admitted) = (s.clone(), c.clone(), admitted.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    if admit(&s, &c).is_ok() {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 100);
}

#[test]
fn memory_stays_bounded_by_evicting_idle_budgets() {
    let clock = Arc::new(ManualClock::at(0));
    let s = MemoryStore::new(1_600, clock.clone());
    let limits = [QuotaLimit {
        requests_per_minute: Some(10),
        ..QuotaLimit::named("l")
    }];
    for i in 0..20_000 {
        let u = who(json!({"sub": format!("user-{i}")}));
        admit(&s, &checks(&limits, &u, Engine::Ollama, None)).unwrap();
        finish(&s, &checks(&limits, &u, Engine::Ollama, None), 1);
        if i % 1000 == 0 {
            clock.advance(1);
        }
    }
    assert!(s.len() <= 1_600, "{} budgets kept", s.len());
}

#[test]
fn forty_concurrent_requests_cannot_outrun_a_token_budget() {
    // The failure: 40 streams admitted at once against 100 tokens, each
    // charged at its end, spent 2,400. Each now reserves its estimate.
    let clock = Arc::new(ManualClock::at(86_400 * 100 + 1));
    let s = store(&clock);
    let u = who(json!({"sub": "u"}));
    let limits = [QuotaLimit {
        tokens_per_minute: Some(100),
        tokens_per_day: Some(100),
        ..QuotaLimit::named("l")
    }];
    let c = checks(&limits, &u, Engine::Ollama, None);
    const RESERVE: u64 = 16; // prompt estimate + max_tokens
    const USED: u64 = 14; // what each really used (within its reservation)
    let admitted: Vec<bool> = (0..40).map(|_| s.admit(&c, RESERVE).is_ok()).collect();
    let n = admitted.iter().filter(|a| **a).count() as u64;
    assert_eq!(n, 100 / RESERVE, "only what fits is admitted at once");
    assert_eq!((s.reserved(), s.in_flight()), (n * RESERVE, n));
    for _ in 0..n {
        s.settle(&c, RESERVE, USED);
    }
    assert!(n * USED <= 100, "charged {} of 100", n * USED);
    assert_eq!(s.reserved(), 0);
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn a_request_bigger_than_the_whole_budget_runs_alone() {
    let clock = Arc::new(ManualClock::at(86_400 * 100 + 1));
    let s = store(&clock);
    let u = who(json!({"sub": "u"}));
    let limits = [QuotaLimit {
        tokens_per_minute: Some(100),
        ..QuotaLimit::named("l")
    }];
    let c = checks(&limits, &u, Engine::Ollama, None);
    s.admit(&c, 1000).unwrap();
    let refused = s.admit(&c, 1000).unwrap_err();
    let MemoryRefusal::Refused(r) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!((r.kind, r.retry_after), (LimitKind::TokensPerMinute, 1));
    s.settle(&c, 1000, 30);
    // 30 used, alone again: admitted; overshoot is bounded by this one.
    s.admit(&c, 1000).unwrap();
    s.settle(&c, 1000, 90);
    let MemoryRefusal::Refused(r) = s.admit(&c, 1).unwrap_err() else {
        panic!()
    };
    assert_eq!(r.retry_after, 59, "spent: until the minute ends");
}

#[test]
fn reservations_outlive_a_window_boundary() {
    let clock = Arc::new(ManualClock::at(60 * 1000 + 50));
    let s = store(&clock);
    let u = who(json!({"sub": "u"}));
    let limits = [QuotaLimit {
        tokens_per_minute: Some(100),
        ..QuotaLimit::named("l")
    }];
    let c = checks(&limits, &u, Engine::Ollama, None);
    s.admit(&c, 60).unwrap();
    clock.advance(20); // a new minute; the request is still running
    assert!(
        s.admit(&c, 60).is_err(),
        "the running request's 60 still count"
    );
    s.settle(&c, 60, 10);
    s.admit(&c, 60).unwrap();
}

#[test]
fn junk_keys_never_evict_a_spent_or_busy_budget() {
    // The failure: junk model names evicted a spent daily budget, resetting it.
    let clock = Arc::new(ManualClock::at(86_400 * 100 + 1));
    // Two keys per shard: the shard a key lands in depends on a random hash
    // seed, and `spent` and `busy` must both fit even when they share one.
    let s = MemoryStore::new(32, clock.clone());
    let spent = who(json!({"sub": "spent"}));
    let daily = [QuotaLimit {
        tokens_per_day: Some(10),
        ..QuotaLimit::named("d")
    }];
    let c = checks(&daily, &spent, Engine::Ollama, None);
    s.admit(&c, 0).unwrap();
    s.settle(&c, 0, 10);
    let busy = who(json!({"sub": "busy"}));
    let cb = checks(&daily, &busy, Engine::Ollama, None);
    s.admit(&cb, 0).unwrap();
    let mut full = 0;
    for i in 0..2_000 {
        let junk = who(json!({"sub": format!("junk-{i}")}));
        match s.admit(&checks(&daily, &junk, Engine::Ollama, None), 0) {
            Ok(()) => s.settle(&checks(&daily, &junk, Engine::Ollama, None), 0, 10), // spends it
            Err(MemoryRefusal::Full(_)) => full += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(full > 0, "once full of spent budgets, new keys are refused");
    let MemoryRefusal::Refused(r) = s.admit(&c, 0).unwrap_err() else {
        panic!("the spent budget was forgotten")
    };
    assert_eq!(r.kind, LimitKind::TokensPerDay);
    assert_eq!(s.in_flight(), 1, "the busy budget is still there");
    // Idle, empty budgets go first: the next day everything is empty.
    clock.advance(86_400);
    s.admit(
        &checks(&daily, &who(json!({"sub": "new"})), Engine::Ollama, None),
        0,
    )
    .unwrap();
}

#[tokio::test]
async fn fail_open_admits_against_a_local_limit_that_limits() {
    // Kills the mutant "fail-open admits everything": a Redis that never
    // answers, fail-open, 2 requests a minute.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", silent.local_addr().unwrap());
    let clock = Arc::new(ManualClock::at(86_400 * 100 + 1));
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let redis =
        redis_store::RedisStore::new(&url, "t:", clock.clone(), Default::default()).unwrap();
    let local = Arc::new(MemoryStore::new(100, clock.clone()));
    let store = Arc::new(store::QuotaStore::redis(
        redis,
        store::FailMode::Open,
        local,
        metrics.clone(),
    ));
    let u = who(json!({"sub": "u"}));
    let limits = [QuotaLimit {
        requests_per_minute: Some(2),
        ..QuotaLimit::named("l")
    }];
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            store
                .admit(checks(&limits, &u, Engine::Ollama, None), 0)
                .await
                .unwrap(),
        );
    }
    let third = store
        .admit(checks(&limits, &u, Engine::Ollama, None), 0)
        .await;
    assert!(
        matches!(&third, Err(store::NotAdmitted::Refused(r)) if r.kind == LimitKind::RequestsPerMinute),
        "{third:?}"
    );
    assert!(
        metrics
            .encode()
            .contains("attach_quota_store_errors_total{kind=\"unavailable\"}")
    );
    drop(silent);
}

#[tokio::test]
async fn an_admission_is_released_when_dropped_and_charges_what_it_was_told() {
    let clock = Arc::new(ManualClock::at(86_400 * 100 + 1));
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let local = Arc::new(MemoryStore::new(100, clock.clone()));
    let store = Arc::new(store::QuotaStore::memory(local.clone(), metrics.clone()));
    let u = who(json!({"sub": "u"}));
    let limits = [QuotaLimit {
        concurrent: Some(1),
        tokens_per_minute: Some(100),
        ..QuotaLimit::named("l")
    }];
    let mut a = store
        .admit(checks(&limits, &u, Engine::Ollama, None), 40)
        .await
        .unwrap()
        .unwrap();
    a.charge_on_drop(7);
    assert_eq!(metrics.quota_admissions_in_flight.get(), 1);
    assert!(
        store
            .admit(checks(&limits, &u, Engine::Ollama, None), 1)
            .await
            .is_err()
    );
    drop(a);
    assert_eq!((local.in_flight(), local.reserved()), (0, 0));
    assert_eq!(metrics.quota_admissions_in_flight.get(), 0);
    let b = store
        .admit(checks(&limits, &u, Engine::Ollama, None), 93)
        .await
        .unwrap()
        .unwrap();
    b.settle(93);
    // 7 + 93 = 100: spent.
    assert!(
        store
            .admit(checks(&limits, &u, Engine::Ollama, None), 0)
            .await
            .is_err()
    );
}

#[test]
fn bad_limits_are_refused_each_with_its_index_and_reason() {
    let rpm = |name: &str| QuotaLimit {
        requests_per_minute: Some(1),
        ..QuotaLimit::named(name)
    };
    assert_eq!(
        limits::validate(&[rpm("a"), rpm("b")], Engine::Ollama),
        Ok(())
    );
    let name_rule = "name must be non-empty and must not contain '|'".to_owned();
    let cases: Vec<(Vec<QuotaLimit>, (usize, String))> = vec![
        (vec![rpm("a"), rpm(" ")], (1, name_rule.clone())),
        (vec![rpm("")], (0, name_rule.clone())),
        // A `|` would let one limit's keys pass for another's.
        (vec![rpm("a|iss=x")], (0, name_rule)),
        (
            vec![rpm("a"), rpm("a")],
            (1, "name \"a\" is used twice".into()),
        ),
        (
            vec![QuotaLimit::named("empty")],
            (0, "sets no limit".into()),
        ),
        (
            vec![QuotaLimit {
                tokens_per_minute: Some(0),
                ..rpm("a")
            }],
            (0, "tokensPerMinute must be at least 1".into()),
        ),
        (
            vec![QuotaLimit {
                requests_per_minute: Some(0),
                concurrent: Some(1),
                ..QuotaLimit::named("a")
            }],
            (0, "requestsPerMinute must be at least 1".into()),
        ),
        (
            vec![QuotaLimit {
                concurrent: Some(0),
                ..rpm("a")
            }],
            (0, "concurrent must be at least 1".into()),
        ),
        (
            vec![QuotaLimit {
                tokens_per_day: Some(0),
                ..rpm("a")
            }],
            (0, "tokensPerDay must be at least 1".into()),
        ),
    ];
    for (limits, expected) in cases {
        assert_eq!(
            limits::validate(&limits, Engine::Ollama),
            Err(expected),
            "{limits:?}"
        );
    }
    let bad_model = QuotaLimit {
        models: vec!["two words".into()],
        ..rpm("a")
    };
    let (index, _) = limits::validate(&[bad_model], Engine::Ollama).unwrap_err();
    assert_eq!(index, 0);
}

#[test]
fn per_model_budgets_key_on_canonical_served_names_only() {
    let bob = who(json!({"sub": "bob"}));
    let limits = [QuotaLimit {
        models: vec!["tinyllama:*".into(), "*/*:70b".into()],
        requests_per_minute: Some(1),
        ..QuotaLimit::named("per-model")
    }];
    let key = |model: JudgedModel| {
        checks(&limits, &bob, Engine::Ollama, Some(&model))
            .into_iter()
            .map(|c| c.key)
            .collect::<Vec<_>>()
    };
    // Every spelling of one model is one budget.
    for raw in [
        "tinyllama",
        "TinyLlama:latest",
        "registry.ollama.ai/library/tinyllama",
    ] {
        assert_eq!(
            key(served(raw)),
            ["per-model|iss=|user=bob|model=tinyllama:latest"]
        );
    }
    // Names the backend does not serve share one budget, whatever they are.
    for raw in ["someone/x:70b", "someone/y:70b", "tinyllama:junk1"] {
        let unlisted = JudgedModel {
            served: false,
            ..served(raw)
        };
        assert_eq!(key(unlisted), ["per-model|iss=|user=bob|model=(unlisted)"]);
    }
    assert!(key(served("llama3.2:1b")).is_empty(), "no pattern matches");
}

#[test]
fn limit_kinds_have_their_documented_names() {
    // The 429 body's `kind` and the metrics' label: the README's spelling.
    for (kind, name) in [
        (LimitKind::TokensPerMinute, "tokens_per_minute"),
        (LimitKind::RequestsPerMinute, "requests_per_minute"),
        (LimitKind::TokensPerDay, "tokens_per_day"),
        (LimitKind::Concurrent, "concurrent"),
        (LimitKind::DistinctModels, "distinct_models"),
    ] {
        assert_eq!(kind.as_str(), name, "{kind:?}");
    }
}

#[test]
fn a_budget_key_splits_into_its_owner_and_its_model() {
    let bob = who(json!({"sub": "bob|model=x", "iss": "https://idp/|model=y"}));
    let limits = [
        QuotaLimit {
            models: vec!["*".into()],
            requests_per_minute: Some(1),
            ..QuotaLimit::named("per-model")
        },
        QuotaLimit {
            requests_per_minute: Some(1),
            ..QuotaLimit::named("whole")
        },
    ];
    let checks = checks(&limits, &bob, Engine::Ollama, Some(&served("tinyllama")));
    let split: Vec<_> = checks.iter().map(Check::owner_and_scope).collect();
    // A `|model=` in the owner's names is percent-encoded, so only the
    // gateway's own separator splits the key: the Redis store counts the
    // models of the right owner.
    assert_eq!(
        split,
        [
            (
                "per-model|iss=https://idp/%7Cmodel%3Dy|user=bob%7Cmodel%3Dx",
                Some("tinyllama:latest")
            ),
            (
                "whole|iss=https://idp/%7Cmodel%3Dy|user=bob%7Cmodel%3Dx",
                None
            ),
        ]
    );
}

#[test]
fn budgets_spread_over_the_shards_so_the_whole_bound_is_usable() {
    // 1,600 budgets is 100 a shard. 800 busy ones (which are never evicted)
    // are about 50 a shard: the chance that a random spread puts 100 in one
    // shard is below 1e-9. In one shard, the 101st would be refused.
    let clock = Arc::new(ManualClock::at(86_400 * 100 + 1));
    let s = MemoryStore::new(1_600, clock);
    assert_eq!(s.max_keys(), 1_600);
    let limits = [QuotaLimit {
        concurrent: Some(1),
        ..QuotaLimit::named("c")
    }];
    for i in 0..800 {
        let u = who(json!({"sub": format!("user-{i}")}));
        s.admit(&checks(&limits, &u, Engine::Ollama, None), 0)
            .unwrap_or_else(|e| panic!("user {i}: {e:?}"));
    }
    assert_eq!((s.len(), s.in_flight()), (800, 800));
}

#[test]
fn a_reservation_that_fills_a_budget_exactly_is_admitted_and_nothing_after_it() {
    let clock = Arc::new(ManualClock::at(86_400 * 100 + 1));
    let s = store(&clock);
    let u = who(json!({"sub": "u"}));
    for limit in [
        QuotaLimit {
            tokens_per_minute: Some(100),
            ..QuotaLimit::named("m")
        },
        QuotaLimit {
            tokens_per_day: Some(100),
            ..QuotaLimit::named("d")
        },
    ] {
        let c = checks(std::slice::from_ref(&limit), &u, Engine::Ollama, None);
        let refused = |reserve| match s.admit(&c, reserve) {
            Err(MemoryRefusal::Refused(r)) => (r.kind, r.retry_after),
            other => panic!("{}: {other:?}", limit.name),
        };
        let kind = if limit.tokens_per_day.is_some() {
            LimitKind::TokensPerDay
        } else {
            LimitKind::TokensPerMinute
        };
        s.admit(&c, 60).unwrap();
        assert_eq!(refused(60), (kind, 1), "60 more do not fit beside 60");
        s.admit(&c, 40).unwrap();
        assert_eq!(refused(0), (kind, 1), "all of it is reserved");
        s.settle(&c, 60, 60);
        s.settle(&c, 40, 40);
    }
}
