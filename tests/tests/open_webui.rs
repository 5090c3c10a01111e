#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Open WebUI forwarding its signed-in user's OAuth token, as
//! `docs/clients.md` sets it up, against the real Keycloak and a gateway.
//!
//! Open WebUI itself is not run: its PyPI package pulls a machine-learning
//! stack (torch, sentence-transformers, chromadb) of gigabytes. What it does
//! is replayed from its source (`backend/open_webui/routers/openai.py`):
//!
//! - Its OAuth login is the authorization code flow of the cookbook's
//!   Keycloak client (`docs/clients/open-webui-keycloak-client.json`,
//!   created from the file), signed in on Keycloak's real pages; the code is
//!   redeemed with the client secret in HTTP Basic (authlib's default).
//! - With the connection's `auth_type: system_oauth`
//!   (`docs/clients/open-webui-connection.json`), `get_headers_and_cookies`
//!   sends `Content-Type: application/json`, `Authorization: Bearer <the
//!   user's access token>` and the browser's cookies (Open WebUI's session
//!   `token` and `oauth_session_id`); a chat is `POST {url}/chat/completions`
//!   with `"stream": true` and `stream_options.include_usage`.
//! - The model list (`send_get_request`) sends only the connection's static
//!   key, so with an empty key it is refused: the cookbook lists the models
//!   in `model_ids`, and Open WebUI then asks for no list.

mod common;

use std::time::Duration;

use attach_tests::device_approval;
use attach_tests::keycloak::AUDIENCE;
use attach_tests::mock_model::MockModel;
use common::clients::{people_may_use, sse_events};

const USER: &str = "erin";
const CALLBACK: &str = "http://chat.localhost:8080/oauth/oidc/callback";
/// Open WebUI's own session cookie, sent along by `system_oauth`.
const SESSION_COOKIE: &str = "token=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6IjEifQ.c2ln; \
                              oauth_session_id=5b0e1b2c-6a43-4d2e-9d7c-3c1f7f9f2a11";

fn docs() -> std::path::PathBuf {
    attach_tests::source_tree::repo_root().join("docs/clients")
}

/// Creates the cookbook's Keycloak client in `realm` as `client_id`, with
/// this test's secret and redirect address, keeping its mappers unless
/// `without_audience` (as a client set up without the cookbook's step).
async fn create_client(
    kc: &attach_tests::keycloak::KeycloakInfo,
    realm: &str,
    client_id: &str,
    without_audience: bool,
) -> String {
    let mut client: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(docs().join("open-webui-keycloak-client.json")).unwrap(),
    )
    .unwrap();
    let mappers = client["protocolMappers"].as_array().unwrap().clone();
    assert!(
        mappers
            .iter()
            .any(|m| m["protocolMapper"] == "oidc-audience-mapper"
                && m["config"]["included.custom.audience"] == AUDIENCE),
        "the cookbook's client puts the gateway's audience in its tokens"
    );
    let secret = format!("{client_id}-secret");
    client["clientId"] = client_id.into();
    client["secret"] = secret.as_str().into();
    client["redirectUris"] = serde_json::json!([CALLBACK]);
    if without_audience {
        let kept: Vec<_> = mappers
            .iter()
            .filter(|m| m["protocolMapper"] != "oidc-audience-mapper")
            .cloned()
            .collect();
        client["protocolMappers"] = kept.into();
    }
    kc.admin(
        reqwest::Method::POST,
        &format!("/{realm}/clients"),
        Some(&client),
    )
    .await
    .unwrap();
    secret
}

/// Open WebUI's OAuth login for `USER` through `client_id`: the access
/// token it keeps for the user.
async fn sign_in(issuer: &str, client_id: &str, secret: &str) -> String {
    let state = format!("{:016x}", rand::random::<u64>());
    let authorize = reqwest::Url::parse_with_params(
        &format!("{issuer}/protocol/openid-connect/auth"),
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", CALLBACK),
            ("scope", "openid email profile"),
            ("state", state.as_str()),
            ("nonce", "n-0S6_WzA2Mj"),
        ],
    )
    .unwrap();
    let back = device_approval::sign_in(
        authorize.as_str(),
        CALLBACK,
        USER,
        &format!("{USER}-password"),
    )
    .await
    .unwrap();
    let query: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(query.get("state"), Some(&state), "{back}");
    let code = &query["code"];
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{issuer}/protocol/openid-connect/token"))
        .basic_auth(client_id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", CALLBACK),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {answer}"))
        .to_owned()
}

/// The chat request Open WebUI sends through a `system_oauth` connection.
async fn chat(base: &str, access_token: &str, model: &str) -> reqwest::Response {
    let payload = serde_json::json!({
        "stream": true,
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream_options": {"include_usage": true},
    });
    reqwest::Client::new()
        .post(format!("{base}/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {access_token}"))
        .header("cookie", SESSION_COOKIE)
        .body(payload.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn open_webui_forwards_its_signed_in_users_token() {
    let kc = common::world().keycloak().unwrap();
    let realm = format!("owui-{:08x}", rand::random::<u32>());
    kc.create_realm(&realm, USER).await.unwrap();
    let issuer = kc.issuer(&realm);

    // The connection as the cookbook configures it.
    let connection: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(docs().join("open-webui-connection.json")).unwrap(),
    )
    .unwrap();
    let config0 = &connection["OPENAI_API_CONFIGS"]["0"];
    assert_eq!(config0["auth_type"], "system_oauth");
    assert_eq!(connection["OPENAI_API_KEYS"], serde_json::json!([""]));
    let model_name = config0["model_ids"][0].as_str().unwrap().to_owned();
    let env = std::fs::read_to_string(docs().join("open-webui.env")).unwrap();
    for line in [
        "OAUTH_CLIENT_ID=open-webui",
        "OAUTH_SCOPES=openid email profile",
    ] {
        assert!(env.lines().any(|l| l == line), "{line}");
    }

    let model = MockModel::start().await.unwrap();
    let config = people_may_use(&issuer, &model, &["llama3.2:*"]);
    let gw = attach_tests::gateway::GatewayProcess::start(config)
        .await
        .unwrap();
    let base = connection["OPENAI_API_BASE_URLS"][0]
        .as_str()
        .unwrap()
        .replace("https://llm.example.com", &gw.url);

    // Signed in to Open WebUI: the user's token reaches the model as them.
    let secret = create_client(kc, &realm, "open-webui", false).await;
    let token = sign_in(&issuer, "open-webui", &secret).await;
    let answer = chat(&base, &token, &model_name).await;
    assert_eq!(answer.status(), 200, "{}", gw.log());
    let (events, text) = sse_events(answer).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(
        events.iter().any(|e| e.contains("\"usage\"")),
        "usage asked for and streamed: {text}"
    );
    let seen = model.last().await.unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            seen.headers["x-attach-claims"].as_bytes(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(seen.headers["x-attach-client"], "open-webui");
    assert!(
        seen.headers.get("authorization").is_none(),
        "the user's token reached the model"
    );
    assert!(
        seen.headers.get("cookie").is_none(),
        "Open WebUI's session cookie reached the model"
    );
    let audited = |log: &str| {
        log.lines().any(|l| {
            l.contains("\"client\":\"open-webui\"") && l.contains("\"decision\":\"allow\"")
        })
    };
    let log = gw.log_until(Duration::from_secs(10), audited).await;
    assert!(audited(&log), "audited as Open WebUI's user: {log}");

    // A model outside the rule: refused, as for any client.
    let refused = chat(&base, &token, "mistral:7b").await;
    assert_eq!(refused.status(), 403);

    // Why the cookbook lists `model_ids`: Open WebUI's model list carries
    // only the connection's static key (empty here), never the user's token.
    let before = model.request_count();
    let list = reqwest::Client::new()
        .get(format!("{base}/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 401);
    assert!(
        list.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"),
        "a challenge, for a client that would follow it"
    );

    // A client set up without the cookbook's audience mapper: its tokens
    // are for Open WebUI alone, and the gateway refuses them.
    let secret = create_client(kc, &realm, "open-webui-no-audience", true).await;
    let other = sign_in(&issuer, "open-webui-no-audience", &secret).await;
    let refused = chat(&base, &other, &model_name).await;
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token", "{body}");
    assert_eq!(body["message"], "audience not accepted", "{body}");
    assert_eq!(
        model.request_count(),
        before,
        "nothing refused reached the model"
    );

    // No token was logged.
    for secret in [&token, &other] {
        assert!(!gw.log().contains(secret.as_str()));
    }
}
