#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Personal API keys, end to end: real gateway processes (two replicas of
//! one backend, and neighbours that must refuse its keys) sharing a real
//! Redis, with users and tokens from the real Keycloak. Every way a key
//! must be refused is tried and shown refused.

mod common;

use std::time::{Duration, Instant};

use attach_sidecar::claims::Preset;
use attach_sidecar::config::{GatewayConfig, IssuerConfig};
use attach_sidecar::keys::ApiKeysConfig;
use attach_sidecar::policy::Subjects;
use attach_sidecar::quota::store::{FailMode, StoreConfig};
use attach_tests::gateway::{GatewayProcess, metric_sum};
use attach_tests::keycloak::{AUDIENCE, KeycloakInfo, REALM};
use attach_tests::mock_model::MockModel;
use attach_tests::redis_server::RedisServer;
use attach_tests::tools::Tools;
use common::clients::attach;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long a replica trusts a key it checked (the revocation bound).
const CACHE_TTL: Duration = Duration::from_secs(2);

/// Redis, a mock model and a signing key, shared by a test's gateways.
struct Backing {
    redis: RedisServer,
    model: MockModel,
    signing_key: std::path::PathBuf,
    prefix: String,
    _dir: tempfile::TempDir,
}

impl Backing {
    async fn start() -> Self {
        let tools = Tools::locate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start(&tools.redis_server, &dir.path().join("redis"))
            .await
            .unwrap();
        let signing_key = dir.path().join("signing-key");
        std::fs::write(
            &signing_key,
            format!(
                "{:032x}{:032x}\n",
                rand::random::<u128>(),
                rand::random::<u128>()
            ),
        )
        .unwrap();
        Self {
            redis,
            model: MockModel::start().await.unwrap(),
            signing_key,
            prefix: format!("k{:08x}:", rand::random::<u32>()),
            _dir: dir,
        }
    }

    /// A replica of backend `team/llm`: everyone in the main realm may use
    /// every model; in `extra_realm`, only group `eng`. Admins: the main
    /// realm's `admins` group.
    fn config(&self, extra_realm: Option<&str>) -> GatewayConfig {
        let kc = common::world().keycloak().unwrap();
        let mut issuers = vec![IssuerConfig::new(
            kc.issuer(REALM),
            vec![AUDIENCE.into()],
            Preset::Keycloak,
        )];
        let mut rules = vec![json!({
            "name": "everyone", "subjects": {"issuer": kc.issuer(REALM), "anyAuthenticated": true},
            "endpoints": ["inference", "read"],
        })];
        if let Some(realm) = extra_realm {
            issuers.push(IssuerConfig::new(
                kc.issuer(realm),
                vec![AUDIENCE.into()],
                Preset::Keycloak,
            ));
            rules.push(json!({
                "name": "eng", "subjects": {"issuer": kc.issuer(realm), "groups": ["eng"]},
                "endpoints": ["inference", "read"],
            }));
        }
        let mut config = GatewayConfig::new(issuers);
        config.upstream.url = self.model.url();
        config.access = serde_json::from_value(json!({ "rules": rules })).unwrap();
        config.metrics.backend = Some("team/llm".into());
        config.quotas.store = StoreConfig::Redis {
            url: self.redis.url(),
            url_file: None,
            fail_mode: FailMode::Closed,
            key_prefix: self.prefix.clone(),
        };
        config.api_keys = ApiKeysConfig {
            enabled: true,
            signing_key_file: Some(self.signing_key.clone()),
            cache_ttl: CACHE_TTL,
            max_keys_per_user: 3,
            max_lifetime: Duration::from_secs(7 * 86_400),
            default_lifetime: Duration::from_secs(86_400),
            admins: Subjects::groups(&["admins"]).of_issuer(kc.issuer(REALM)),
            ..ApiKeysConfig::default()
        };
        config
    }
}

/// How a request carries its credential.
#[derive(Clone, Copy)]
enum Cred<'a> {
    Bearer(&'a str),
    XApiKey(&'a str),
    Both(&'a str, &'a str),
}

async fn call(
    url: &str,
    method: Method,
    path: &str,
    cred: Cred<'_>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, format!("{url}{path}"));
    request = match cred {
        Cred::Bearer(t) => request.bearer_auth(t),
        Cred::XApiKey(k) => request.header("x-api-key", k),
        Cred::Both(t, k) => request.bearer_auth(t).header("x-api-key", k),
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn chat(url: &str, cred: Cred<'_>, model: &str) -> (StatusCode, Value) {
    let body =
        json!({"model": model, "stream": false, "messages": [{"role": "user", "content": "hi"}]});
    call(url, Method::POST, "/api/chat", cred, Some(body)).await
}

async fn mint(url: &str, token: &str, body: Value) -> (StatusCode, Value) {
    call(
        url,
        Method::POST,
        "/.attach/keys",
        Cred::Bearer(token),
        Some(body),
    )
    .await
}

/// Mints a key and returns it with its id.
async fn minted(url: &str, token: &str, body: Value) -> (String, String) {
    let (status, answer) = mint(url, token, body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    (
        answer["key"].as_str().unwrap().to_owned(),
        answer["id"].as_str().unwrap().to_owned(),
    )
}

/// Polls until `key` is refused on `url` with `reason`, within the
/// revocation bound (the cache time, plus a margin for a loaded machine).
async fn refused_within_bound(url: &str, key: &str, reason: &str) {
    let deadline = Instant::now() + CACHE_TTL + Duration::from_secs(5);
    loop {
        let (status, body) = chat(url, Cred::Bearer(key), "llama3.2:1b").await;
        if status == StatusCode::UNAUTHORIZED {
            assert!(body["message"].as_str().unwrap().contains(reason), "{body}");
            return;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            Instant::now() < deadline,
            "{key:.20}... still works past the revocation bound"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_well_formed(key: &str) -> bool {
    let rest = key.strip_prefix("attach_").unwrap_or("");
    let (id, secret) = rest.split_once('_').unwrap_or(("", ""));
    id.len() == 12
        && secret.len() == 32
        && rest.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[tokio::test]
async fn a_key_is_minted_used_narrowed_and_revoked_on_two_replicas() {
    let kc = common::world().keycloak().unwrap();
    let backing = Backing::start().await;
    let a = GatewayProcess::start(backing.config(None)).await.unwrap();
    let b = GatewayProcess::start(backing.config(None)).await.unwrap();
    let bob = kc.token_for("bob").await.unwrap();

    // Minted on A, narrowed to one model; shown once, with a scanner-friendly shape.
    let (key, id) = minted(
        &a.url,
        &bob,
        json!({"name": "laptop", "models": ["llama3.2:1b"], "expiresIn": "2h"}),
    )
    .await;
    assert!(is_well_formed(&key), "{key:.10}...");

    // Used on B, as bob, in either header: the model sees the identity
    // bob's own token shows it, the key's id, and never the key.
    assert_eq!(
        chat(&b.url, Cred::Bearer(&bob), "llama3.2:1b").await.0,
        StatusCode::OK
    );
    let as_bob = backing.model.last().await.unwrap().headers;
    assert!(as_bob.get("x-attach-user").is_some());
    for cred in [Cred::Bearer(&key), Cred::XApiKey(&key)] {
        let (status, body) = chat(&b.url, cred, "llama3.2:1b").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seen = backing.model.last().await.unwrap();
        for header in [
            "x-attach-user",
            "x-attach-groups",
            "x-attach-issuer",
            "x-attach-client",
        ] {
            assert_eq!(seen.headers.get(header), as_bob.get(header), "{header}");
        }
        assert!(as_bob.get("x-attach-key-id").is_none());
        assert_eq!(seen.headers["x-attach-key-id"], id.as_str());
        for (name, value) in &seen.headers {
            assert!(
                !value.to_str().unwrap_or("").contains(&key),
                "the key reached the model in {name}"
            );
        }
        assert!(
            seen.headers.get("authorization").is_none() && seen.headers.get("x-api-key").is_none()
        );
    }

    // Narrowed: bob may use qwen with his token, not with this key.
    assert_eq!(
        chat(&b.url, Cred::Bearer(&bob), "qwen2.5:0.5b").await.0,
        StatusCode::OK
    );
    let (status, body) = chat(&b.url, Cred::Bearer(&key), "qwen2.5:0.5b").await;
    assert_eq!(
        (status, body["denied_by"].as_str()),
        (StatusCode::FORBIDDEN, Some("model")),
        "{body}"
    );
    // And its model lists show only what it may use.
    let (_, tags) = call(&b.url, Method::GET, "/api/tags", Cred::Bearer(&key), None).await;
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llama3.2:1b"]);

    // A key and a different token in one request: neither is used.
    let (status, body) = chat(&b.url, Cred::Both(&bob, &key), "llama3.2:1b").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("different credentials"),
        "{body}"
    );

    // A key never manages keys.
    let (status, body) = call(
        &b.url,
        Method::POST,
        "/.attach/keys",
        Cred::Bearer(&key),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("api_key_cannot_manage_keys"))
    );
    let (status, _) = call(
        &b.url,
        Method::DELETE,
        &format!("/.attach/keys/{id}"),
        Cred::Bearer(&key),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Listed on B by its owner: the id, the name, the models, never the key.
    let (status, list) = call(
        &b.url,
        Method::GET,
        "/.attach/keys",
        Cred::Bearer(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let listed = &list["keys"].as_array().unwrap()[0];
    assert_eq!(
        (listed["id"].as_str(), listed["name"].as_str()),
        (Some(id.as_str()), Some("laptop"))
    );
    assert_eq!(listed["models"], json!(["llama3.2:1b"]));
    assert!(listed.get("key").is_none() && !list.to_string().contains(&key[20..]));
    // Another user sees none of bob's keys, and may not list everyone's.
    let carol = kc.token_for("carol").await.unwrap();
    let (_, theirs) = call(
        &b.url,
        Method::GET,
        "/.attach/keys",
        Cred::Bearer(&carol),
        None,
    )
    .await;
    assert_eq!(theirs["keys"], json!([]));
    let (status, _) = call(
        &b.url,
        Method::GET,
        "/.attach/keys?all=true",
        Cred::Bearer(&carol),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // ...nor revoke it: to her it does not exist.
    let (status, _) = call(
        &b.url,
        Method::DELETE,
        &format!("/.attach/keys/{id}"),
        Cred::Bearer(&carol),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        chat(&a.url, Cred::Bearer(&key), "llama3.2:1b").await.0,
        StatusCode::OK
    );

    // Redis holds the record sealed, never the key or its secret part.
    let mut redis = redis::Client::open(backing.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(names.iter().any(|n| n.contains(&id)), "{names:?}");
    for name in &names {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(name)
            .query_async(&mut redis)
            .await
            .unwrap();
        let secret = &key[key.len() - 32..];
        assert!(
            !String::from_utf8_lossy(&dump).contains(secret),
            "{name} holds the key"
        );
    }

    // Revoked by its owner on B: refused there at once, on A within the bound.
    let (status, revoked) = call(
        &b.url,
        Method::DELETE,
        &format!("/.attach/keys/{id}"),
        Cred::Bearer(&bob),
        None,
    )
    .await;
    assert_eq!(
        (status, revoked["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let (status, body) = chat(&b.url, Cred::Bearer(&key), "llama3.2:1b").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    refused_within_bound(&a.url, &key, "unknown or revoked").await;

    // Audit lines name the key's id, never the key.
    for gateway in [&a, &b] {
        let log = gateway.log();
        assert!(
            log.contains(&format!("\"api_key_id\":\"{id}\"")),
            "no audit line names {id}"
        );
        assert!(!log.contains(&key[20..]), "the key is in a log");
    }
}

#[tokio::test]
async fn keys_that_must_not_work_are_refused_each_for_its_reason() {
    let kc = common::world().keycloak().unwrap();
    let backing = Backing::start().await;
    let mut a = GatewayProcess::start(backing.config(None)).await.unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let (key, id) = minted(&a.url, &bob, json!({"expiresIn": "1h"})).await;
    assert_eq!(
        chat(&a.url, Cred::Bearer(&key), "llama3.1:70b").await.0,
        StatusCode::OK
    );

    let refused = |reason: &'static str| {
        move |(status, body): (StatusCode, Value)| {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            assert!(body["message"].as_str().unwrap().contains(reason), "{body}");
        }
    };

    // Forged or altered keys: the right id with another secret, a made-up
    // id, a malformed key.
    let forged = format!(
        "{}{}",
        &key[..key.len() - 1],
        if key.ends_with('a') { 'b' } else { 'a' }
    );
    refused("unknown or revoked")(chat(&a.url, Cred::Bearer(&forged), "llama3.2:1b").await);
    refused("unknown or revoked")(
        chat(
            &a.url,
            Cred::Bearer(&format!("attach_{}_{}", "Z".repeat(12), "z".repeat(32))),
            "llama3.2:1b",
        )
        .await,
    );
    refused("unknown or revoked")(chat(&a.url, Cred::XApiKey("attach_short"), "llama3.2:1b").await);

    // Another backend on the same Redis and prefix, same signing key: its
    // name differs, so the key is not its.
    let mut other = backing.config(None);
    other.metrics.backend = Some("team/other".into());
    let other = GatewayProcess::start(other).await.unwrap();
    refused("another backend")(chat(&other.url, Cred::Bearer(&key), "llama3.2:1b").await);
    // The same backend's name with another signing key (a record it did
    // not seal): unknown.
    let dir = tempfile::tempdir().unwrap();
    let mut resealed = backing.config(None);
    let other_key = dir.path().join("other-signing-key");
    std::fs::write(&other_key, "another-signing-key-that-is-long-enough").unwrap();
    resealed.api_keys.signing_key_file = Some(other_key);
    let resealed = GatewayProcess::start(resealed).await.unwrap();
    refused("unknown or revoked")(chat(&resealed.url, Cred::Bearer(&key), "llama3.2:1b").await);
    // A backend with keys off: the key is refused, and so is the endpoint.
    let mut off = backing.config(None);
    off.api_keys.enabled = false;
    let off = GatewayProcess::start(off).await.unwrap();
    refused("API keys are off")(chat(&off.url, Cred::Bearer(&key), "llama3.2:1b").await);
    let (status, body) = mint(&off.url, &bob, json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("api_keys_disabled"))
    );

    // Minting past the limits: too long a life, a model outside the
    // grammar, a fourth live key.
    let (status, body) = mint(&a.url, &bob, json!({"expiresIn": "8d"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("maxLifetime"),
        "{body}"
    );
    let (status, _) = mint(&a.url, &bob, json!({"models": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = mint(&a.url, &bob, json!({"unknownField": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    minted(&a.url, &bob, json!({})).await;
    minted(&a.url, &bob, json!({})).await;
    let (status, body) = mint(&a.url, &bob, json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("too_many_keys")),
        "{body}"
    );

    // Expired: an hour later by the gateway's clock.
    a.advance_clock(3_601).await.unwrap();
    refused("expired")(chat(&a.url, Cred::Bearer(&key), "llama3.2:1b").await);
    let (_, list) = call(
        &a.url,
        Method::GET,
        "/.attach/keys",
        Cred::Bearer(&bob),
        None,
    )
    .await;
    let listed = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(listed["expired"], true);

    // An expired key no longer counts against the limit: a third live
    // key can be minted. Revoked, then the config reloaded: still refused.
    let (live, live_id) = minted(&a.url, &bob, json!({})).await;
    assert_eq!(
        chat(&a.url, Cred::Bearer(&live), "llama3.2:1b").await.0,
        StatusCode::OK
    );
    let (status, _) = call(
        &a.url,
        Method::DELETE,
        &format!("/.attach/keys/{live_id}"),
        Cred::Bearer(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut changed = backing.config(None);
    changed.api_keys.cache_ttl = Duration::from_secs(30);
    a.write_config(&changed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric_sum(
        &a.metrics().await.unwrap(),
        "attach_config_reloads_total{result=\"ok\"}",
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "the config was not reloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    refused("unknown or revoked")(chat(&a.url, Cred::Bearer(&live), "llama3.2:1b").await);
}

/// A realm of its own with user `dana` in group `eng`, so the test can
/// change her groups without touching other tests' users.
async fn realm_with_dana(kc: &KeycloakInfo) -> String {
    let realm = format!("keys-{:08x}", rand::random::<u32>());
    let mapper = |name: &str, kind: &str, config: Value| json!({"name": name, "protocol": "openid-connect", "protocolMapper": kind, "config": config});
    let body = json!({
        "realm": realm, "enabled": true, "sslRequired": "none",
        "groups": [{"name": "eng"}],
        "clients": [{
            "clientId": "attach-cli", "enabled": true, "publicClient": true,
            "directAccessGrantsEnabled": true, "standardFlowEnabled": false,
            "protocolMappers": [
                mapper("audience", "oidc-audience-mapper", json!({"included.custom.audience": AUDIENCE, "access.token.claim": "true"})),
                mapper("groups", "oidc-group-membership-mapper", json!({"claim.name": "groups", "full.path": "false", "access.token.claim": "true"})),
            ],
        }],
        "users": [{
            "username": "dana", "enabled": true, "emailVerified": true, "email": "dana@example.test",
            "firstName": "dana", "lastName": "Test", "groups": ["/eng"],
            "credentials": [{"type": "password", "value": "dana-password", "temporary": false}],
        }],
    });
    kc.admin(Method::POST, "", Some(&body)).await.unwrap();
    realm
}

#[tokio::test]
async fn a_key_keeps_its_groups_until_it_expires_or_an_administrator_revokes_it() {
    let kc = common::world().keycloak().unwrap();
    let realm = realm_with_dana(kc).await;
    let backing = Backing::start().await;
    let a = GatewayProcess::start(backing.config(Some(&realm)))
        .await
        .unwrap();
    let b = GatewayProcess::start(backing.config(Some(&realm)))
        .await
        .unwrap();
    let dana = kc.password_token(&realm, "dana").await.unwrap();
    let (key, id) = minted(&a.url, &dana, json!({"name": "ci"})).await;
    assert_eq!(
        chat(&b.url, Cred::Bearer(&key), "llama3.2:1b").await.0,
        StatusCode::OK
    );

    // Dana leaves `eng`: her new tokens lose the model at once...
    let users = kc
        .admin(
            Method::GET,
            &format!("/{realm}/users?username=dana&exact=true"),
            None,
        )
        .await
        .unwrap();
    let user = users[0]["id"].as_str().unwrap().to_owned();
    let groups = kc
        .admin(Method::GET, &format!("/{realm}/groups?search=eng"), None)
        .await
        .unwrap();
    let group = groups[0]["id"].as_str().unwrap().to_owned();
    kc.admin(
        Method::DELETE,
        &format!("/{realm}/users/{user}/groups/{group}"),
        None,
    )
    .await
    .unwrap();
    let dana_now = kc.password_token(&realm, "dana").await.unwrap();
    let (status, body) = chat(&b.url, Cred::Bearer(&dana_now), "llama3.2:1b").await;
    assert_eq!(
        (status, body["denied_by"].as_str()),
        (StatusCode::FORBIDDEN, Some("subject")),
        "{body}"
    );
    // ...and her key keeps the groups it was minted with (README, "Personal
    // API keys": bounded by maxLifetime, ended sooner by an administrator).
    assert_eq!(
        chat(&b.url, Cred::Bearer(&key), "llama3.2:1b").await.0,
        StatusCode::OK
    );

    // An administrator (alice, in the main realm's `admins`) finds it and
    // revokes it; bob, who is not one, can do neither.
    let bob = kc.token_for("bob").await.unwrap();
    let (status, _) = call(
        &a.url,
        Method::GET,
        "/.attach/keys?all=true",
        Cred::Bearer(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &a.url,
        Method::DELETE,
        &format!("/.attach/keys/{id}"),
        Cred::Bearer(&bob),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let alice = kc.token_for("alice").await.unwrap();
    let (status, all) = call(
        &a.url,
        Method::GET,
        "/.attach/keys?all=true",
        Cred::Bearer(&alice),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let listed = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .cloned();
    // Keycloak's `sub` (the user's id) is the user the gateway sees.
    assert_eq!(
        listed.map(|k| k["user"].clone()),
        Some(json!(user)),
        "{all}"
    );
    let (status, _) = call(
        &a.url,
        Method::DELETE,
        &format!("/.attach/keys/{id}"),
        Cred::Bearer(&alice),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    refused_within_bound(&a.url, &key, "unknown or revoked").await;
    refused_within_bound(&b.url, &key, "unknown or revoked").await;
    kc.admin(Method::DELETE, &format!("/{realm}"), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_cli_mints_lists_and_revokes_keys_with_the_users_login() {
    let kc = common::world().keycloak().unwrap();
    let backing = Backing::start().await;
    let gw = GatewayProcess::start(backing.config(None)).await.unwrap();
    // A login as `attach login` stores it (the device flow itself is
    // tests/tests/cli.rs's), for bob.
    let dir = tempfile::tempdir().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let login = json!({"profiles": {"default": {
        "issuer": kc.issuer(REALM), "clientId": "attach-cli", "preset": "keycloak",
        "tokenEndpoint": kc.token_endpoint(REALM), "accessToken": bob,
        "expiresAt": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 240,
    }}});
    let file = dir.path().join("credentials.json");
    std::fs::write(&file, login.to_string()).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let (ok, key, err) = attach(
        dir.path(),
        &[
            "keys",
            "create",
            "--backend",
            &gw.url,
            "--name",
            "cli",
            "--models",
            "llama3.2:1b",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(is_well_formed(&key), "stdout is the key alone");
    assert!(!err.contains(&key[20..]), "the key on stderr");
    assert_eq!(
        chat(&gw.url, Cred::XApiKey(&key), "llama3.2:1b").await.0,
        StatusCode::OK
    );
    assert_eq!(
        chat(&gw.url, Cred::XApiKey(&key), "qwen2.5:0.5b").await.0,
        StatusCode::FORBIDDEN
    );

    let (ok, listed, err) = attach(dir.path(), &["keys", "list", "--backend", &gw.url]).await;
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed[0]["name"], "cli");
    assert!(key.contains(&id));
    // bob is no administrator: the gateway's refusal, said plainly.
    let (ok, _, err) = attach(dir.path(), &["keys", "list", "--all", "--backend", &gw.url]).await;
    assert!(
        !ok && err.contains("403") && err.contains("not_key_admin"),
        "{err}"
    );

    let (ok, _, err) = attach(dir.path(), &["keys", "revoke", "--backend", &gw.url, &id]).await;
    assert!(ok, "{err}");
    let (status, _) = chat(&gw.url, Cred::XApiKey(&key), "llama3.2:1b").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (ok, _, err) = attach(dir.path(), &["keys", "revoke", "--backend", &gw.url, &id]).await;
    assert!(!ok && err.contains("no_such_key"), "{err}");
}
