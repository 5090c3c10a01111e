#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The audit log and the usage metrics, with real Keycloak tokens: one line
//! per decision, each with who, what, the outcome and the tokens, and never a
//! token.

mod common;

use std::time::Duration;

use attach_sidecar::policy::{EndpointClass, Rule, Subjects};
use attach_sidecar::quota::QuotaLimit;
use attach_tests::gateway::{GatewayProcess, metric_sum};
use attach_tests::mock_model::MockModel;
use serde_json::{Value, json};

#[tokio::test]
async fn every_decision_is_one_audit_line_without_secrets() {
    let kc = common::world().keycloak().unwrap();
    let model = MockModel::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let mut config = common::gateway_config(&model);
    config.audit.path = Some(audit_path.clone());
    config.access.rules = vec![Rule::new(
        "staff-small",
        Subjects::groups(&["staff"]),
        &["*:1b"],
        &[EndpointClass::Inference],
    )];
    config.quotas.limits = vec![QuotaLimit {
        requests_per_minute: Some(2),
        ..QuotaLimit::named("per-user")
    }];
    let gw = GatewayProcess::start(config).await.unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let http = reqwest::Client::new();
    let send = |token: Option<&str>, body: Value, id: &str| {
        let mut r = http
            .post(format!("{}/api/chat", gw.url))
            .header("x-request-id", id)
            .json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let small = json!({"model": "llama3.2:1b", "stream": false, "messages": []});
    let big = json!({"model": "llama3.1:70b", "stream": false, "messages": []});
    let streamed = json!({"model": "llama3.2:1b", "messages": []});
    assert_eq!(
        send(Some(&bob), small.clone(), "req-allow")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        send(Some(&bob), big, "req-policy").await.unwrap().status(),
        403
    );
    assert_eq!(
        send(None, small.clone(), "req-noauth")
            .await
            .unwrap()
            .status(),
        401
    );
    let r = send(Some(&bob), streamed, "req-stream").await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    assert_eq!(
        send(Some(&bob), small, "req-quota").await.unwrap().status(),
        429
    );

    let mut lines = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&audit_path).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>();
        if lines.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}"))
            .clone()
    };
    let sub = {
        use base64::Engine;
        let payload = bob.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        claims["sub"].as_str().unwrap().to_owned()
    };

    let allow = by_id("req-allow");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["status"], 200);
    assert_eq!(allow["user"], sub.as_str());
    assert_eq!(allow["tenant"], "acme");
    assert_eq!(allow["client"], "attach-cli");
    assert_eq!(allow["model"], "llama3.2:1b");
    assert_eq!(allow["endpoint"], "inference");
    assert_eq!(allow["rule"], "staff-small");
    assert_eq!(allow["prompt_tokens"], 11);
    assert_eq!(allow["completion_tokens"], 3);
    assert_eq!(allow["tokens_estimated"], false);
    assert!(allow["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(allow["time"].as_str().unwrap().ends_with('Z'));

    let policy = by_id("req-policy");
    assert_eq!(policy["decision"], "deny");
    assert_eq!(policy["status"], 403);
    assert_eq!(policy["reason"], "denied_model");
    assert_eq!(policy["model"], "llama3.1:70b");

    let noauth = by_id("req-noauth");
    assert_eq!(noauth["status"], 401);
    assert_eq!(noauth["reason"], "missing_token");
    assert!(noauth["user"].is_null());

    let stream = by_id("req-stream");
    assert_eq!(stream["completion_tokens"], 3, "counted from the stream");

    let quota = by_id("req-quota");
    assert_eq!(quota["status"], 429);
    assert_eq!(quota["reason"], "quota_requests_per_minute");

    let raw = std::fs::read_to_string(&audit_path).unwrap();
    assert!(!raw.contains(&bob), "a token is in the audit log");
    assert!(
        !raw.contains(bob.rsplit('.').next().unwrap()),
        "a token signature is in the audit log"
    );
    assert!(!raw.to_ascii_lowercase().contains("bearer"));
    assert!(!raw.contains("messages"), "a body is in the audit log");

    let metrics = gw.metrics().await.unwrap();
    assert_eq!(
        metric_sum(
            &metrics,
            "attach_tokens_total{model=\"llama3.2:1b\",kind=\"completion\""
        ),
        6.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "attach_tokens_total{model=\"llama3.2:1b\",kind=\"prompt\""
        ),
        22.0
    );
    assert!(metrics.contains("attach_quota_store_duration_seconds_count"));
    assert!(metrics.contains("reason=\"denied_model\""));
}
