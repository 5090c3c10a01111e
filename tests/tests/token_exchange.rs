#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! RFC 8693 token exchange against the real Keycloak (standard token
//! exchange): the model receives a downstream token for `llm-downstream`
//! instead of the caller's, repeated requests hit the cache, a client that
//! may not exchange gets a clean 403, an unreachable token endpoint 503, and
//! no token ever reaches the gateway's log.

mod common;

use attach_sidecar::exchange::TokenExchangeConfig;
use attach_tests::gateway::{GatewayProcess, metric_sum};
use attach_tests::keycloak::REALM;
use attach_tests::mock_model::MockModel;
use base64::Engine;

fn payload(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

async fn gateway(
    model: &MockModel,
    client: &str,
    secret: &str,
    endpoint: Option<String>,
) -> GatewayProcess {
    let mut config = common::gateway_config(model);
    let mut exchange = TokenExchangeConfig::new(client, secret);
    exchange.audience = Some("llm-downstream".into());
    exchange.token_endpoint = endpoint;
    config.issuers[0].token_exchange = Some(exchange);
    GatewayProcess::start(config).await.unwrap()
}

#[tokio::test]
async fn the_model_gets_an_exchanged_token_cached_and_never_logged() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    // The token endpoint found by discovery.
    let gw = gateway(&model, "attach-gateway", "attach-gateway-secret", None).await;
    let alice = kc.token_for("alice").await.unwrap();
    let http = reqwest::Client::new();

    let resp = http
        .get(format!("{}/api/tags", gw.url))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", gw.log());
    let seen = model.last().await.unwrap();
    let forwarded = seen.headers["authorization"].to_str().unwrap().to_owned();
    let exchanged = forwarded.strip_prefix("Bearer ").unwrap().to_owned();
    assert_ne!(
        exchanged, alice,
        "the caller's token never reaches the model"
    );
    let claims = payload(&exchanged);
    let aud = claims["aud"].clone();
    assert!(
        aud == "llm-downstream"
            || aud
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "llm-downstream")),
        "{claims}"
    );
    assert_eq!(claims["sub"], payload(&alice)["sub"], "the same user");
    assert_eq!(claims["iss"], kc.issuer(REALM));

    // Repeated requests: one exchange, then cache hits.
    for _ in 0..10 {
        let resp = http
            .get(format!("{}/api/tags", gw.url))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            model.last().await.unwrap().headers["authorization"],
            forwarded.as_str()
        );
    }
    let metrics = gw.metrics().await.unwrap();
    let hits = metric_sum(&metrics, "attach_token_exchanges_total{result=\"hit\"}");
    let exchanges = metric_sum(
        &metrics,
        "attach_token_exchanges_total{result=\"exchanged\"}",
    );
    assert_eq!((exchanges, hits), (1.0, 10.0), "{metrics}");
    println!("token exchange cache: {hits} hits, {exchanges} exchange(s) for 11 requests");

    // A different user is a different exchange.
    let bob = kc.token_for("bob").await.unwrap();
    let resp = http
        .get(format!("{}/api/tags", gw.url))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(
        model.last().await.unwrap().headers["authorization"],
        forwarded.as_str()
    );

    let log = gw.log();
    for secret in [
        alice.as_str(),
        bob.as_str(),
        exchanged.as_str(),
        "attach-gateway-secret",
    ] {
        assert!(!log.contains(secret), "a token or secret is in the log");
    }
}

#[tokio::test]
async fn a_client_that_may_not_exchange_gets_403_and_nothing_is_forwarded() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let gw = gateway(
        &model,
        "attach-no-exchange",
        "attach-no-exchange-secret",
        None,
    )
    .await;
    let alice = kc.token_for("alice").await.unwrap();
    let resp = reqwest::Client::new()
        .get(format!("{}/api/tags", gw.url))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "token_exchange_refused");
    assert!(
        body["message"].as_str().unwrap().contains("refused"),
        "{body}"
    );
    assert_eq!(model.request_count(), 0, "never forwarded");
    assert!(!gw.log().contains(&alice));
}

#[tokio::test]
async fn an_unreachable_token_endpoint_gives_503_and_nothing_is_forwarded() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/token", l.local_addr().unwrap().port())
    };
    let gw = gateway(
        &model,
        "attach-gateway",
        "attach-gateway-secret",
        Some(closed),
    )
    .await;
    let alice = kc.token_for("alice").await.unwrap();
    let resp = reqwest::Client::new()
        .get(format!("{}/api/tags", gw.url))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(model.request_count(), 0, "never forwarded");
}
