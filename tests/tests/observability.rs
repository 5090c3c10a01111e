#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The metrics, dashboard and alerts, checked by the real tools: the alert
//! rules pass their `promtool test rules`, and a real Prometheus scraping a
//! gateway and the operator finds data for every dashboard query, counts
//! the tokens the model reported and the model pod running unprotected,
//! and fires `AttachQuotaStoreDown` once Redis is stopped. The dashboard
//! passes the dashboard linter (every query parsed by Prometheus's own
//! PromQL parser), and the real OpenTelemetry Collector the trace tests
//! send to decodes what it is sent into the spans the harness reads back.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attach_operator::crd::llm_backend::LLMBackend;
use attach_sidecar::quota::QuotaLimit;
use attach_sidecar::quota::store::{FailMode, StoreConfig};
use attach_tests::gateway::GatewayProcess;
use attach_tests::mock_model::MockModel;
use attach_tests::otelcol::{Collector, SpanKind};
use attach_tests::prometheus::{PrometheusServer, promtool_test_rules};
use attach_tests::redis_server::RedisServer;
use attach_tests::tools::{
    Tools, dashlint_binary, otelcol_binary, prometheus_binary, promtool_binary,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

fn root() -> PathBuf {
    attach_tests::source_tree::repo_root()
}

fn alerts_file() -> PathBuf {
    root().join("charts/attach/files/alerts.yaml")
}

fn dashboard_file() -> PathBuf {
    root().join("charts/attach/files/dashboard.json")
}

/// Runs `dashlint [args] <dashboard>`: its success, stdout and stderr.
fn dashlint(args: &[&str], dashboard: &Path) -> (bool, String, String) {
    let out = std::process::Command::new(dashlint_binary().unwrap())
        .args(args)
        .arg(dashboard)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every metric the dashboard's queries select, as Prometheus's PromQL
/// parser reads them (`dashlint --metrics`), with the panel of each.
fn dashboard_metrics() -> Vec<(String, String)> {
    let (ok, stdout, stderr) = dashlint(&["--metrics"], &dashboard_file());
    assert!(ok, "{stderr}");
    let metrics: Vec<(String, String)> = stdout
        .lines()
        .map(|line| {
            let mut fields = line.split('\t');
            let metric = fields.next().unwrap().to_owned();
            (metric, fields.collect::<Vec<_>>().join(" "))
        })
        .collect();
    assert!(!metrics.is_empty(), "no metrics in {stdout:?}");
    metrics
}

#[test]
fn the_dashboard_passes_the_dashboard_linter() {
    let (ok, stdout, stderr) = dashlint(&[], &dashboard_file());
    assert!(ok, "dashlint found problems:\n{stderr}{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn the_dashboard_metrics_come_from_the_promql_parser() {
    let metrics: Vec<String> = dashboard_metrics().into_iter().map(|(m, _)| m).collect();
    // A selector inside a function inside an aggregation, and a bare one.
    assert!(
        metrics.contains(&"attach_request_overhead_seconds_bucket".to_owned()),
        "{metrics:?}"
    );
    assert!(
        metrics.contains(&"attach_operator_leader".to_owned()),
        "{metrics:?}"
    );
    for metric in &metrics {
        assert!(
            metric.starts_with("attach_") || metric.starts_with("gen_ai_"),
            "{metric}: not one of the project's metrics"
        );
        assert!(
            !metric.contains(['{', '(', '$', ' ']),
            "{metric}: not a bare metric name"
        );
    }
}

#[test]
fn the_dashboard_linter_refuses_each_kind_of_broken_dashboard() {
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_file()).unwrap()).unwrap();
    type Breakage = fn(&mut Value);
    let cases: [(&str, &str, Breakage); 9] = [
        ("target-promql", "Requests by reason", |d| {
            d["panels"][0]["targets"][0]["expr"] =
                json!("sum by (reason (rate(attach_requests_total[$__rate_interval]))");
        }),
        ("target-promql", "Requests by reason", |d| {
            d["panels"][0]["targets"][0]["expr"] = json!("rate(attach_requests_total[5m]) +");
        }),
        ("panel-units", "Denials by reason", |d| {
            d["panels"][1]["fieldConfig"]["defaults"]
                .as_object_mut()
                .unwrap()
                .remove("unit");
        }),
        ("target-rate-interval", "Tokens by model", |d| {
            let expr = d["panels"][2]["targets"][0]["expr"].as_str().unwrap();
            d["panels"][2]["targets"][0]["expr"] = json!(expr.replace("$__rate_interval", "5m"));
        }),
        ("panel-description", "Quota rejections", |d| {
            d["panels"][4]
                .as_object_mut()
                .unwrap()
                .remove("description");
        }),
        ("panel-title", "panels[5]", |d| {
            d["panels"][5]["title"] = json!("");
        }),
        ("panel-id-unique", "Time to first token", |d| {
            d["panels"][6]["id"] = d["panels"][0]["id"].clone();
        }),
        ("panel-datasource", "Gateway-added latency", |d| {
            d["panels"][5]["datasource"] = json!({"type": "prometheus", "uid": "prom-1"});
        }),
        ("template-datasource", "templating", |d| {
            d["templating"]["list"][0]["query"] = json!("loki");
        }),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (rule, panel, break_it)) in cases.into_iter().enumerate() {
        let mut dashboard = original.clone();
        break_it(&mut dashboard);
        let path = dir.path().join(format!("dashboard-{i}.json"));
        std::fs::write(&path, dashboard.to_string()).unwrap();
        let (ok, _, stderr) = dashlint(&[], &path);
        assert!(!ok, "case {i} ({rule}) passed");
        assert!(
            stderr.contains(&format!("{rule}: {panel}: ")),
            "case {i}: expected a {rule} finding for {panel}, got:\n{stderr}"
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "case {i}: one finding expected:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn the_collector_decodes_otlp_json_into_spans_with_their_parents() {
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&otelcol_binary().unwrap(), dir.path())
        .await
        .unwrap();
    // Ids unique to this run, as an exporter makes them.
    let trace_id = format!("{:032x}", rand::random::<u128>());
    let parent_id = format!("{:016x}", rand::random::<u64>() | 1);
    let child_id = format!("{:016x}", rand::random::<u64>() | 1);
    let payload = json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "attach-gateway"}}]},
        "scopeSpans": [{"scope": {"name": "attach"}, "spans": [
            {"traceId": trace_id, "spanId": parent_id, "name": "POST /api/chat", "kind": 2,
             "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000",
             "attributes": [
                {"key": "http.request.method", "value": {"stringValue": "POST"}},
                {"key": "http.response.status_code", "value": {"intValue": "429"}}],
             "status": {"code": 2, "message": "quota"}},
            {"traceId": trace_id, "spanId": child_id, "parentSpanId": parent_id,
             "name": "quota", "kind": 1,
             "startTimeUnixNano": "1700000000100000000", "endTimeUnixNano": "1700000000200000000",
             "attributes": [
                {"key": "attach.quota.limit", "value": {"stringValue": "per-user"}},
                {"key": "attach.quota.remaining", "value": {"intValue": "0"}},
                {"key": "attach.quota.fraction", "value": {"doubleValue": 0.25}},
                {"key": "attach.quota.shared", "value": {"boolValue": true}}]}
        ]}]
    }]});
    let response = reqwest::Client::new()
        .post(format!("{}/v1/traces", collector.otlp_http_endpoint()))
        .header("content-type", "application/json")
        .body(payload.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    let spans = collector
        .wait_for_spans(|spans| spans.len() >= 2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let parent = spans.iter().find(|s| s.span_id == parent_id).unwrap();
    let child = spans.iter().find(|s| s.span_id == child_id).unwrap();
    assert_eq!(parent.trace_id, trace_id);
    assert_eq!(parent.parent_span_id, None);
    assert_eq!(parent.kind, SpanKind::Server);
    assert_eq!(parent.name, "POST /api/chat");
    assert_eq!(parent.service_name, "attach-gateway");
    assert_eq!(
        (parent.status_code, parent.status_message.as_str()),
        (2, "quota")
    );
    assert_eq!(parent.int_attribute("http.response.status_code"), Some(429));
    assert_eq!(
        parent.end_time_unix_nano - parent.start_time_unix_nano,
        1_000_000_000
    );
    assert_eq!(child.trace_id, trace_id);
    assert_eq!(child.parent_span_id.as_deref(), Some(parent_id.as_str()));
    assert_eq!(child.kind, SpanKind::Internal);
    assert_eq!(
        child.attributes,
        [
            ("attach.quota.fraction", json!(0.25)),
            ("attach.quota.limit", json!("per-user")),
            ("attach.quota.remaining", json!(0)),
            ("attach.quota.shared", json!(true)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    );

    // What the collector refuses never reaches the file: a span whose trace
    // id is not 32 hex digits is a 400.
    let bad = json!({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "xyz", "spanId": child_id, "name": "bad"}]}]}]});
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/traces", collector.otlp_http_endpoint()))
        .header("content-type", "application/json")
        .body(bad.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(collector.spans().unwrap().len(), 2);
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    let tests = root().join("tests/fixtures/prometheus/alerts.test.yaml");
    let out = promtool_test_rules(&promtool_binary().unwrap(), &[&tests]).unwrap();
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The dashboard's PromQL, as Grafana would send it over the test's span.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_file()).unwrap()).unwrap();
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

    // Every metric the dashboard selects (as the PromQL parser reads the
    // queries) was scraped...
    let mut unscraped = Vec::new();
    for (metric, panel) in dashboard_metrics() {
        let result = prometheus
            .query(&format!("count({{__name__=\"{metric}\"}})"))
            .await
            .unwrap();
        if result.as_array().is_none_or(Vec::is_empty) {
            unscraped.push(format!("{metric} ({panel})"));
        }
    }
    assert!(
        unscraped.is_empty(),
        "dashboard metrics never scraped:\n{}",
        unscraped.join("\n")
    );
    // ...and every panel of the dashboard has data.
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

/// The spans of one trace, by kind.
fn of_trace<'a>(
    spans: &'a [attach_tests::otelcol::Span],
    trace_id: &str,
) -> Vec<&'a attach_tests::otelcol::Span> {
    spans.iter().filter(|s| s.trace_id == trace_id).collect()
}

#[tokio::test]
async fn the_collector_receives_a_requests_trace_from_the_caller_through_the_gateway_to_the_model()
{
    let kc = common::world().keycloak().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&otelcol_binary().unwrap(), dir.path())
        .await
        .unwrap();
    let model = MockModel::start().await.unwrap();
    let mut config = common::gateway_config(&model);
    config.tracing.endpoint = Some(collector.otlp_http_endpoint());
    let gw = GatewayProcess::start(config).await.unwrap();
    let bob = kc.token_for("bob").await.unwrap();

    // The caller's own trace, which the gateway continues.
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let caller_span = format!("{:016x}", rand::random::<u64>() | 1);
    let streamed = json!({"model": "llama3.2:1b", "stream": true,
                          "messages": [{"role": "user", "content": "hi"}]});
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&bob)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap(); // the stream ends: both spans end
    // Two refusals, each a trace of its own with one span.
    assert_eq!(
        send(&gw, Some(&bob), "/api/pull", json!({"model": "x"})).await,
        403
    );
    assert_eq!(send(&gw, None, "/api/chat", streamed.clone()).await, 401);

    let spans = collector
        .wait_for_spans(
            |spans| {
                of_trace(spans, &trace_id).len() >= 2
                    && spans
                        .iter()
                        .filter(|s| s.str_attribute("attach.decision") == Some("deny"))
                        .count()
                        >= 2
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let traced = of_trace(&spans, &trace_id);
    assert_eq!(traced.len(), 2, "{traced:#?}");
    let server = traced.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    let client = traced.iter().find(|s| s.kind == SpanKind::Client).unwrap();
    // caller -> gateway (server) -> gateway (client) -> model.
    assert_eq!(server.parent_span_id.as_deref(), Some(caller_span.as_str()));
    assert_eq!(
        client.parent_span_id.as_deref(),
        Some(server.span_id.as_str())
    );
    let seen = model.last().await.unwrap();
    assert_eq!(
        seen.headers["traceparent"],
        format!("00-{trace_id}-{}-01", client.span_id).as_str(),
        "the model was told the gateway's client span is its parent"
    );
    for span in [server, client] {
        assert_eq!(span.service_name, "attach-gateway");
        assert!(span.start_time_unix_nano > 0);
    }
    assert!(client.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);

    // What the audit line says, the server span says.
    let user = seen.headers["x-attach-user"].to_str().unwrap();
    assert_eq!(server.str_attribute("user.id"), Some(user));
    assert_eq!(server.str_attribute("attach.decision"), Some("allow"));
    assert_eq!(server.str_attribute("attach.reason"), Some("forwarded"));
    assert_eq!(
        server.str_attribute("gen_ai.request.model"),
        Some("llama3.2:1b")
    );
    assert_eq!(server.int_attribute("http.response.status_code"), Some(200));
    let output = server.int_attribute("gen_ai.usage.output_tokens").unwrap();
    assert!(output > 0, "{server:#?}");
    assert_eq!(
        client.int_attribute("gen_ai.usage.output_tokens"),
        Some(output)
    );
    assert_eq!(client.name, "chat llama3.2:1b");
    assert_eq!(client.str_attribute("gen_ai.operation.name"), Some("chat"));
    assert_eq!(client.str_attribute("gen_ai.provider.name"), Some("ollama"));

    // The refusals: one server span each, no client span, the reason named.
    let denied: Vec<_> = spans
        .iter()
        .filter(|s| s.str_attribute("attach.decision") == Some("deny"))
        .collect();
    assert_eq!(denied.len(), 2, "{denied:#?}");
    for span in &denied {
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.parent_span_id, None);
        assert_eq!(of_trace(&spans, &span.trace_id).len(), 1, "{span:#?}");
        assert!(span.str_attribute("attach.reason").is_some());
    }
    let unauthenticated = denied
        .iter()
        .find(|s| s.int_attribute("http.response.status_code") == Some(401))
        .unwrap();
    assert_eq!(unauthenticated.str_attribute("user.id"), None);
    let forbidden = denied
        .iter()
        .find(|s| s.int_attribute("http.response.status_code") == Some(403))
        .unwrap();
    assert_eq!(forbidden.str_attribute("user.id"), Some(user));
    let reached: Vec<String> = model.seen().await.into_iter().map(|r| r.path).collect();
    assert!(
        !reached.iter().any(|p| p == "/api/pull" || p == "/api/chat"),
        "the refusals never reached the model: {reached:?}"
    );
}
