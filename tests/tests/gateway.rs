#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! attach-gateway as a process, in front of a mock model, with real Keycloak
//! tokens: who passes, who is refused (and that the model never sees them),
//! identity headers, streaming, limits, hot reload, shutdown, standalone mode.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use attach_sidecar::claims::Preset;
use attach_sidecar::config::{GatewayConfig, IssuerConfig};
use attach_tests::gateway::{GatewayProcess, metric_sum};
use attach_tests::keycloak::{AUDIENCE, KeycloakInfo, OTHER_REALM, REALM};
use attach_tests::mock_model::MockModel;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

fn keycloak() -> &'static KeycloakInfo {
    common::world().keycloak().unwrap()
}

fn issuer(kc: &KeycloakInfo, realm: &str) -> IssuerConfig {
    IssuerConfig::new(kc.issuer(realm), vec![AUDIENCE.into()], Preset::Keycloak)
}

fn config(upstream: &MockModel, issuers: Vec<IssuerConfig>) -> GatewayConfig {
    let mut config = GatewayConfig::new(issuers);
    config.upstream.url = upstream.url();
    config.reload_interval = Duration::from_millis(100);
    config
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header<'a>(seen: &'a attach_tests::mock_model::SeenRequest, name: &str) -> Vec<&'a str> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

async fn chat(gw: &GatewayProcess, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/chat", gw.url))
        .json(&json!({"model": "llama3.2:1b", "stream": false, "messages": []}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn keycloak_users_and_machines_pass_with_verified_identity_headers() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let gw = GatewayProcess::start(config(&model, vec![issuer(kc, REALM)]))
        .await
        .unwrap();

    for (who, token, groups, tenant, client) in [
        (
            "alice",
            kc.token_for("alice").await.unwrap(),
            vec!["admins,ai-power-users", "ai-power-users,admins"],
            "acme",
            "attach-cli",
        ),
        (
            "bob",
            kc.token_for("bob").await.unwrap(),
            vec!["staff"],
            "acme",
            "attach-cli",
        ),
        (
            "m2m",
            kc.m2m_token().await.unwrap(),
            vec![""],
            "acme",
            "attach-m2m",
        ),
    ] {
        let response = chat(&gw, Some(&token)).await;
        assert_eq!(response.status(), 200, "{who}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["done"], true, "{who}: the model's answer came back");
        let seen = model.last().await.unwrap();
        let sub = claims_of(&token)["sub"].as_str().unwrap().to_owned();
        assert_eq!(header(&seen, "x-attach-user"), [sub.as_str()], "{who}");
        assert!(
            groups.contains(&header(&seen, "x-attach-groups")[0]),
            "{who}: {:?}",
            header(&seen, "x-attach-groups")
        );
        assert_eq!(header(&seen, "x-attach-tenant"), [tenant], "{who}");
        assert_eq!(header(&seen, "x-attach-client"), [client], "{who}");
        assert!(
            header(&seen, "authorization").is_empty(),
            "{who}: the bearer token must not reach the model"
        );
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(header(&seen, "x-attach-claims")[0])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["user"], sub, "{who}");
        assert_eq!(claims["iss"], kc.issuer(REALM), "{who}");
        assert_eq!(
            header(&seen, "host"),
            [model.addr().to_string().as_str()],
            "{who}: Host is the model's own"
        );
    }
}

#[tokio::test]
async fn client_sent_identity_headers_never_reach_the_model() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let gw = GatewayProcess::start(config(&model, vec![issuer(kc, REALM)]))
        .await
        .unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let response = reqwest::Client::new()
        .get(format!("{}/api/tags", gw.url))
        .bearer_auth(&bob)
        .header("X-Attach-User", "alice")
        .header("X-Attach-Groups", "admins")
        .header("x-attach-tenant", "globex")
        .header("X-Attach-Claims", "eyJ1c2VyIjoiYWxpY2UifQ")
        .header("X-Attach-Agent", "root")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = model.last().await.unwrap();
    assert_eq!(
        header(&seen, "x-attach-user"),
        [claims_of(&bob)["sub"].as_str().unwrap()]
    );
    assert_eq!(header(&seen, "x-attach-groups"), ["staff"]);
    assert_eq!(header(&seen, "x-attach-tenant"), ["acme"]);
    assert!(header(&seen, "x-attach-agent").is_empty());
}

#[tokio::test]
async fn every_unauthenticated_request_is_refused_before_the_model() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let gw = GatewayProcess::start(config(&model, vec![issuer(kc, REALM)]))
        .await
        .unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let foreign = kc.password_token(OTHER_REALM, "mallory").await.unwrap();
    // Keycloak's issuer and audience, signed by a key Keycloak never had.
    let forged = {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(
            &std::fs::read(
                attach_tests::source_tree::repo_root()
                    .join("sidecar/testdata/keys/rsa-attacker.pem"),
            )
            .unwrap(),
        )
        .unwrap();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        h.kid = Some("not-a-keycloak-key".into());
        jsonwebtoken::encode(&h, &claims_of(&alice), &key).unwrap()
    };
    let mut tampered = claims_of(&alice);
    tampered["groups"] = json!(["admins", "root"]);
    let parts: Vec<&str> = alice.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tampered).unwrap()),
        parts[2]
    );
    let cases: Vec<(&str, Option<String>, Option<&str>)> = vec![
        ("no token", None, None),
        ("garbage", Some("not-a-jwt".into()), Some("invalid_token")),
        (
            "another realm's token",
            Some(foreign),
            Some("invalid_token"),
        ),
        (
            "signed by an unknown key",
            Some(forged),
            Some("invalid_token"),
        ),
        ("tampered claims", Some(tampered), Some("invalid_token")),
        ("basic auth", None, None),
    ];
    for (name, token, error) in cases {
        let mut request = reqwest::Client::new()
            .post(format!("{}/api/chat", gw.url))
            .json(&json!({"model": "llama3.2:1b"}));
        request = match (&token, name) {
            (Some(t), _) => request.bearer_auth(t),
            (None, "basic auth") => request.basic_auth("alice", Some("alice-password")),
            (None, _) => request,
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{name}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.starts_with("Bearer realm=\"attach-gateway\""),
            "{name}: {challenge}"
        );
        assert!(
            challenge.contains(&format!(
                "resource_metadata=\"{}/.well-known/oauth-protected-resource\"",
                gw.url
            )),
            "{name}: {challenge}"
        );
        match error {
            Some(e) => assert!(
                challenge.contains(&format!("error=\"{e}\"")),
                "{name}: {challenge}"
            ),
            None => assert!(!challenge.contains("error="), "{name}: {challenge}"),
        }
        let body = response.text().await.unwrap();
        let json: Value = serde_json::from_str(&body).unwrap();
        assert!(json["error"].is_string(), "{name}: {body}");
        if let Some(t) = &token {
            assert!(!body.contains(t.as_str()), "{name}: the token is echoed");
        }
    }
    assert_eq!(model.request_count(), 0, "nothing reached the model");
    let metrics = gw.metrics().await.unwrap();
    assert_eq!(
        metric_sum(&metrics, "attach_requests_total{status=\"401\""),
        6.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn several_issuers_each_token_checked_against_its_own() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let gw = GatewayProcess::start(config(
        &model,
        vec![issuer(kc, REALM), issuer(kc, OTHER_REALM)],
    ))
    .await
    .unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let mallory = kc.password_token(OTHER_REALM, "mallory").await.unwrap();
    assert_eq!(chat(&gw, Some(&alice)).await.status(), 200);
    assert_eq!(chat(&gw, Some(&mallory)).await.status(), 200);
    let seen = model.last().await.unwrap();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(header(&seen, "x-attach-claims")[0])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], kc.issuer(OTHER_REALM));
    // A token claiming one realm but signed by the other's key fails.
    let mut lying = claims_of(&mallory);
    lying["iss"] = json!(kc.issuer(REALM));
    let parts: Vec<&str> = mallory.split('.').collect();
    let lying = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&lying).unwrap()),
        parts[2]
    );
    assert_eq!(chat(&gw, Some(&lying)).await.status(), 401);
}

#[tokio::test]
async fn a_keycloak_key_rotation_is_picked_up_without_a_restart() {
    let kc = keycloak();
    // A realm of its own: rotating keys in the shared realm would disturb
    // the other tests.
    let realm = format!("rotation-{:06x}", rand::random::<u32>() & 0xff_ffff);
    kc.create_realm(&realm, "rita").await.unwrap();
    let model = MockModel::start().await.unwrap();
    let gw = GatewayProcess::start(config(&model, vec![issuer(kc, &realm)]))
        .await
        .unwrap();

    let before = kc.password_token(&realm, "rita").await.unwrap();
    assert_eq!(chat(&gw, Some(&before)).await.status(), 200);
    kc.rotate_key(&realm).await.unwrap();
    let after = kc.password_token(&realm, "rita").await.unwrap();
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    assert_ne!(kid(&before), kid(&after), "Keycloak signs with the new key");

    assert_eq!(
        chat(&gw, Some(&after)).await.status(),
        200,
        "the new key was fetched"
    );
    assert_eq!(
        chat(&gw, Some(&before)).await.status(),
        200,
        "the old key is still published"
    );
    let metrics = gw.metrics().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("trigger=\"unknown_kid\"")
                && l.contains("result=\"ok\"")
                && l.ends_with(" 1")),
        "one refresh caused by the new kid:\n{metrics}"
    );
}

async fn read_first_chunk(response: &mut reqwest::Response) -> bytes::Bytes {
    tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("the first chunk arrived while the model was still writing")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn streams_reach_the_client_as_the_model_writes_them() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let gw = GatewayProcess::start(config(&model, vec![issuer(kc, REALM)]))
        .await
        .unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let http = reqwest::Client::new();

    // Ollama NDJSON: the model holds after its first line until released.
    let mut response = http
        .post(format!("{}/api/chat", gw.url))
        .bearer_auth(&alice)
        .header("x-mock-hold", "1")
        .json(&json!({"model": "llama3.2:1b", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let first = read_first_chunk(&mut response).await;
    let line: Value = serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["done"], false);
    model.release();
    let rest = response.text().await.unwrap();
    let last: Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["eval_count"], 3);

    // OpenAI SSE, the same way.
    let mut response = http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&alice)
        .header("x-mock-hold", "1")
        .json(&json!({"model": "llama3.2:1b", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = read_first_chunk(&mut response).await;
    assert!(first.starts_with(b"data: {"), "{first:?}");
    model.release();
    let rest = response.text().await.unwrap();
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
}

#[tokio::test]
async fn hot_reload_under_load_drops_no_request() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let base = config(&model, vec![issuer(kc, REALM)]);
    let mut gw = GatewayProcess::start(base.clone()).await.unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let url = format!("{}/api/tags", gw.url);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, url, token) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                url.clone(),
                alice.clone(),
            );
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).bearer_auth(&token).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    // Swap 1: the model now also gets the caller's Authorization header.
    let mut forwarding = base.clone();
    forwarding.identity.forward_authorization = true;
    gw.write_config(&forwarding).unwrap();
    wait_for(&model, true).await;
    // Swap 2: back to the default.
    gw.write_config(&base).unwrap();
    wait_for(&model, false).await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during reloads"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    let metrics = gw.metrics().await.unwrap();
    assert_eq!(
        metric_sum(&metrics, "attach_config_reloads_total{result=\"ok\"}"),
        2.0,
        "{metrics}"
    );
}

/// Waits until the model sees (or stops seeing) an Authorization header.
async fn wait_for(model: &MockModel, authorization: bool) {
    for _ in 0..200 {
        if let Some(seen) = model.last().await
            && seen.headers.contains_key("authorization") == authorization
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the reload (authorization forwarded: {authorization}) never took effect");
}

#[tokio::test]
async fn an_invalid_config_is_refused_and_the_last_good_one_kept() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let base = config(&model, vec![issuer(kc, REALM)]);
    let mut gw = GatewayProcess::start(base.clone()).await.unwrap();
    let alice = kc.token_for("alice").await.unwrap();

    let mut no_audience = base.clone();
    no_audience.issuers[0].audiences.clear();
    let bad_texts = [
        "{ this is not yaml: [".to_owned(),
        serde_json::to_string(&no_audience).unwrap(),
        "apiVersion: attach.dev/v1alpha1\nkind: GatewayConfig\nissuers: []\nlisten: {address: 0.0.0.0, port: 1}\nsurprise: 1\n".to_owned(),
    ];
    for (i, text) in bad_texts.iter().enumerate() {
        gw.write_raw_config(text).unwrap();
        let mut refused = 0.0;
        for _ in 0..200 {
            refused = metric_sum(
                &gw.metrics().await.unwrap(),
                "attach_config_reloads_total{result=\"error\"}",
            );
            if refused >= (i + 1) as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(refused, (i + 1) as f64, "reload {i} was not refused");
        assert_eq!(
            chat(&gw, Some(&alice)).await.status(),
            200,
            "the last good config still serves"
        );
        assert_eq!(chat(&gw, None).await.status(), 401, "and still refuses");
    }
    gw.check_running().unwrap();
    assert!(
        gw.log()
            .contains("config reload refused; keeping the last good config")
    );
}

#[tokio::test]
async fn limits_and_model_failures_get_clear_answers() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let mut cfg = config(&model, vec![issuer(kc, REALM)]);
    cfg.limits.max_request_body_bytes = 4096;
    cfg.upstream.response_header_timeout = Duration::from_millis(500);
    cfg.limits.header_read_timeout = Duration::from_millis(300);
    let gw = GatewayProcess::start(cfg.clone()).await.unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let http = reqwest::Client::new();

    let big = json!({"model": "llama3.2:1b", "prompt": "x".repeat(10_000)}).to_string();
    let response = http
        .post(format!("{}/api/generate", gw.url))
        .bearer_auth(&alice)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413, "declared length over the cap");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");

    let chunked = reqwest::Body::wrap_stream(futures::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1024])),
    ));
    let response = http
        .post(format!("{}/api/generate", gw.url))
        .bearer_auth(&alice)
        .body(chunked)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413, "streamed body over the cap");

    let response = http
        .get(format!("{}/api/tags", gw.url))
        .bearer_auth(&alice)
        .header("x-mock-header-delay-ms", "3000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504, "the model did not answer in time");
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "upstream_timeout"
    );

    // A client that never finishes its headers (slowloris) is cut off.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut slow = tokio::net::TcpStream::connect(gw.url.trim_start_matches("http://"))
            .await
            .unwrap();
        slow.write_all(b"GET /api/tags HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "the connection was closed after the header-read timeout"
        );
        assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    }

    drop(model);
    // A fresh connection: the pooled one sat idle while the slow client was
    // cut off, as long as the gateway keeps idle connections, so reusing it
    // would race the gateway closing it.
    let response = reqwest::Client::new()
        .get(format!("{}/api/tags", gw.url))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502, "the model is down");
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "upstream_unavailable"
    );
}

#[tokio::test]
async fn probes_and_protected_resource_metadata_need_no_token() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let mut cfg = config(&model, vec![issuer(kc, REALM)]);
    cfg.unauthenticated_paths = vec!["/".into()];
    cfg.issuers[0].required_scopes = vec!["openid".into()];
    let gw = GatewayProcess::start(cfg).await.unwrap();
    let http = reqwest::Client::new();

    let response = http.get(format!("{}/", gw.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "Ollama is running");
    assert_eq!(
        http.head(format!("{}/", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for (method, path) in [
        ("POST", "/"),
        ("GET", "/api/tags"),
        ("GET", "//"),
        ("GET", "/api/pull"),
    ] {
        let response = http
            .request(method.parse().unwrap(), format!("{}{path}", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{method} {path}");
    }

    let doc: Value = http
        .get(format!("{}/.well-known/oauth-protected-resource", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["resource"], gw.url);
    assert_eq!(doc["authorization_servers"], json!([kc.issuer(REALM)]));
    assert_eq!(doc["scopes_supported"], json!(["openid"]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));

    let ready: Value = http
        .get(format!("{}/readyz", gw.admin_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    assert!(ready["issuers"][0]["keys"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn sigterm_lets_in_flight_streams_finish() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let mut gw = GatewayProcess::start(config(&model, vec![issuer(kc, REALM)]))
        .await
        .unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let mut response = reqwest::Client::new()
        .post(format!("{}/api/chat", gw.url))
        .bearer_auth(&alice)
        .header("x-mock-hold", "1")
        .json(&json!({"model": "llama3.2:1b", "messages": []}))
        .send()
        .await
        .unwrap();
    read_first_chunk(&mut response).await;

    let pid = nix::unistd::Pid::from_raw(i32::try_from(gw.pid().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // New connections are refused once the listener is closed...
    let mut refused = false;
    for _ in 0..100 {
        if reqwest::Client::new()
            .get(format!("{}/", gw.url))
            .send()
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener closed on SIGTERM");
    // ...while the stream in flight runs to its end.
    model.release();
    let rest = response.text().await.unwrap();
    let last: Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    assert_eq!(last["done"], true, "the stream ran to its end: {rest}");
    gw.stop(Duration::from_secs(10));
}

#[tokio::test]
async fn standalone_mode_reads_the_seed_environment_variables() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let issuer_url = kc.issuer(REALM);
    let upstream = model.url();
    let gw = GatewayProcess::standalone(
        &[
            ("OIDC_ISSUER", issuer_url.as_str()),
            ("OIDC_AUD", "some-other-api, attach-gateway"),
            ("AUTH_BACKEND", "keycloak"),
            ("UPSTREAM_URL", upstream.as_str()),
        ],
        &["--log-format", "text"],
    )
    .await
    .unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    assert_eq!(chat(&gw, Some(&bob)).await.status(), 200);
    assert_eq!(
        header(&model.last().await.unwrap(), "x-attach-groups"),
        ["staff"]
    );
    assert_eq!(chat(&gw, None).await.status(), 401);

    // Bad settings stop the start with status 64 and say why.
    let binary = attach_tests::gateway::binary().unwrap();
    for (env, expected) in [
        (vec![("OIDC_AUD", "x")], "OIDC_ISSUER"),
        (
            vec![
                ("OIDC_ISSUER", issuer_url.as_str()),
                ("OIDC_AUD", "x"),
                ("AUTH_BACKEND", "cognito"),
            ],
            "AUTH_BACKEND",
        ),
    ] {
        let out = std::process::Command::new(&binary)
            .env_clear()
            .envs(env)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        assert!(String::from_utf8_lossy(&out.stderr).contains(expected));
    }
}

#[tokio::test]
async fn no_token_ever_appears_in_the_logs() {
    let kc = keycloak();
    let model = MockModel::start().await.unwrap();
    let mut cfg = config(&model, vec![issuer(kc, REALM)]);
    cfg.upstream.url = "http://127.0.0.1:9".into(); // also log forwarding failures
    let gw = GatewayProcess::start(cfg).await.unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let tampered = format!("{alice}x");
    for token in [&alice, &tampered] {
        let _ = chat(&gw, Some(token)).await;
    }
    let log = gw.log();
    assert!(!log.is_empty(), "debug logging is on");
    let signature = alice.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "a token signature is in the log");
    assert!(!log.contains(&alice[..40]), "a token is in the log");
}
