#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The metrics, dashboard and alerts, checked by the real tools: the alert
//! rules pass their `promtool test rules`, and a real Prometheus scraping a
//! gateway and the operator finds data for every dashboard query, counts
//! the tokens the model reported and the model pod running unprotected,
//! and fires `AttachQuotaStoreDown` once Redis is stopped.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attach_operator::crd::llm_backend::LLMBackend;
use attach_sidecar::quota::QuotaLimit;
use attach_sidecar::quota::store::{FailMode, StoreConfig};
use attach_tests::gateway::GatewayProcess;
use attach_tests::mock_model::MockModel;
use attach_tests::prometheus::{PrometheusServer, promtool_test_rules};
use attach_tests::redis_server::RedisServer;
use attach_tests::tools::{Tools, prometheus_binary, promtool_binary};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn alerts_file() -> PathBuf {
    root().join("charts/attach/files/alerts.yaml")
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    let tests = root().join("tests/fixtures/prometheus/alerts.test.yaml");
    let out = promtool_test_rules(&promtool_binary().unwrap(), &[&tests]).unwrap();
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The dashboard's PromQL, as Grafana would send it over the test's span.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("charts/attach/files/dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$job", ".*");
            queries.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    queries
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

async fn send(gw: &GatewayProcess, token: Option<&str>, path: &str, body: Value) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", gw.url))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    response.bytes().await.unwrap(); // the answer ends: usage is charged
    status
}

/// The first sample's value of a query's result, if any.
fn value(result: &Value) -> Option<f64> {
    result.as_array()?.first()?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

async fn alert_state(prometheus: &PrometheusServer, name: &str) -> Option<String> {
    prometheus
        .alerts()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a["labels"]["alertname"] == name)
        .map(|a| a["state"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn prometheus_finds_every_dashboard_query_and_a_stopped_redis_fires_its_alert() {
    let kc = common::world().keycloak().unwrap();
    let tools = Tools::locate().unwrap();
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(&tools.redis_server, redis_dir.path())
        .await
        .unwrap();
    let model = MockModel::start().await.unwrap();
    let mut config = common::gateway_config(&model);
    config.quotas.limits = vec![QuotaLimit {
        requests_per_minute: Some(8),
        ..QuotaLimit::named("per-user")
    }];
    config.quotas.store = StoreConfig::Redis {
        url: redis.url(),
        url_file: None,
        fail_mode: FailMode::Closed,
        key_prefix: format!("obs{:08x}:", rand::random::<u32>()),
    };
    config.metrics.user_labels = true;
    config.metrics.tenant_labels = true;
    config.metrics.backend = Some("team/llm".into());
    let gw = GatewayProcess::start(config).await.unwrap();

    // The operator, with its webhook answering for a namespace of its own.
    let chart = common::chart::install_chart().await;
    let operator = chart.operator.as_ref().unwrap();
    let ns = chart.namespace("obs").await;

    let prometheus_dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: attach-gateway
    static_configs: [{{targets: ["{gateway}"]}}]
  - job_name: attach-operator
    static_configs: [{{targets: ["{operator}"]}}]
"#,
        rules = alerts_file().display(),
        gateway = host_port(&gw.admin_url),
        operator = host_port(&operator.admin_url),
    );
    let prometheus = PrometheusServer::start(
        &prometheus_binary().unwrap(),
        prometheus_dir.path(),
        &config,
    )
    .await
    .unwrap();

    // Traffic of every kind the dashboard shows.
    let bob = kc.token_for("bob").await.unwrap();
    let alice = kc.token_for("alice").await.unwrap();
    let chat = json!({"model": "llama3.2:1b", "stream": false, "messages": []});
    let streamed = json!({"model": "llama3.2:1b", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut answers = 0;
    for token in [&bob, &alice] {
        assert_eq!(send(&gw, Some(token), "/api/chat", chat.clone()).await, 200);
        assert_eq!(
            send(&gw, Some(token), "/v1/chat/completions", streamed.clone()).await,
            200
        );
        answers += 2;
    }
    assert_eq!(
        send(&gw, Some(&bob), "/api/pull", json!({"model": "x"})).await,
        403
    );
    assert_eq!(send(&gw, None, "/api/chat", chat.clone()).await, 401);
    let mut quota_refused = false;
    for _ in 0..8 {
        match send(&gw, Some(&bob), "/api/chat", chat.clone()).await {
            200 => answers += 1,
            429 => quota_refused = true,
            other => panic!("bob's chat answered {other}"),
        }
    }
    assert!(quota_refused, "bob ran out of requests");
    // A namespace holding a backend is one the webhook answers for: a pod
    // there is an admission (this one is not selected, and let through).
    let client = common::world().client().await.unwrap();
    // A model pod that starts before its backend exists: the webhook never
    // saw it, and it runs unprotected.
    let early: Pod = serde_json::from_value(json!({
        "metadata": {"name": "early", "labels": {"app": "llm"}},
        "spec": {"containers": [{"name": "ollama", "image": "ollama/ollama",
                                 "ports": [{"containerPort": 11434}]}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &early)
        .await
        .unwrap();
    let backend: LLMBackend = serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend", "metadata": {"name": "llm"},
        "spec": {"selector": {"matchLabels": {"app": "llm"}}, "engine": "ollama", "port": 11434,
                 "identityProviderRefs": [{"name": "keycloak"}]}
    }))
    .unwrap();
    Api::<LLMBackend>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &backend)
        .await
        .unwrap();
    chart.wait_namespace_label(&ns, true).await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain", "labels": {"app": "other"}},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client, &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();

    // Both targets are scraped after the traffic.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scraped = prometheus
            .query("sum(attach_requests_total)")
            .await
            .unwrap();
        let admissions = prometheus
            .query("sum(attach_operator_admissions_total)")
            .await
            .unwrap();
        let unprotected = prometheus
            .query(r#"attach_operator_unprotected_pods{backend="llm"}"#)
            .await
            .unwrap();
        let seen = value(&scraped).unwrap_or(0.0);
        if seen >= f64::from(answers + 2)
            && value(&admissions).unwrap_or(0.0) >= 1.0
            && value(&unprotected) == Some(1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not scraped: {seen} requests; targets {:?}",
            prometheus.targets().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The GenAI usage is the model's: 11 prompt and 3 completion tokens per
    // answer, for each of the answers forwarded.
    let input = prometheus
        .query(r#"sum(gen_ai_client_token_usage_sum{gen_ai_token_type="input"})"#)
        .await
        .unwrap();
    assert_eq!(value(&input), Some(f64::from(11 * answers)), "{input}");
    let output = prometheus
        .query(r#"sum(gen_ai_client_token_usage_sum{gen_ai_token_type="output"})"#)
        .await
        .unwrap();
    assert_eq!(value(&output), Some(f64::from(3 * answers)), "{output}");
    let first_tokens = prometheus
        .query("sum(gen_ai_server_time_to_first_token_seconds_count)")
        .await
        .unwrap();
    assert_eq!(value(&first_tokens), Some(2.0), "only the two streams");
    let backends = prometheus
        .query(r#"count(gen_ai_client_token_usage_count{attach_backend="team/llm",gen_ai_provider_name="ollama",gen_ai_operation_name="chat"})"#)
        .await
        .unwrap();
    assert!(value(&backends).unwrap_or(0.0) >= 1.0, "{backends}");
    assert_eq!(
        alert_state(&prometheus, "AttachQuotaStoreDown").await,
        None,
        "Redis answers"
    );

    // Redis goes away; requests keep coming, and are refused.
    redis.stop();
    let stopped = Instant::now();
    let fired = loop {
        assert_eq!(
            send(&gw, Some(&alice), "/api/chat", chat.clone()).await,
            503
        );
        if alert_state(&prometheus, "AttachQuotaStoreDown")
            .await
            .as_deref()
            == Some("firing")
        {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(150),
            "AttachQuotaStoreDown did not fire: {:?}",
            prometheus.alerts().await.unwrap()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Its `for` is one minute.
    assert!(fired >= Duration::from_secs(60), "fired after {fired:?}");

    // Every panel of the dashboard has data.
    let mut empty = Vec::new();
    for (panel, expr) in dashboard_queries() {
        let result = prometheus.query(&expr).await.unwrap();
        if result.as_array().is_none_or(Vec::is_empty) {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
}
