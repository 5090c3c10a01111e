//! Every way a token must be refused, each shown refused with 401 (or the
//! documented 403/503), and the ways it must pass.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use http::header::WWW_AUTHENTICATE;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::*;
use crate::claims::Preset;
use crate::config::IssuerConfig;
use crate::error::GatewayError;
use crate::idp_client::IdpClient;
use crate::jwt::verifier::unix_now;
use crate::metrics::Metrics;
use crate::rescue::rescue;

const ISSUER: &str = "https://idp.test/realms/attach";
const AUDIENCE: &str = "attach-gateway";

use crate::testkit::pem;

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem("rsa-trusted")).unwrap()
}
fn attacker_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem("rsa-attacker")).unwrap()
}
fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&pem("ec-p256")).unwrap()
}
fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(&pem("ed25519")).unwrap()
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn jwks() -> Value {
    json!({"keys": [
        jwk(&rsa_key(), Algorithm::RS256, "rsa-1"),
        jwk(&ec_key(), Algorithm::ES256, "ec-1"),
        jwk(&ed_key(), Algorithm::EdDSA, "ed-1"),
        // An encryption key, as Keycloak publishes: never used to verify.
        {"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc-1",
         "n": jwk(&attacker_key(), Algorithm::RS256, "x")["n"], "e": "AQAB"},
        // A symmetric key in a JWKS: dropped, never a verifier.
        {"kty": "oct", "kid": "oct-1", "k": "c2VjcmV0"},
    ]})
}

fn verifier_with(jwks: Arc<JwksCache>, required_scopes: &[&str]) -> Verifier {
    let mut config = IssuerConfig::new(ISSUER, vec![AUDIENCE.into()], Preset::Keycloak);
    config.required_scopes = required_scopes.iter().map(|s| (*s).to_owned()).collect();
    let policy = IssuerPolicy::new(&config, jwks).unwrap();
    Verifier::new(
        vec![(ISSUER.into(), policy)],
        100,
        vec![],
        Arc::new(Metrics::new()),
    )
}

fn verifier() -> Verifier {
    let cache = JwksCache::with_keys(ISSUER.into(), &jwks(), Arc::new(Metrics::new()));
    verifier_with(Arc::new(cache), &[])
}

fn claims() -> Value {
    let now = unix_now();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "exp": now + 300,
        "iat": now, "nbf": now - 5, "azp": "attach-cli",
        "groups": ["staff"], "realm_access": {"roles": ["llm-user"]},
        "scope": "openid llm", "tenant": "acme",
    })
}

fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    h
}

fn sign(claims: &Value, alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    encode(&header(alg, kid), claims, key).unwrap()
}

fn good() -> String {
    sign(&claims(), Algorithm::RS256, Some("rsa-1"), &rsa_key())
}

fn with(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut c = claims();
    f(c.as_object_mut().unwrap());
    sign(&c, Algorithm::RS256, Some("rsa-1"), &rsa_key())
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A token with a hand-written header and payload and any signature.
fn raw(header: Value, payload: Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(&header), b64(&payload))
}

fn segments(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

/// Every bad token, named, with the refusal it must get.
fn bad_tokens() -> Vec<(&'static str, String, AuthError)> {
    let now = unix_now();
    let good = good();
    let [h, p, s] = <[String; 3]>::try_from(segments(&good)).unwrap();
    // An RS256 signature is 342 base64url characters; one fewer is never
    // valid base64, whatever the signature's bytes.
    assert_eq!(s.len(), 342);
    let public_pem = pem("rsa-trusted.pub");
    let hmac = |alg| {
        let key = EncodingKey::from_secret(&public_pem);
        sign(&claims(), alg, Some("rsa-1"), &key)
    };
    let tampered = {
        let mut c = claims();
        c["groups"] = json!(["admins"]);
        format!("{h}.{}.{s}", b64(&c))
    };
    vec![
        (
            "alg none, no signature",
            raw(json!({"alg": "none"}), claims(), ""),
            AuthError::Malformed,
        ),
        (
            "alg none with a signature",
            raw(json!({"alg": "none"}), claims(), "c2ln"),
            AuthError::AlgorithmNotAllowed,
        ),
        (
            "alg None, odd case",
            raw(json!({"alg": "None", "kid": "rsa-1"}), claims(), "c2ln"),
            AuthError::AlgorithmNotAllowed,
        ),
        (
            "HS256 signed with the RSA public key",
            hmac(Algorithm::HS256),
            AuthError::AlgorithmNotAllowed,
        ),
        (
            "HS384 signed with the RSA public key",
            hmac(Algorithm::HS384),
            AuthError::AlgorithmNotAllowed,
        ),
        (
            "HS512 signed with the RSA public key",
            hmac(Algorithm::HS512),
            AuthError::AlgorithmNotAllowed,
        ),
        (
            "an unknown alg",
            raw(json!({"alg": "RS1024", "kid": "rsa-1"}), claims(), "c2ln"),
            AuthError::AlgorithmNotAllowed,
        ),
        (
            "signed by another key under the trusted kid",
            sign(&claims(), Algorithm::RS256, Some("rsa-1"), &attacker_key()),
            AuthError::BadSignature,
        ),
        (
            "an unknown kid",
            sign(
                &claims(),
                Algorithm::RS256,
                Some("rotated-away"),
                &attacker_key(),
            ),
            AuthError::UnknownKey,
        ),
        (
            "the kid of an encryption key",
            sign(&claims(), Algorithm::RS256, Some("enc-1"), &attacker_key()),
            AuthError::UnknownKey,
        ),
        (
            "the kid of a symmetric key",
            raw(json!({"alg": "HS256", "kid": "oct-1"}), claims(), &s),
            AuthError::AlgorithmNotAllowed,
        ),
        (
            "ES256 claimed with an RSA key's kid",
            sign(&claims(), Algorithm::ES256, Some("rsa-1"), &ec_key()),
            AuthError::KeyMismatch,
        ),
        (
            "RS512 with a key pinned to RS256",
            sign(&claims(), Algorithm::RS512, Some("rsa-1"), &rsa_key()),
            AuthError::KeyMismatch,
        ),
        (
            "RS256 claimed with an EC key's kid",
            sign(&claims(), Algorithm::RS256, Some("ec-1"), &rsa_key()),
            AuthError::KeyMismatch,
        ),
        (
            "a payload changed after signing",
            tampered,
            AuthError::BadSignature,
        ),
        (
            "the signature truncated",
            format!("{h}.{p}.{}", &s[..s.len() - 1]),
            AuthError::Malformed,
        ),
        (
            "another token's signature",
            format!(
                "{h}.{p}.{}",
                segments(&with(|c| {
                    c.insert("sub".into(), json!("x"));
                }))[2]
            ),
            AuthError::BadSignature,
        ),
        (
            "expired an hour ago",
            with(|c| {
                c.insert("exp".into(), json!(now - 3600));
            }),
            AuthError::Expired,
        ),
        (
            "expired just past the leeway",
            with(|c| {
                c.insert("exp".into(), json!(now - 90));
            }),
            AuthError::Expired,
        ),
        (
            "not valid for another hour",
            with(|c| {
                c.insert("nbf".into(), json!(now + 3600));
            }),
            AuthError::NotYetValid,
        ),
        (
            "issued in the future",
            with(|c| {
                c.insert("iat".into(), json!(now + 3600));
            }),
            AuthError::IssuedInFuture,
        ),
        (
            "no exp",
            with(|c| {
                c.remove("exp");
            }),
            AuthError::MissingClaim("exp"),
        ),
        (
            "exp as a string",
            with(|c| {
                c.insert("exp".into(), json!("tomorrow"));
            }),
            AuthError::InvalidClaim("exp"),
        ),
        (
            "another issuer",
            with(|c| {
                c.insert("iss".into(), json!("https://evil.example/"));
            }),
            AuthError::UntrustedIssuer,
        ),
        (
            "the issuer with a trailing slash",
            with(|c| {
                c.insert("iss".into(), json!(format!("{ISSUER}/")));
            }),
            AuthError::UntrustedIssuer,
        ),
        (
            "no iss",
            with(|c| {
                c.remove("iss");
            }),
            AuthError::MissingClaim("iss"),
        ),
        (
            "iss not a string",
            with(|c| {
                c.insert("iss".into(), json!(["x"]));
            }),
            AuthError::InvalidClaim("iss"),
        ),
        (
            "another audience",
            with(|c| {
                c.insert("aud".into(), json!("other-api"));
            }),
            AuthError::WrongAudience,
        ),
        (
            "audiences that are all others",
            with(|c| {
                c.insert("aud".into(), json!(["a", "b"]));
            }),
            AuthError::WrongAudience,
        ),
        (
            "no aud",
            with(|c| {
                c.remove("aud");
            }),
            AuthError::WrongAudience,
        ),
        (
            "no sub",
            with(|c| {
                c.remove("sub");
            }),
            AuthError::NoUser,
        ),
        (
            "an empty sub",
            with(|c| {
                c.insert("sub".into(), json!(""));
            }),
            AuthError::NoUser,
        ),
        ("two segments", format!("{h}.{p}"), AuthError::Malformed),
        ("four segments", format!("{good}.{s}"), AuthError::Malformed),
        (
            "an empty payload",
            format!("{h}..{s}"),
            AuthError::Malformed,
        ),
        (
            "bad base64 in the header",
            format!("!!!.{p}.{s}"),
            AuthError::Malformed,
        ),
        (
            "bad base64 in the payload",
            format!("{h}.%%%.{s}"),
            AuthError::Malformed,
        ),
        (
            "a padded header",
            format!("{h}=.{p}.{s}"),
            AuthError::Malformed,
        ),
        (
            "a payload that is not JSON",
            format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode("not json")),
            AuthError::Malformed,
        ),
        (
            "a payload that is a JSON list",
            format!("{h}.{}.{s}", b64(&json!([1, 2]))),
            AuthError::Malformed,
        ),
        (
            "a header that is a JSON string",
            format!("{}.{p}.{s}", b64(&json!("RS256"))),
            AuthError::Malformed,
        ),
        (
            "a numeric kid",
            raw(json!({"alg": "RS256", "kid": 7}), claims(), &s),
            AuthError::Malformed,
        ),
        (
            "a crit header",
            sign(&claims(), Algorithm::RS256, Some("rsa-1"), &rsa_key()).replacen(
                &h,
                &b64(&json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1})),
                1,
            ),
            AuthError::UnsupportedCritical,
        ),
        (
            "an embedded jwk of the attacker's key",
            {
                let mut hd = header(Algorithm::RS256, Some("attacker"));
                hd.jwk = Some(
                    serde_json::from_value(jwk(&attacker_key(), Algorithm::RS256, "attacker"))
                        .unwrap(),
                );
                encode(&hd, &claims(), &attacker_key()).unwrap()
            },
            AuthError::UnknownKey,
        ),
        (
            "a jku pointing at the attacker's keys",
            {
                let mut hd = header(Algorithm::RS256, Some("attacker"));
                hd.jku = Some("https://evil.example/jwks.json".into());
                hd.x5u = Some("https://evil.example/cert.pem".into());
                encode(&hd, &claims(), &attacker_key()).unwrap()
            },
            AuthError::UnknownKey,
        ),
        (
            "no kid, signed by the attacker",
            sign(&claims(), Algorithm::RS256, None, &attacker_key()),
            AuthError::BadSignature,
        ),
        (
            "an empty payload under a header that is refused too",
            format!("{}..{s}", b64(&json!({"alg": "none"}))),
            AuthError::Malformed,
        ),
        (
            // Past what a u64 holds.
            "an exp of 2^64",
            with(|c| {
                c.insert("exp".into(), json!(u64::MAX as f64));
            }),
            AuthError::InvalidClaim("exp"),
        ),
        (
            "an nbf of 2^64",
            with(|c| {
                c.insert("nbf".into(), json!(u64::MAX as f64));
            }),
            AuthError::InvalidClaim("nbf"),
        ),
        (
            "a negative iat",
            with(|c| {
                c.insert("iat".into(), json!(-1.5));
            }),
            AuthError::InvalidClaim("iat"),
        ),
        (
            "a huge token",
            format!("{h}.{}.{s}", "A".repeat(20_000)),
            AuthError::TooLarge,
        ),
    ]
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_and_a_challenge() {
    let verifier = verifier();
    let cases = bad_tokens();
    assert!(cases.len() >= 25, "only {} cases", cases.len());
    for (name, token, expected) in cases {
        let err = verifier
            .verify(&token)
            .await
            .expect_err(&format!("{name}: accepted"));
        assert_eq!(err, expected, "{name}");
        let response = rescue(&GatewayError::Auth {
            error: err,
            resource_metadata: None,
            scope: None,
        });
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        let challenge = response.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.starts_with("Bearer "), "{name}: {challenge}");
        assert!(!challenge.contains(&token), "{name}: the token is echoed");
    }
}

#[tokio::test]
async fn good_tokens_pass_for_every_key_type() {
    let verifier = verifier();
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", rsa_key()),
        (Algorithm::ES256, "ec-1", ec_key()),
        (Algorithm::EdDSA, "ed-1", ed_key()),
    ] {
        let token = sign(&claims(), alg, Some(kid), &key);
        let identity = verifier
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(identity.user, "user-1");
        assert_eq!(identity.groups, ["staff"]);
        assert_eq!(identity.roles, ["llm-user"]);
        assert_eq!(identity.tenant.as_deref(), Some("acme"));
        assert_eq!(identity.client.as_deref(), Some("attach-cli"));
    }
}

#[tokio::test]
async fn leeway_forgives_small_clock_skew_only() {
    let verifier = verifier();
    let now = unix_now();
    let skewed = with(|c| {
        c.insert("exp".into(), json!(now - 30));
        c.insert("nbf".into(), json!(now + 30));
        c.insert("iat".into(), json!(now + 30));
    });
    assert!(verifier.verify(&skewed).await.is_ok());
    let fractional_iat = with(|c| {
        c.insert("iat".into(), json!(now as f64 - 0.5));
    });
    assert!(
        verifier.verify(&fractional_iat).await.is_ok(),
        "iat may be any non-negative NumericDate"
    );
    let audience_list = with(|c| {
        c.insert("aud".into(), json!(["other", AUDIENCE]));
    });
    assert!(
        verifier.verify(&audience_list).await.is_ok(),
        "aud is any-of"
    );
}

#[tokio::test]
async fn a_repeated_token_is_served_from_the_cache_until_it_expires() {
    let verifier = verifier();
    let token = good();
    verifier.verify(&token).await.unwrap();
    assert_eq!(verifier.cached_tokens(), 1);
    verifier.verify(&token).await.unwrap();
    assert_eq!(verifier.cached_tokens(), 1, "one entry per token");
    // A refused token is never cached.
    let _ = verifier
        .verify(&with(|c| {
            c.remove("sub");
        }))
        .await;
    assert_eq!(verifier.cached_tokens(), 1);
}

#[test]
fn the_token_cache_forgets_expired_entries_and_stays_bounded() {
    let cache = super::token_cache::TokenCache::new(10);
    let identity = Arc::new(
        crate::claims::ClaimMapping::default()
            .resolve()
            .unwrap()
            .identity(json!({"sub": "u"}).as_object().unwrap(), 100, &[])
            .unwrap()
            .identity,
    );
    let hash = super::token_cache::hash_token("t");
    let key = [7u8; 32];
    let present = |_: &crate::claims::Identity, k: &[u8; 32]| *k == [7u8; 32];
    cache.insert(hash, identity.clone(), 160, key);
    assert!(cache.get(&hash, 160, present).is_some());
    assert!(
        cache.get(&hash, 160, |_, _| false).is_none(),
        "dead once its key is gone"
    );
    assert!(cache.get(&hash, 160, present).is_none(), "and removed");
    cache.insert(hash, identity.clone(), 160, key);
    assert!(
        cache.get(&hash, 161, present).is_none(),
        "dead after exp + leeway"
    );
    for i in 0..1000 {
        cache.insert(
            super::token_cache::hash_token(&i.to_string()),
            identity.clone(),
            u64::MAX,
            key,
        );
    }
    assert!(cache.len() <= 10, "{} entries", cache.len());
}

#[tokio::test]
async fn a_missing_required_scope_is_403_insufficient_scope() {
    let cache = JwksCache::with_keys(ISSUER.into(), &jwks(), Arc::new(Metrics::new()));
    let verifier = verifier_with(Arc::new(cache), &["llm", "llm.admin"]);
    let err = verifier.verify(&good()).await.unwrap_err();
    assert_eq!(
        err,
        AuthError::InsufficientScope {
            required: vec!["llm".into(), "llm.admin".into()]
        }
    );
    let response = rescue(&GatewayError::Auth {
        error: err,
        resource_metadata: None,
        scope: None,
    });
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let cache = JwksCache::with_keys(ISSUER.into(), &jwks(), Arc::new(Metrics::new()));
    let verifier = verifier_with(Arc::new(cache), &["llm"]);
    assert!(verifier.verify(&good()).await.is_ok());
}

/// A JWKS endpoint on loopback that counts fetches and can be made to fail.
struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

async fn jwks_server(doc: Value) -> JwksServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let fetches = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (f, fail) = (fetches.clone(), failing.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (f, fail, doc) = (f.clone(), fail.clone(), doc.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    f.fetch_add(1, Ordering::SeqCst);
                    let failing = fail.load(Ordering::SeqCst);
                    let doc = doc.to_string();
                    async move {
                        let mut r =
                            http::Response::new(http_body_util::Full::new(bytes::Bytes::from(doc)));
                        if failing {
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    JwksServer {
        url,
        fetches,
        failing,
    }
}

fn fetching_cache(url: &str, cooldown: Duration) -> Arc<JwksCache> {
    Arc::new(JwksCache::new(
        ISSUER.into(),
        KeySource::Uri(url.to_owned()),
        Duration::from_secs(3600),
        cooldown,
        IdpClient::new(),
        Arc::new(Metrics::new()),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_unknown_kids_costs_one_fetch_per_cooldown() {
    let server = jwks_server(jwks()).await;
    let cache = fetching_cache(&server.url, Duration::from_secs(3600));
    cache.refresh("initial").await.unwrap();
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    let verifier = Arc::new(verifier_with(cache.clone(), &[]));

    let storm: Vec<_> = (0..200)
        .map(|i| {
            let verifier = verifier.clone();
            let token = sign(
                &claims(),
                Algorithm::RS256,
                Some(&format!("made-up-{i}")),
                &attacker_key(),
            );
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in storm {
        assert_eq!(task.await.unwrap().unwrap_err(), AuthError::UnknownKey);
    }
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        2,
        "one refresh for the whole storm"
    );
    // Known keys keep working throughout.
    assert!(verifier.verify(&good()).await.is_ok());
}

#[tokio::test]
async fn without_a_cooldown_each_unknown_kid_refreshes_and_new_keys_are_found() {
    // The IdP rotates: the new key is served, and the first token signed
    // with it triggers a refresh that finds it.
    let server = jwks_server(json!({"keys": [
        jwk(&rsa_key(), Algorithm::RS256, "rsa-1"),
        jwk(&attacker_key(), Algorithm::RS256, "rotated-in"),
    ]}))
    .await;
    let cache = fetching_cache(&server.url, Duration::ZERO);
    let verifier = verifier_with(cache.clone(), &[]);
    assert_eq!(
        verifier.verify(&good()).await.unwrap_err(),
        AuthError::KeysUnavailable
    );
    cache.refresh("initial").await.unwrap();
    let rotated = sign(
        &claims(),
        Algorithm::RS256,
        Some("rotated-in"),
        &attacker_key(),
    );
    assert!(verifier.verify(&rotated).await.is_ok());
    let before = server.fetches.load(Ordering::SeqCst);
    for i in 0..3 {
        let t = sign(
            &claims(),
            Algorithm::RS256,
            Some(&format!("nope-{i}")),
            &attacker_key(),
        );
        assert_eq!(
            verifier.verify(&t).await.unwrap_err(),
            AuthError::UnknownKey
        );
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), before + 3);
}

#[tokio::test]
async fn the_last_good_keys_survive_an_unreachable_idp_and_no_keys_fails_closed() {
    let server = jwks_server(jwks()).await;
    let cache = fetching_cache(&server.url, Duration::ZERO);
    let verifier = verifier_with(cache.clone(), &[]);
    cache.refresh("initial").await.unwrap();
    server.failing.store(true, Ordering::SeqCst);
    assert!(cache.refresh("background").await.is_err());
    assert_eq!(cache.status().keys, 3);
    assert!(
        verifier.verify(&good()).await.is_ok(),
        "kept keys still verify"
    );

    // An issuer whose keys never loaded answers 503, never lets a token by.
    let dead = fetching_cache("http://127.0.0.1:9/jwks", Duration::ZERO);
    let verifier = verifier_with(dead.clone(), &[]);
    assert!(dead.refresh("initial").await.is_err());
    let err = verifier.verify(&good()).await.unwrap_err();
    assert_eq!(err, AuthError::KeysUnavailable);
    let response = rescue(&GatewayError::Auth {
        error: err,
        resource_metadata: None,
        scope: None,
    });
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!verifier.is_ready());
}

#[tokio::test]
async fn a_key_refresh_that_drops_a_kid_revokes_cached_verifications_made_with_it() {
    // The failure: a cached token stayed accepted after its key left the
    // IdP's key set.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks().to_string()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(JwksCache::new(
        ISSUER.into(),
        KeySource::File(path.clone()),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        IdpClient::new(),
        metrics.clone(),
    ));
    cache.refresh("initial").await.unwrap();
    let verifier = Verifier::new(
        vec![(
            ISSUER.into(),
            IssuerPolicy::new(
                &IssuerConfig::new(ISSUER, vec![AUDIENCE.into()], Preset::Keycloak),
                cache.clone(),
            )
            .unwrap(),
        )],
        100,
        vec![],
        metrics.clone(),
    );
    let token = good();
    let ec = sign(&claims(), Algorithm::ES256, Some("ec-1"), &ec_key());
    verifier.verify(&token).await.unwrap();
    verifier.verify(&ec).await.unwrap();
    assert_eq!(verifier.cached_tokens(), 2);
    // The same document again keeps every cached verification.
    cache.refresh("background").await.unwrap();
    verifier.verify(&token).await.unwrap();
    assert_eq!(metrics.token_cache_revoked.get(), 0);
    // rsa-1 leaves the key set.
    std::fs::write(
        &path,
        json!({"keys": [jwk(&ec_key(), Algorithm::ES256, "ec-1")]}).to_string(),
    )
    .unwrap();
    cache.refresh("background").await.unwrap();
    assert_eq!(
        verifier.verify(&token).await.unwrap_err(),
        AuthError::UnknownKey,
        "a cached token whose key is gone is refused"
    );
    assert_eq!(metrics.token_cache_revoked.get(), 1);
    verifier.verify(&ec).await.unwrap();
    // A key swapped under the same kid revokes too.
    std::fs::write(
        &path,
        json!({"keys": [jwk(&attacker_key(), Algorithm::RS256, "ec-1")]}).to_string(),
    )
    .unwrap();
    cache.refresh("background").await.unwrap();
    assert!(verifier.verify(&ec).await.is_err());
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let server = jwks_server(json!({
        "issuer": "https://impostor.example/",
        "jwks_uri": "https://impostor.example/keys",
    }))
    .await;
    let issuer = server.url.clone();
    let cache = JwksCache::new(
        issuer.clone(),
        KeySource::Discovery { issuer },
        Duration::from_secs(3600),
        Duration::ZERO,
        IdpClient::new(),
        Arc::new(Metrics::new()),
    );
    let err = cache.refresh("initial").await.unwrap_err().to_string();
    assert!(err.contains("names issuer"), "{err}");
    assert!(!cache.is_loaded());
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        1,
        "keys were not fetched"
    );
}

#[tokio::test]
async fn the_issuers_algorithm_allow_list_refuses_what_it_does_not_list() {
    // The keys would verify RS256 and EdDSA: only the allow-list says no.
    let mut config = IssuerConfig::new(ISSUER, vec![AUDIENCE.into()], Preset::Keycloak);
    config.algorithms = vec![crate::config::Algorithm::ES256];
    let metrics = Arc::new(Metrics::new());
    let cache = JwksCache::with_keys(ISSUER.into(), &jwks(), metrics.clone());
    let policy = IssuerPolicy::new(&config, Arc::new(cache)).unwrap();
    let verifier = Verifier::new(vec![(ISSUER.into(), policy)], 100, vec![], metrics);
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", rsa_key()),
        (Algorithm::EdDSA, "ed-1", ed_key()),
    ] {
        let token = sign(&claims(), alg, Some(kid), &key);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            AuthError::AlgorithmNotAllowed,
            "{alg:?} is not in this issuer's list"
        );
    }
    let listed = sign(&claims(), Algorithm::ES256, Some("ec-1"), &ec_key());
    assert!(verifier.verify(&listed).await.is_ok());
}

#[tokio::test]
async fn a_malformed_or_overlong_delegation_is_refused_with_401() {
    let verifier = verifier();
    let mut deep = json!({"sub": "agent-9"});
    for i in (1..=8).rev() {
        deep = json!({"sub": format!("agent-{i}"), "act": deep});
    }
    for (act, expected) in [
        (json!(["summariser"]), AuthError::InvalidClaim("act")),
        (json!("summariser"), AuthError::InvalidClaim("act")),
        (json!({"sub": 7}), AuthError::InvalidClaim("act")),
        (
            json!({"client_id": "summariser"}),
            AuthError::InvalidClaim("act"),
        ),
        (
            json!({"sub": "a", "act": []}),
            AuthError::InvalidClaim("act"),
        ),
        (deep, AuthError::ActorChainTooLong),
    ] {
        let token = with(|c| {
            c.insert("act".into(), act.clone());
        });
        let err = verifier.verify(&token).await.unwrap_err();
        assert_eq!(err, expected, "{act}");
        let response = rescue(&GatewayError::Auth {
            error: err,
            resource_metadata: None,
            scope: None,
        });
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{act}");
    }
}

#[tokio::test]
async fn claims_of_the_wrong_shape_are_left_out_and_counted() {
    let metrics = Arc::new(Metrics::new());
    let cache = JwksCache::with_keys(ISSUER.into(), &jwks(), metrics.clone());
    let config = IssuerConfig::new(ISSUER, vec![AUDIENCE.into()], Preset::Keycloak);
    let policy = IssuerPolicy::new(&config, Arc::new(cache)).unwrap();
    let verifier = Verifier::new(vec![(ISSUER.into(), policy)], 100, vec![], metrics.clone());
    let token = with(|c| {
        c.insert("groups".into(), json!({"staff": false}));
        c.insert(
            "realm_access".into(),
            json!({"roles": [{"llm-admin": true}]}),
        );
    });
    let identity = verifier.verify(&token).await.unwrap();
    assert!(identity.groups.is_empty() && identity.roles.is_empty());
    let text = metrics.encode();
    for claim in ["groups", "roles"] {
        let line =
            format!("attach_claims_ignored_total{{issuer=\"{ISSUER}\",claim=\"{claim}\"}} 1");
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
}

#[test]
fn every_refusal_carries_its_documented_metric_and_audit_label() {
    // The label is what `attach_requests_total{reason}` and the audit line
    // carry: dashboards and alerts match these exact strings.
    let table = [
        (AuthError::MissingToken, "missing_token"),
        (AuthError::Malformed, "malformed_token"),
        (AuthError::TooLarge, "token_too_large"),
        (AuthError::AlgorithmNotAllowed, "algorithm_not_allowed"),
        (
            AuthError::UnsupportedCritical,
            "unsupported_critical_header",
        ),
        (AuthError::UntrustedIssuer, "untrusted_issuer"),
        (AuthError::UnknownKey, "unknown_key"),
        (AuthError::KeyMismatch, "key_mismatch"),
        (AuthError::BadSignature, "bad_signature"),
        (AuthError::Expired, "expired"),
        (AuthError::NotYetValid, "not_yet_valid"),
        (AuthError::IssuedInFuture, "issued_in_future"),
        (AuthError::WrongAudience, "wrong_audience"),
        (AuthError::MissingClaim("exp"), "missing_claim"),
        (AuthError::InvalidClaim("act"), "invalid_claim"),
        (AuthError::NoUser, "no_user"),
        (AuthError::ActorChainTooLong, "actor_chain_too_long"),
        (
            AuthError::InsufficientScope {
                required: vec!["llm".into()],
            },
            "insufficient_scope",
        ),
        (AuthError::KeysUnavailable, "keys_unavailable"),
        (AuthError::ConflictingCredentials, "conflicting_credentials"),
        (AuthError::ApiKeysDisabled, "api_keys_disabled"),
        (AuthError::ApiKeyUnknown, "api_key_unknown"),
        (AuthError::ApiKeyExpired, "api_key_expired"),
        (AuthError::ApiKeyOtherBackend, "api_key_other_backend"),
        (AuthError::ApiKeyNotExchangeable, "api_key_not_exchangeable"),
        (
            AuthError::ApiKeyStoreUnavailable,
            "api_key_store_unavailable",
        ),
    ];
    for (error, label) in &table {
        // No wildcard: a new refusal does not compile until it is in the table.
        match error {
            AuthError::MissingToken
            | AuthError::Malformed
            | AuthError::TooLarge
            | AuthError::AlgorithmNotAllowed
            | AuthError::UnsupportedCritical
            | AuthError::UntrustedIssuer
            | AuthError::UnknownKey
            | AuthError::KeyMismatch
            | AuthError::BadSignature
            | AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::IssuedInFuture
            | AuthError::WrongAudience
            | AuthError::MissingClaim(_)
            | AuthError::InvalidClaim(_)
            | AuthError::NoUser
            | AuthError::ActorChainTooLong
            | AuthError::InsufficientScope { .. }
            | AuthError::KeysUnavailable
            | AuthError::ConflictingCredentials
            | AuthError::ApiKeysDisabled
            | AuthError::ApiKeyUnknown
            | AuthError::ApiKeyExpired
            | AuthError::ApiKeyOtherBackend
            | AuthError::ApiKeyNotExchangeable
            | AuthError::ApiKeyStoreUnavailable => {}
        }
        assert_eq!(error.reason(), *label, "{error:?}");
        let gateway_error = GatewayError::Auth {
            error: error.clone(),
            resource_metadata: None,
            scope: None,
        };
        assert_eq!(gateway_error.reason(), *label, "{error:?}");
        let response = rescue(&gateway_error);
        assert_eq!(
            response.extensions().get::<crate::rescue::Reason>(),
            Some(&crate::rescue::Reason(label)),
            "{error:?}: the label the metrics layer and the audit line read"
        );
    }
    let distinct: std::collections::HashSet<_> = table.iter().map(|(_, l)| *l).collect();
    assert_eq!(distinct.len(), table.len(), "two refusals share a label");
}

#[tokio::test]
async fn keys_pinned_to_every_supported_algorithm_verify_their_tokens() {
    // Keycloak, Entra and Auth0 realms can sign with any of these; a key
    // the JWKS pins to one of them must verify that algorithm's tokens.
    let p384 = || EncodingKey::from_ec_pem(&pem("ec-p384")).unwrap();
    let signers = [
        (Algorithm::RS256, rsa_key()),
        (Algorithm::RS384, rsa_key()),
        (Algorithm::RS512, rsa_key()),
        (Algorithm::PS256, rsa_key()),
        (Algorithm::PS384, rsa_key()),
        (Algorithm::PS512, rsa_key()),
        (Algorithm::ES256, ec_key()),
        (Algorithm::ES384, p384()),
        (Algorithm::EdDSA, ed_key()),
    ];
    let doc = json!({"keys": signers
        .iter()
        .map(|(alg, key)| jwk(key, *alg, &format!("{alg:?}")))
        .collect::<Vec<_>>()});
    let cache = Arc::new(JwksCache::with_keys(
        ISSUER.into(),
        &doc,
        Arc::new(Metrics::new()),
    ));
    assert_eq!(cache.status().keys, signers.len(), "every key is usable");
    let verifier = verifier_with(cache, &[]);
    for (alg, key) in &signers {
        let kid = format!("{alg:?}");
        let token = sign(&claims(), *alg, Some(&kid), key);
        let identity = verifier
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(identity.user, "user-1", "{alg:?}");
    }
    // Each key verifies only the algorithm it is pinned to.
    for (token_alg, key_kid) in [
        (Algorithm::RS384, "RS512"),
        (Algorithm::PS256, "RS256"),
        (Algorithm::RS256, "PS256"),
        (Algorithm::PS512, "PS384"),
    ] {
        let token = sign(&claims(), token_alg, Some(key_kid), &rsa_key());
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            AuthError::KeyMismatch,
            "{token_alg:?} under the key pinned to {key_kid}"
        );
    }
    let es256_under_es384 = sign(&claims(), Algorithm::ES256, Some("ES384"), &ec_key());
    assert_eq!(
        verifier.verify(&es256_under_es384).await.unwrap_err(),
        AuthError::KeyMismatch
    );
}

#[tokio::test]
async fn keys_without_a_kid_are_counted_and_verify_when_unambiguous() {
    let without_kid = |key: &EncodingKey, alg| {
        let mut jwk = jwk(key, alg, "x");
        jwk.as_object_mut().unwrap().remove("kid");
        jwk
    };
    let metrics = Arc::new(Metrics::new());
    let doc = json!({"keys": [
        jwk(&rsa_key(), Algorithm::RS256, "rsa-1"),
        without_kid(&ec_key(), Algorithm::ES256),
        without_kid(&ed_key(), Algorithm::EdDSA),
    ]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let cache = Arc::new(JwksCache::new(
        ISSUER.into(),
        KeySource::File(path),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        IdpClient::new(),
        metrics.clone(),
    ));
    assert_eq!(cache.refresh("initial").await.unwrap(), 3);
    // What /readyz and the key gauge report.
    assert_eq!(cache.status().keys, 3);
    let gauge = format!("attach_jwks_keys{{issuer=\"{ISSUER}\"}} 3");
    assert!(metrics.encode().contains(&gauge), "{gauge}");
    let verifier = verifier_with(cache, &[]);
    for (alg, key) in [(Algorithm::ES256, ec_key()), (Algorithm::EdDSA, ed_key())] {
        let token = sign(&claims(), alg, None, &key);
        assert!(verifier.verify(&token).await.is_ok(), "{alg:?}");
    }
}

#[tokio::test]
async fn a_jwks_without_usable_keys_fails_closed_and_says_how_many_it_skipped() {
    let unusable = json!({"keys": [
        {"kty": "oct", "kid": "oct-1", "k": "c2VjcmV0"},
        {"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc-1",
         "n": jwk(&attacker_key(), Algorithm::RS256, "x")["n"], "e": "AQAB"},
        // An RSA key pinned to HMAC: the public key must never be a secret.
        {"kty": "RSA", "alg": "HS256", "kid": "hs-1",
         "n": jwk(&rsa_key(), Algorithm::RS256, "x")["n"], "e": "AQAB"},
        {"kty": "RSA", "kid": "broken"},
        // Ed25519 keys jsonwebtoken would slice past their end (a panic
        // at verification), or on a curve it does not verify.
        {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAECAwQFBgcICQoLDA0ODw"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "long",
         "x": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "not-base64", "x": "!!"},
        {"kty": "OKP", "crv": "Ed448", "kid": "ed448",
         "x": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"},
    ]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, unusable.to_string()).unwrap();
    let cache = Arc::new(JwksCache::new(
        ISSUER.into(),
        KeySource::File(path.clone()),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        IdpClient::new(),
        Arc::new(Metrics::new()),
    ));
    let err = cache.refresh("initial").await.unwrap_err();
    assert!(
        matches!(err, jwks::RefreshError::NoUsableKeys { skipped: 8 }),
        "{err:?}"
    );
    // The message the refresh warning logs.
    assert_eq!(
        err.to_string(),
        "the JWKS has no usable signing keys (8 skipped)"
    );
    assert!(!cache.is_loaded());
    assert_eq!(cache.status().keys, 0);
    let verifier = verifier_with(cache.clone(), &[]);
    assert!(!verifier.is_ready(), "/readyz stays 503");
    assert_eq!(
        verifier.verify(&good()).await.unwrap_err(),
        AuthError::KeysUnavailable
    );

    // Once loaded, an unusable document keeps the last good keys.
    std::fs::write(&path, jwks().to_string()).unwrap();
    assert_eq!(cache.refresh("background").await.unwrap(), 3);
    std::fs::write(&path, unusable.to_string()).unwrap();
    assert!(cache.refresh("background").await.is_err());
    assert_eq!(cache.status().keys, 3);
    assert!(verifier.verify(&good()).await.is_ok());
}

#[tokio::test]
async fn debug_output_names_keys_and_counts_never_key_material_or_tokens() {
    let set = keys::KeySet::from_jwks(&jwks());
    let key = set.get("rsa-1").unwrap();
    let shown = format!("{key:?}");
    for part in ["rsa-1", "Rsa", "RS256"] {
        assert!(shown.contains(part), "{part} not in {shown}");
    }
    let modulus = jwk(&rsa_key(), Algorithm::RS256, "x")["n"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!shown.contains(&modulus[..16]), "{shown}");
    assert!(shown.len() < 120, "more than the key's names: {shown}");

    let verifier = verifier();
    let token = good();
    verifier.verify(&token).await.unwrap();
    let shown = format!("{verifier:?}");
    assert!(shown.contains("TokenCache { len: 1 }"), "{shown}");
    for (i, segment) in segments(&token).iter().enumerate() {
        assert!(
            !shown.contains(segment.as_str()),
            "token segment {i} in {shown}"
        );
    }
    assert!(!shown.contains(&modulus[..16]), "{shown}");
    assert!(!shown.contains("user-1"), "a cached identity in {shown}");
}

/// The refresh attempts counted so far, by result.
fn refreshes(metrics: &Metrics, result: &'static str) -> u64 {
    ["initial", "background", "unknown_kid"]
        .into_iter()
        .map(|trigger| {
            metrics
                .jwks_refreshes
                .get_or_create(&crate::metrics::JwksLabels {
                    issuer: ISSUER.into(),
                    result,
                    trigger,
                })
                .get()
        })
        .sum()
}

/// Samples the refresh attempts every 100 ms until `until` seconds after
/// `started`, adding the second of each new attempt to `attempts_at`.
async fn attempts_until(
    metrics: &Metrics,
    started: tokio::time::Instant,
    until: u64,
    attempts_at: &mut Vec<u64>,
) {
    while started.elapsed() < Duration::from_secs(until) {
        let attempts = refreshes(metrics, "error") + refreshes(metrics, "ok");
        let second = started.elapsed().as_secs();
        for _ in attempts_at.len()..usize::try_from(attempts).unwrap() {
            attempts_at.push(second);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn until_keys_load_the_refresher_backs_off_1_2_4_s_up_to_the_refresh_interval() {
    // The IdP is down (the key file is absent): the gateway must not hammer
    // it, and must not wait a whole refresh interval to retry either.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(JwksCache::new(
        ISSUER.into(),
        KeySource::File(path.clone()),
        Duration::from_secs(10),
        Duration::from_secs(3600),
        IdpClient::new(),
        metrics.clone(),
    ));
    let started = tokio::time::Instant::now();
    cache.spawn_refresher();
    // Sample between the refresher's whole seconds (at n.05, n.15, ...); the
    // clock is paused, so every attempt lands exactly on its second.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut attempts_at = Vec::new();
    attempts_until(&metrics, started, 40, &mut attempts_at).await;
    assert_eq!(attempts_at, [0, 1, 3, 7, 15, 25, 35]);
    assert!(!cache.is_loaded());

    // The IdP comes back: the next attempt loads the keys, and the one after
    // waits a whole refresh interval.
    std::fs::write(&path, jwks().to_string()).unwrap();
    attempts_until(&metrics, started, 60, &mut attempts_at).await;
    assert_eq!(attempts_at[7..], [45, 55]);
    assert!(cache.is_loaded());
    assert_eq!(refreshes(&metrics, "ok"), 2);

    // Down again: the backoff starts over at 1 s.
    std::fs::remove_file(&path).unwrap();
    attempts_until(&metrics, started, 75, &mut attempts_at).await;
    assert_eq!(attempts_at[9..], [65, 66, 68, 72]);
    assert!(cache.is_loaded(), "the last good keys are kept");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_kid_fetches_again_once_a_whole_cooldown_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks().to_string()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let cooldown = Duration::from_secs(30);
    let cache = Arc::new(JwksCache::new(
        ISSUER.into(),
        KeySource::File(path.clone()),
        Duration::from_secs(3600),
        cooldown,
        IdpClient::new(),
        metrics.clone(),
    ));
    cache.refresh("initial").await.unwrap();
    let fetches = || refreshes(&metrics, "ok");
    assert!(cache.key_for_unknown_kid("made-up").await.is_none());
    assert_eq!(fetches(), 2);
    // The IdP rotates in a new key.
    std::fs::write(
        &path,
        json!({"keys": [jwk(&attacker_key(), Algorithm::RS256, "rotated-in")]}).to_string(),
    )
    .unwrap();
    tokio::time::advance(cooldown - Duration::from_nanos(1)).await;
    assert!(
        cache.key_for_unknown_kid("rotated-in").await.is_none(),
        "inside the cooldown"
    );
    assert_eq!(fetches(), 2);
    tokio::time::advance(Duration::from_nanos(1)).await;
    assert!(
        cache.key_for_unknown_kid("rotated-in").await.is_some(),
        "a whole cooldown later"
    );
    assert_eq!(fetches(), 3);
}

#[tokio::test]
async fn every_verification_is_timed_as_a_cache_hit_or_miss() {
    let metrics = Arc::new(Metrics::new());
    let cache = JwksCache::with_keys(ISSUER.into(), &jwks(), metrics.clone());
    let config = IssuerConfig::new(ISSUER, vec![AUDIENCE.into()], Preset::Keycloak);
    let policy = IssuerPolicy::new(&config, Arc::new(cache)).unwrap();
    let verifier = Verifier::new(vec![(ISSUER.into(), policy)], 100, vec![], metrics.clone());
    let token = good();
    verifier.verify(&token).await.unwrap();
    verifier.verify(&token).await.unwrap();
    verifier.verify(&token).await.unwrap();
    let _ = verifier.verify("not-a-token").await;
    let text = metrics.encode();
    for line in [
        "attach_verify_duration_seconds_count{cache=\"miss\"} 2",
        "attach_verify_duration_seconds_count{cache=\"hit\"} 2",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
}

/// A good EdDSA token of exactly `len` bytes: a padding claim and the
/// header's `cty` make up the length.
fn token_of_len(len: usize) -> String {
    let base = sign(&claims(), Algorithm::EdDSA, Some("ed-1"), &ed_key()).len();
    let estimate = (len - base) * 3 / 4;
    for cty in 0..4 {
        for pad in estimate.saturating_sub(16)..estimate + 4 {
            let mut c = claims();
            c["pad"] = json!("x".repeat(pad));
            let mut h = header(Algorithm::EdDSA, Some("ed-1"));
            h.cty = (cty > 0).then(|| "x".repeat(cty));
            let token = encode(&h, &c, &ed_key()).unwrap();
            if token.len() == len {
                return token;
            }
        }
    }
    panic!("no token of {len} bytes");
}

#[tokio::test]
async fn a_token_of_exactly_the_size_limit_is_verified_and_one_byte_more_is_not() {
    let verifier = verifier();
    let at_limit = token_of_len(verifier::MAX_TOKEN_BYTES);
    assert_eq!(at_limit.len(), 16 * 1024);
    assert!(verifier.verify(&at_limit).await.is_ok());
    let over = token_of_len(verifier::MAX_TOKEN_BYTES + 1);
    assert_eq!(
        verifier.verify(&over).await.unwrap_err(),
        AuthError::TooLarge
    );
}

#[tokio::test]
async fn a_token_issued_up_to_the_leeway_ahead_of_the_gateways_clock_is_accepted() {
    // `now` is the gateway's clock, passed in: the boundary is exact.
    let verifier = verifier();
    let now = unix_now();
    let leeway = crate::config::IssuerConfig::new(ISSUER, vec![], Preset::Keycloak)
        .leeway
        .as_secs();
    let issued_at = |iat: u64| {
        with(|c| {
            c.insert("iat".into(), json!(iat));
        })
    };
    assert!(
        verifier
            .verify_uncached(&issued_at(now + leeway), now)
            .await
            .is_ok()
    );
    assert_eq!(
        verifier
            .verify_uncached(&issued_at(now + leeway + 1), now)
            .await
            .unwrap_err(),
        AuthError::IssuedInFuture
    );
}

#[tokio::test]
async fn a_key_the_jwks_publishes_broken_is_a_key_problem_not_the_clients() {
    // An EC "key" whose point is not on the curve: the IdP's fault, counted
    // as key_mismatch, never blamed on the token as malformed_token.
    let cache = JwksCache::with_keys(
        ISSUER.into(),
        &json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "broken-ec",
            "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])}]}),
        Arc::new(Metrics::new()),
    );
    let verifier = verifier_with(Arc::new(cache), &[]);
    let token = sign(&claims(), Algorithm::ES256, Some("broken-ec"), &ec_key());
    assert_eq!(
        verifier.verify(&token).await.unwrap_err(),
        AuthError::KeyMismatch
    );
}
