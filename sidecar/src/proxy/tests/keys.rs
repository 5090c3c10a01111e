//! Personal API keys through the whole request path, on the in-process
//! records (the Redis records are exercised end to end in
//! `tests/tests/api_keys.rs`): what a key may do, and every way it is
//! refused.

use std::sync::{Arc, Mutex};

use http::StatusCode;
use serde_json::{Value, json};

use super::{Gateway, alice, bearer, gateway_tweaked, token};
use crate::config::GatewayConfig;
use crate::exchange::TokenExchangeConfig;
use crate::keys::records::{Records, memory::Map};
use crate::keys::{ApiKeysConfig, KeyStore};
use crate::policy::{EndpointClass, Rule, Subjects};
use crate::quota::clock::ManualClock;
use crate::quota::store::{FailMode, StoreConfig};
use crate::runtime::Shared;

const NOW: u64 = 1_800_000_000;
const CHAT: &str = r#"{"model":"tinyllama","stream":false,"messages":[]}"#;
const PHI: &str = r#"{"model":"phi3","stream":false,"messages":[]}"#;

fn person(sub: &str, groups: &[&str]) -> String {
    let now = crate::jwt::verifier::unix_now();
    token(
        json!({"iss": super::ISSUER, "aud": super::AUDIENCE, "sub": sub, "exp": now + 300,
        "iat": now, "groups": groups}),
    )
}

/// An agent acting for `sub` (RFC 8693 `act`).
fn agent_for(sub: &str, groups: &[&str]) -> String {
    let now = crate::jwt::verifier::unix_now();
    token(
        json!({"iss": super::ISSUER, "aud": super::AUDIENCE, "sub": sub, "exp": now + 300,
        "iat": now, "groups": groups, "act": {"sub": "agent-7"}}),
    )
}

/// Staff may use tinyllama and phi3; keys on, two per user, administrators
/// in `admins`.
fn keyed() -> GatewayConfig {
    let mut config = GatewayConfig::new(Vec::new());
    config.access.rules = vec![Rule::new(
        "staff",
        Subjects::groups(&["staff"]),
        &["tinyllama", "phi3"],
        &[EndpointClass::Inference, EndpointClass::Read],
    )];
    // Never connected: the records below stand in for it.
    config.quotas.store = StoreConfig::Redis {
        url: "redis://127.0.0.1:1/".into(),
        url_file: None,
        fail_mode: FailMode::Closed,
        key_prefix: "t:".into(),
    };
    config.metrics.backend = Some("team/llm".into());
    config.api_keys = ApiKeysConfig {
        enabled: true,
        signing_key: vec![7; 32],
        max_keys_per_user: 2,
        admins: Subjects::groups(&["admins"]),
        ..ApiKeysConfig::default()
    };
    config
}

/// A gateway over `records`, its key clock at `clock`.
async fn gateway_on(
    config: GatewayConfig,
    records: &Arc<Mutex<Map>>,
    clock: &Arc<ManualClock>,
) -> Gateway {
    let (records, clock) = (records.clone(), clock.clone());
    gateway_tweaked(config, Shared::new(), move |runtime| {
        if runtime.keys.is_some() {
            let config = &runtime.config;
            runtime.keys = Some(Arc::new(KeyStore::new(
                &config.api_keys,
                Records::Memory(records),
                config.metrics.backend.clone().unwrap_or_default(),
                config.upstream.engine,
                16,
                clock,
            )));
        }
    })
    .await
}

fn world() -> (Arc<Mutex<Map>>, Arc<ManualClock>) {
    (Arc::default(), Arc::new(ManualClock::at(NOW)))
}

async fn mint(gw: &mut Gateway, auth: &str, body: Value) -> (StatusCode, Value) {
    gw.send(
        "POST",
        "/.attach/keys",
        &[("authorization", auth)],
        &body.to_string(),
    )
    .await
}

async fn minted(gw: &mut Gateway, auth: &str, body: Value) -> (String, String) {
    let (status, answer) = mint(gw, auth, body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    (
        answer["key"].as_str().unwrap().to_owned(),
        answer["id"].as_str().unwrap().to_owned(),
    )
}

fn refused_for(answer: (StatusCode, Value), message: &str) {
    assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "{}", answer.1);
    assert!(
        answer.1["message"].as_str().unwrap().contains(message),
        "{}",
        answer.1
    );
}

#[tokio::test]
async fn a_key_acts_as_its_owner_narrowed_to_its_models() {
    let (records, clock) = world();
    let mut gw = gateway_on(keyed(), &records, &clock).await;
    let alice = bearer(&alice());
    let (key, id) = minted(
        &mut gw,
        &alice,
        json!({"name": "cli", "models": ["tinyllama"]}),
    )
    .await;
    let key_auth = bearer(&key);

    // The identity is alice's; the model learns the key's id, never the key.
    for header in [
        ("authorization", key_auth.as_str()),
        ("x-api-key", key.as_str()),
        ("api-key", key.as_str()),
    ] {
        let (status, body) = gw.send("POST", "/api/chat", &[header], CHAT).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seen = gw.last().headers;
        assert_eq!(seen["x-attach-user"], "alice");
        assert_eq!(seen["x-attach-groups"], "staff");
        assert_eq!(seen["x-attach-key-id"], id.as_str());
        for name in ["authorization", "x-api-key", "api-key"] {
            assert!(!seen.contains_key(name), "{name} reached the model");
        }
    }
    // A token's request names no key.
    gw.send("POST", "/api/chat", &[("authorization", &alice)], CHAT)
        .await;
    assert!(!gw.last().headers.contains_key("x-attach-key-id"));

    // Narrowed: phi3 is alice's, not the key's; and lists show the key's.
    assert_eq!(
        gw.send("POST", "/api/chat", &[("authorization", &alice)], PHI)
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = gw
        .send("POST", "/api/chat", &[("authorization", &key_auth)], PHI)
        .await;
    assert_eq!(
        (status, body["denied_by"].as_str()),
        (StatusCode::FORBIDDEN, Some("model")),
        "{body}"
    );
    let (_, tags) = gw
        .send("GET", "/api/tags", &[("authorization", &key_auth)], "")
        .await;
    assert_eq!(tags["models"], json!([{"name": "tinyllama:latest"}]));
    let (_, tags) = gw
        .send("GET", "/api/tags", &[("authorization", &alice)], "")
        .await;
    assert_eq!(
        tags["models"],
        json!([{"name": "tinyllama:latest"}]),
        "alice's own rule allows no 70b"
    );

    // Two credentials that differ: neither is used.
    let both = [
        ("authorization", alice.as_str()),
        ("x-api-key", key.as_str()),
    ];
    refused_for(
        gw.send("POST", "/api/chat", &both, CHAT).await,
        "different credentials",
    );

    // Forwarding the caller's Authorization never forwards a key.
    let mut config = keyed();
    config.identity.forward_authorization = true;
    let mut forwarding = gateway_on(config, &records, &clock).await;
    forwarding
        .send("POST", "/api/chat", &[("authorization", &key_auth)], CHAT)
        .await;
    assert!(!forwarding.last().headers.contains_key("authorization"));
    forwarding
        .send("POST", "/api/chat", &[("authorization", &alice)], CHAT)
        .await;
    assert_eq!(forwarding.last().headers["authorization"], alice.as_str());
}

#[tokio::test]
async fn keys_are_managed_by_their_owner_and_administrators_only_and_never_with_a_key() {
    let (records, clock) = world();
    let mut gw = gateway_on(keyed(), &records, &clock).await;
    let alice = bearer(&alice());
    let (key, id) = minted(&mut gw, &alice, json!({})).await;
    let key_auth = bearer(&key);
    let reached = gw.reached();

    // A key manages nothing.
    for (method, path) in [
        ("POST", "/.attach/keys".to_owned()),
        ("GET", "/.attach/keys".to_owned()),
        ("DELETE", format!("/.attach/keys/{id}")),
    ] {
        let (status, body) = gw
            .send(method, &path, &[("authorization", &key_auth)], "{}")
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("api_key_cannot_manage_keys")),
            "{method} {path}"
        );
    }
    // Methods the collection does not answer.
    for (method, path) in [
        ("PUT", "/.attach/keys".to_owned()),
        ("GET", format!("/.attach/keys/{id}")),
        ("DELETE", "/.attach/keys".to_owned()),
    ] {
        let (status, _) = gw
            .send(method, &path, &[("authorization", &alice)], "")
            .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
    }
    // Without a credential: 401 before anything.
    assert_eq!(
        gw.send("GET", "/.attach/keys", &[], "").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Its owner lists it: id and name, never the key.
    let (status, list) = gw
        .send("GET", "/.attach/keys", &[("authorization", &alice)], "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert_eq!(list["keys"][0]["id"], id.as_str());
    assert_eq!(list["keys"][0]["user"], "alice");
    assert!(!list.to_string().contains(&key[20..]));

    // Another user: sees none, lists no one's, revokes nothing of alice's.
    let bob = bearer(&person("bob", &["staff"]));
    let (_, theirs) = gw
        .send("GET", "/.attach/keys", &[("authorization", &bob)], "")
        .await;
    assert_eq!(theirs["keys"], json!([]));
    let (status, body) = gw
        .send(
            "GET",
            "/.attach/keys?all=true",
            &[("authorization", &bob)],
            "",
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_key_admin"))
    );
    let (status, _) = gw
        .send(
            "DELETE",
            &format!("/.attach/keys/{id}"),
            &[("authorization", &bob)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = gw
        .send(
            "DELETE",
            "/.attach/keys/not-an-id",
            &[("authorization", &alice)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // An administrator acting through an agent is no administrator.
    let agent = bearer(&agent_for("root", &["admins"]));
    let (status, _) = gw
        .send(
            "GET",
            "/.attach/keys?all=true",
            &[("authorization", &agent)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = gw
        .send(
            "DELETE",
            &format!("/.attach/keys/{id}"),
            &[("authorization", &agent)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An administrator in person lists everyone's and revokes alice's.
    let admin = bearer(&person("root", &["admins"]));
    let (status, all) = gw
        .send(
            "GET",
            "/.attach/keys?all=true",
            &[("authorization", &admin)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["keys"][0]["id"], id.as_str());
    let (_, own) = gw
        .send("GET", "/.attach/keys", &[("authorization", &admin)], "")
        .await;
    assert_eq!(
        own["keys"],
        json!([]),
        "without all=true, an administrator's own keys"
    );
    let (status, revoked) = gw
        .send(
            "DELETE",
            &format!("/.attach/keys/{id}"),
            &[("authorization", &admin)],
            "",
        )
        .await;
    assert_eq!(
        (status, revoked["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    refused_for(
        gw.send("POST", "/api/chat", &[("authorization", &key_auth)], CHAT)
            .await,
        "unknown or revoked",
    );
    let (_, after) = gw
        .send("GET", "/.attach/keys", &[("authorization", &alice)], "")
        .await;
    assert_eq!(after["keys"], json!([]));
    assert_eq!(gw.reached(), reached, "no key call reached the model");
}

#[tokio::test]
async fn minting_is_refused_past_every_limit() {
    let (records, clock) = world();
    let mut gw = gateway_on(keyed(), &records, &clock).await;
    let alice = bearer(&alice());
    let bad = |status: StatusCode, body: &Value, needle: &str| {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["message"].as_str().unwrap().contains(needle), "{body}");
    };
    for (body, needle) in [
        (json!({"expiresIn": "91d"}), "maxLifetime"),
        (json!({"expiresIn": "0s"}), "at least 1s"),
        (json!({"expiresIn": "soon"}), "not a duration"),
        (json!({"models": []}), "1 to 64"),
        (json!({"models": ["a b"]}), "models"),
        (json!({"name": "x".repeat(65)}), "printable"),
        (json!({"name": "tab\there"}), "printable"),
        (json!({"surprise": true}), "not a key request"),
    ] {
        let (status, answer) = mint(&mut gw, &alice, body).await;
        bad(status, &answer, needle);
    }
    let (status, answer) = gw
        .send("POST", "/.attach/keys", &[("authorization", &alice)], "{")
        .await;
    bad(status, &answer, "not a key request");
    // An empty body asks for the defaults: 30 days.
    let (status, answer) = gw
        .send("POST", "/.attach/keys", &[("authorization", &alice)], "")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["expires"].as_u64(), Some(NOW + 30 * 86_400));
    assert_eq!(answer["created"].as_u64(), Some(NOW));
    // The limit counts live keys only.
    let (_, short) = minted(&mut gw, &alice, json!({"expiresIn": "1h"})).await;
    let (status, answer) = mint(&mut gw, &alice, json!({})).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::CONFLICT, Some("too_many_keys"))
    );
    clock.advance(3_600);
    let _ = short;
    let (third, _) = minted(&mut gw, &alice, json!({"expiresIn": "90d"})).await;
    assert!(third.starts_with("attach_"));
}

#[tokio::test]
async fn keys_that_must_not_work_are_refused_each_for_its_reason() {
    let (records, clock) = world();
    let mut gw = gateway_on(keyed(), &records, &clock).await;
    let alice = bearer(&alice());
    let (key, _) = minted(&mut gw, &alice, json!({"expiresIn": "1h"})).await;
    let key_auth = bearer(&key);
    assert_eq!(
        gw.send("POST", "/api/chat", &[("authorization", &key_auth)], CHAT)
            .await
            .0,
        StatusCode::OK
    );
    let reached = gw.reached();

    // Forged: the right id with another secret; a made-up id; the wrong shape.
    let last = key.chars().last().unwrap();
    let forged = format!(
        "{}{}",
        &key[..key.len() - 1],
        if last == 'a' { 'b' } else { 'a' }
    );
    for bad in [
        forged,
        format!("attach_{}_{}", "Z".repeat(12), "z".repeat(32)),
        "attach_short".into(),
    ] {
        refused_for(
            gw.send(
                "POST",
                "/api/chat",
                &[("authorization", &bearer(&bad))],
                CHAT,
            )
            .await,
            "unknown or revoked",
        );
    }
    // Another backend's gateway on the same records.
    let mut config = keyed();
    config.metrics.backend = Some("team/other".into());
    let mut other = gateway_on(config, &records, &clock).await;
    refused_for(
        other
            .send("POST", "/api/chat", &[("authorization", &key_auth)], CHAT)
            .await,
        "another backend",
    );
    // Another signing key: the record does not open.
    let mut config = keyed();
    config.api_keys.signing_key = vec![8; 32];
    let mut resealed = gateway_on(config, &records, &clock).await;
    refused_for(
        resealed
            .send("POST", "/api/chat", &[("authorization", &key_auth)], CHAT)
            .await,
        "unknown or revoked",
    );
    // Keys off: the key is refused, and the collection is not served.
    let mut config = keyed();
    config.api_keys = ApiKeysConfig::default();
    let mut off = gateway_on(config, &records, &clock).await;
    refused_for(
        off.send("POST", "/api/chat", &[("authorization", &key_auth)], CHAT)
            .await,
        "API keys are off",
    );
    let (status, body) = mint(&mut off, &alice, json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("api_keys_disabled"))
    );
    // An issuer that exchanges tokens: a key has none to exchange.
    let mut config = keyed();
    let mut issuer =
        crate::config::IssuerConfig::new(super::ISSUER, vec![], crate::claims::Preset::Keycloak);
    let mut exchange = TokenExchangeConfig::new("gw", "secret");
    exchange.audience = Some("downstream".into());
    issuer.token_exchange = Some(exchange);
    config.issuers = vec![issuer];
    let mut exchanging = gateway_on(config, &records, &clock).await;
    refused_for(
        exchanging
            .send("POST", "/api/chat", &[("authorization", &key_auth)], CHAT)
            .await,
        "exchanges tokens",
    );
    let (status, body) = mint(&mut exchanging, &alice, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Expired, by the key clock: at its expiry it is refused (and cached
    // checks do not outlive it).
    clock.advance(3_599);
    assert_eq!(
        gw.send("POST", "/api/chat", &[("authorization", &key_auth)], CHAT)
            .await
            .0,
        StatusCode::OK
    );
    clock.advance(1);
    refused_for(
        gw.send("POST", "/api/chat", &[("authorization", &key_auth)], CHAT)
            .await,
        "expired",
    );
    let (_, list) = gw
        .send("GET", "/.attach/keys", &[("authorization", &alice)], "")
        .await;
    assert_eq!(list["keys"][0]["expired"], true);
    assert_eq!(
        gw.reached(),
        reached + 1,
        "only the one valid call reached the model"
    );
}
