use std::sync::Arc;

use serde_json::json;

use super::clock::ManualClock;
use super::memory::MemoryStore;
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
    s.admit(&c).unwrap();
    s.finish(&c, 60);
    s.admit(&c).unwrap(); // 60 < 100: still admitted
    s.finish(&c, 60); // now 120: over
    let refusal = s.admit(&c).unwrap_err();
    assert_eq!(refusal.kind, LimitKind::TokensPerMinute);
    assert_eq!(refusal.quota, 100);
    assert_eq!(refusal.retry_after, 40, "until the minute ends");
    clock.advance(40);
    s.admit(&c).unwrap();
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
    s.admit(&c).unwrap();
    s.admit(&c).unwrap();
    assert_eq!(s.admit(&c).unwrap_err().kind, LimitKind::Concurrent);
    s.finish(&c, 10);
    s.admit(&c).unwrap(); // third request of the minute
    assert_eq!(s.admit(&c).unwrap_err().kind, LimitKind::RequestsPerMinute);
    s.finish(&c, 10);
    s.finish(&c, 1000);
    clock.advance(60);
    let r = s.admit(&c).unwrap_err();
    assert_eq!(r.kind, LimitKind::TokensPerDay);
    assert_eq!(r.retry_after, 86_400 - 60);
    clock.advance(86_400);
    s.admit(&c).unwrap();
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
    s.admit(&checks(
        &limits,
        &bob,
        Engine::Ollama,
        Some(&served("llama3.1:70b")),
    ))
    .unwrap();
    // Dan has his own user budget, but acme's 70b budget is spent.
    let r = s
        .admit(&checks(
            &limits,
            &dan,
            Engine::Ollama,
            Some(&served("llama3.1:70b")),
        ))
        .unwrap_err();
    assert_eq!(r.limit_name, "big-per-tenant");
    s.admit(&checks(
        &limits,
        &dan,
        Engine::Ollama,
        Some(&served("llama3.2:1b")),
    ))
    .unwrap();
    // A refused request counts nowhere: the group has used 2 of 3.
    let carl = who(json!({"sub": "carl", "groups": ["staff"]}));
    s.admit(&checks(&limits, &carl, Engine::Ollama, None))
        .unwrap();
    let fay = who(json!({"sub": "fay", "groups": ["staff"]}));
    assert_eq!(
        s.admit(&checks(&limits, &fay, Engine::Ollama, None))
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
                    if s.admit(&c).is_ok() {
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
        s.admit(&checks(&limits, &u, Engine::Ollama, None)).unwrap();
        s.finish(&checks(&limits, &u, Engine::Ollama, None), 1);
        if i % 1000 == 0 {
            clock.advance(1);
        }
    }
    assert!(s.len() <= 1_600, "{} budgets kept", s.len());
}

#[test]
fn bad_limits_are_refused() {
    assert!(
        limits::validate(
            &[QuotaLimit {
                tokens_per_minute: Some(1),
                ..QuotaLimit::named("a")
            }],
            Engine::Ollama
        )
        .is_ok()
    );
    assert!(limits::validate(&[QuotaLimit::named("empty")], Engine::Ollama).is_err());
    assert!(
        limits::validate(
            &[QuotaLimit {
                tokens_per_minute: Some(0),
                ..QuotaLimit::named("a")
            }],
            Engine::Ollama
        )
        .is_err()
    );
    let one = QuotaLimit {
        concurrent: Some(1),
        ..QuotaLimit::named("a")
    };
    assert!(limits::validate(&[one.clone(), one], Engine::Ollama).is_err());
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
            ["per-model|user=bob|model=tinyllama:latest"]
        );
    }
    // Names the backend does not serve share one budget, whatever they are.
    for raw in ["someone/x:70b", "someone/y:70b", "tinyllama:junk1"] {
        let unlisted = JudgedModel {
            served: false,
            ..served(raw)
        };
        assert_eq!(key(unlisted), ["per-model|user=bob|model=(unlisted)"]);
    }
    assert!(key(served("llama3.2:1b")).is_empty(), "no pattern matches");
}
