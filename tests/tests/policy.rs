#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Access policy with real Keycloak tokens: users × models × endpoints,
//! model lists trimmed per caller, and every path disguise of an admin
//! endpoint refused before the model.

mod common;

use attach_sidecar::policy::{EndpointClass, Rule, Subjects};
use attach_tests::gateway::GatewayProcess;
use attach_tests::mock_model::MockModel;
use serde_json::{Value, json};

const BIG: &str = "llama3.1:70b";
const SMALL: &str = "llama3.2:1b";
const TINY: &str = "qwen2.5:0.5b";

fn rules() -> Vec<Rule> {
    use EndpointClass::*;
    vec![
        Rule::new(
            "power-users",
            Subjects::groups(&["ai-power-users"]),
            &["*"],
            &[Inference, Read],
        ),
        Rule::new(
            "staff-small",
            Subjects::groups(&["staff"]),
            &["*:1b", "*:0.5b"],
            &[Inference, Read],
        ),
        Rule::new("admins", Subjects::groups(&["admins"]), &["*"], &[Admin]),
        Rule::new(
            "m2m",
            Subjects::clients(&["attach-m2m"]),
            &[SMALL],
            &[Inference],
        ),
    ]
}

async fn gateway(model: &MockModel) -> GatewayProcess {
    let mut config = common::gateway_config(model);
    config.access.rules = rules();
    GatewayProcess::start(config).await.unwrap()
}

async fn call(
    gw: &GatewayProcess,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{}{path}", gw.url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn chat(model: &str) -> Option<Value> {
    Some(json!({"model": model, "stream": false, "messages": [{"role": "user", "content": "hi"}]}))
}

/// (who, token, method, path, body, status, denied_by)
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<Value>,
    u16,
    Option<&'a str>,
);

#[tokio::test]
async fn users_models_and_endpoints_follow_the_rules() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let gw = gateway(&model).await;
    let alice = kc.token_for("alice").await.unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let carol = kc.token_for("carol").await.unwrap();
    let m2m = kc.m2m_token().await.unwrap();

    let table: Vec<Row> = vec![
        ("alice", &alice, "POST", "/api/chat", chat(BIG), 200, None),
        (
            "alice",
            &alice,
            "POST",
            "/v1/chat/completions",
            chat(BIG),
            200,
            None,
        ),
        (
            "alice",
            &alice,
            "POST",
            "/api/pull",
            Some(json!({"model": BIG})),
            200,
            None,
        ),
        (
            "alice",
            &alice,
            "DELETE",
            "/api/delete",
            Some(json!({"model": TINY})),
            200,
            None,
        ),
        (
            "alice",
            &alice,
            "GET",
            "/debug/pprof",
            None,
            403,
            Some("unknown_endpoint"),
        ),
        (
            "alice",
            &alice,
            "POST",
            "/api/chat",
            Some(json!({"messages": []})),
            403,
            Some("missing_model"),
        ),
        ("bob", &bob, "POST", "/api/chat", chat(SMALL), 200, None),
        (
            "bob",
            &bob,
            "POST",
            "/api/generate",
            Some(json!({"model": TINY, "prompt": "x", "stream": false})),
            200,
            None,
        ),
        (
            "bob",
            &bob,
            "POST",
            "/api/chat",
            chat(BIG),
            403,
            Some("model"),
        ),
        (
            "bob",
            &bob,
            "POST",
            "/v1/chat/completions",
            chat(BIG),
            403,
            Some("model"),
        ),
        (
            "bob",
            &bob,
            "POST",
            "/api/pull",
            Some(json!({"model": SMALL})),
            403,
            Some("endpoint"),
        ),
        (
            "bob",
            &bob,
            "POST",
            "/api/show",
            Some(json!({"model": BIG})),
            403,
            Some("model"),
        ),
        (
            "bob",
            &bob,
            "POST",
            "/api/show",
            Some(json!({"model": SMALL})),
            200,
            None,
        ),
        (
            "carol",
            &carol,
            "POST",
            "/api/chat",
            chat(SMALL),
            403,
            Some("subject"),
        ),
        (
            "carol",
            &carol,
            "GET",
            "/api/tags",
            None,
            403,
            Some("subject"),
        ),
        (
            "m2m",
            &m2m,
            "POST",
            "/v1/chat/completions",
            chat(SMALL),
            200,
            None,
        ),
        (
            "m2m",
            &m2m,
            "POST",
            "/v1/chat/completions",
            chat(TINY),
            403,
            Some("model"),
        ),
        (
            "m2m",
            &m2m,
            "GET",
            "/v1/models",
            None,
            403,
            Some("endpoint"),
        ),
        (
            "m2m",
            &m2m,
            "POST",
            "/api/pull",
            Some(json!({"model": SMALL})),
            403,
            Some("endpoint"),
        ),
    ];
    for (who, token, method, path, body, status, denied_by) in table {
        let before = model.request_count();
        let (got, answer) = call(&gw, token, method, path, body.clone()).await;
        assert_eq!(got, status, "{who} {method} {path} {body:?}: {answer}");
        match denied_by {
            Some(kind) => {
                assert_eq!(answer["denied_by"], kind, "{who} {method} {path}: {answer}");
                assert_eq!(
                    model.request_count(),
                    before,
                    "{who} {method} {path}: reached the model"
                );
                let text = answer.to_string();
                assert!(
                    !text.contains("power-users") && !text.contains("staff-small"),
                    "the policy leaked: {text}"
                );
            }
            None => {
                assert_eq!(model.request_count(), before + 1, "{who} {method} {path}");
                // The body reached the model byte for byte.
                if let Some(body) = body {
                    let seen = model.last().await.unwrap();
                    assert_eq!(
                        seen.body,
                        serde_json::to_vec(&body).unwrap(),
                        "{who} {method} {path}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn model_lists_show_each_caller_only_its_models() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let gw = gateway(&model).await;
    let names = |doc: &Value, list: &str, key: &str| -> Vec<String> {
        doc[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m[key].as_str().unwrap().to_owned())
            .collect()
    };
    let alice = kc.token_for("alice").await.unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let (_, tags) = call(&gw, &alice, "GET", "/api/tags", None).await;
    assert_eq!(names(&tags, "models", "name"), [SMALL, BIG, TINY]);
    let (status, tags) = call(&gw, &bob, "GET", "/api/tags", None).await;
    assert_eq!(status, 200);
    assert_eq!(names(&tags, "models", "name"), [SMALL, TINY]);
    let (_, models) = call(&gw, &bob, "GET", "/v1/models", None).await;
    assert_eq!(names(&models, "data", "id"), [SMALL, TINY]);
}

#[tokio::test]
async fn disguised_admin_paths_never_reach_the_model() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let gw = gateway(&model).await;
    let bob = kc.token_for("bob").await.unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let disguises = [
        "/api/pull",
        "/api/../api/pull",
        "/api/./pull",
        "//api/pull",
        "/api//pull",
        "/api/pull/",
        "/API/PULL",
        "/Api/Pull",
        "/api/%70ull",
        "/api%2Fpull",
        "/%61pi/pull",
        "/api/chat/../pull",
        "/api/%2e%2e/api/pull",
        "/api/pull?x=/api/chat",
    ];
    for path in disguises {
        // reqwest would tidy some of these paths; send them raw.
        let (status, body) =
            raw_request(&gw.url, "POST", path, &bob, r#"{"model":"llama3.2:1b"}"#).await;
        assert_eq!(status, 403, "bob {path}: {body}");
        assert!(
            body.contains("\"denied_by\":\"endpoint\""),
            "bob {path}: {body}"
        );
    }
    assert_eq!(
        model.request_count(),
        0,
        "a disguised admin call reached the model"
    );
    for path in ["/../api/pull", "/api/pull%00"] {
        let (status, _) = raw_request(&gw.url, "POST", path, &bob, "{}").await;
        assert_eq!(status, 400, "{path}");
    }
    // An admin's disguised call goes through, and the model gets the
    // normalised path: what was judged is what runs.
    for path in ["/api/../api/pull", "//api/pull/", "/api/%70ull"] {
        let (status, body) =
            raw_request(&gw.url, "POST", path, &alice, r#"{"model":"llama3.2:1b"}"#).await;
        assert_eq!(status, 200, "alice {path}: {body}");
        assert_eq!(
            model.last().await.unwrap().path,
            "/api/pull",
            "alice {path}"
        );
    }
}

/// Sends one HTTP/1.1 request with the path exactly as given.
async fn raw_request(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}
