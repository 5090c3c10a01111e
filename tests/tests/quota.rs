#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Quotas with real Keycloak tokens: budgets run out at the model's real
//! usage, in every answer shape, and 429 says when to come back.

mod common;

use std::time::Duration;

use attach_sidecar::quota::QuotaLimit;
use attach_tests::gateway::GatewayProcess;
use attach_tests::mock_model::MockModel;
use serde_json::{Value, json};

async fn gateway(model: &MockModel, limits: Vec<QuotaLimit>) -> GatewayProcess {
    let mut config = common::gateway_config(model);
    config.quotas.limits = limits;
    GatewayProcess::start(config).await.unwrap()
}

async fn post(url: &str, token: &str, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The mock reports 11 prompt tokens and one completion token per chunk
/// (3 by default): 14 tokens per answer.
const PER_ANSWER: u64 = 14;

#[tokio::test]
async fn a_user_runs_out_of_tokens_at_the_models_real_usage_in_every_shape() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let shapes: [(&str, Value); 4] = [
        ("/api/chat", json!({"model": "llama3.2:1b", "messages": []})),
        (
            "/api/generate",
            json!({"model": "llama3.2:1b", "prompt": "x", "stream": false}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "llama3.2:1b", "stream": true, "messages": []}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "llama3.2:1b", "messages": []}),
        ),
    ];
    for (path, body) in shapes {
        let model = MockModel::start().await.unwrap();
        // Room for exactly two answers: the third is refused.
        let gw = gateway(
            &model,
            vec![QuotaLimit {
                tokens_per_minute: Some(2 * PER_ANSWER),
                ..QuotaLimit::named("per-user")
            }],
        )
        .await;
        for i in 0..2 {
            let response = post(&gw.url, &bob, path, body.clone()).await;
            assert_eq!(response.status(), 200, "{path} #{i}");
            response.bytes().await.unwrap(); // the answer ends: usage is charged
        }
        let refused = post(&gw.url, &bob, path, body.clone()).await;
        assert_eq!(refused.status(), 429, "{path}: budget spent");
        let retry_after: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        assert_eq!(
            refused.headers()["ratelimit-policy"].to_str().unwrap(),
            format!("\"per-user\";q={};w=60", 2 * PER_ANSWER)
        );
        assert!(
            refused.headers()["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with("\"per-user\";r=0;t=")
        );
        let answer: Value = refused.json().await.unwrap();
        assert_eq!(answer["error"], "quota_exceeded");
        assert_eq!(answer["kind"], "tokens_per_minute");
        assert_eq!(answer["limit"], "per-user");
        assert_eq!(
            model.request_count(),
            2,
            "{path}: the refused request never reached the model"
        );
    }
}

#[tokio::test]
async fn budgets_are_per_user() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let gw = gateway(
        &model,
        vec![QuotaLimit {
            requests_per_minute: Some(1),
            ..QuotaLimit::named("per-user")
        }],
    )
    .await;
    let body = json!({"model": "llama3.2:1b", "stream": false, "messages": []});
    let bob = kc.token_for("bob").await.unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    assert_eq!(
        post(&gw.url, &bob, "/api/chat", body.clone())
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&gw.url, &bob, "/api/chat", body.clone())
            .await
            .status(),
        429
    );
    assert_eq!(
        post(&gw.url, &alice, "/api/chat", body.clone())
            .await
            .status(),
        200,
        "alice has her own budget"
    );
}

#[tokio::test]
async fn the_client_sees_its_stream_byte_for_byte_without_the_added_usage_event() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let gw = gateway(
        &model,
        vec![QuotaLimit {
            tokens_per_minute: Some(1_000),
            ..QuotaLimit::named("per-user")
        }],
    )
    .await;
    let bob = kc.token_for("bob").await.unwrap();
    let body = json!({"model": "llama3.2:1b", "stream": true, "messages": []});
    let direct = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", model.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !direct.contains("\"usage\""),
        "the mock sends no usage unless asked"
    );
    let through = post(&gw.url, &bob, "/v1/chat/completions", body)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        through, direct,
        "byte-identical apart from the removed usage event"
    );
    let sent: Value = serde_json::from_slice(&model.last().await.unwrap().body).unwrap();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the gateway asked the model for usage"
    );

    // A client that asked for usage itself keeps the event.
    let asked = json!({"model": "llama3.2:1b", "stream": true, "stream_options": {"include_usage": true}, "messages": []});
    let through = post(&gw.url, &bob, "/v1/chat/completions", asked)
        .await
        .text()
        .await
        .unwrap();
    assert!(through.contains("\"usage\":{"), "{through}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_frees_its_slot_and_is_charged() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    // Two budgets: one slot, and one token (the first request may start
    // while anything is left; what it is charged then spends it).
    let gw = gateway(
        &model,
        vec![
            QuotaLimit {
                concurrent: Some(1),
                ..QuotaLimit::named("slots")
            },
            QuotaLimit {
                tokens_per_minute: Some(1),
                ..QuotaLimit::named("tokens")
            },
        ],
    )
    .await;
    let bob = kc.token_for("bob").await.unwrap();
    let mut response = reqwest::Client::new()
        .post(format!("{}/api/chat", gw.url))
        .bearer_auth(&bob)
        .header("x-mock-hold", "1")
        .json(&json!({"model": "llama3.2:1b", "messages": []}))
        .send()
        .await
        .unwrap();
    response.chunk().await.unwrap().unwrap();
    // While the stream runs, bob's one slot is taken.
    let second = post(
        &gw.url,
        &bob,
        "/api/chat",
        json!({"model": "llama3.2:1b", "stream": false, "messages": []}),
    )
    .await;
    assert_eq!(second.status(), 429);
    assert_eq!(second.json::<Value>().await.unwrap()["kind"], "concurrent");
    drop(response); // the client goes away mid-stream
    model.release();
    // The slot is freed, and the prompt plus what was streamed (one chunk)
    // was charged: the 1-token budget is now spent.
    let mut last = 0;
    for _ in 0..100 {
        let r = post(
            &gw.url,
            &bob,
            "/api/chat",
            json!({"model": "llama3.2:1b", "stream": false, "messages": []}),
        )
        .await;
        last = r.status().as_u16();
        let kind = r.json::<Value>().await.unwrap_or_default()["kind"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if kind == "tokens_per_minute" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("expected the token budget to be spent after the disconnect, last status {last}");
}
