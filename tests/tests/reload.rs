#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Config reloads with the real gateway binary and real Keycloak tokens: a
//! file written in two steps is never applied half-written (and half a file
//! is never more permissive than the whole); a reload rebuilds the quota
//! store and the audit sink it names and keeps what did not change; what
//! needs a restart is said by `/readyz` and a metric.

mod common;

use std::io::Write;
use std::time::Duration;

use attach_sidecar::config::GatewayConfig;
use attach_sidecar::policy::{EndpointClass, Rule, Subjects};
use attach_sidecar::quota::QuotaLimit;
use attach_sidecar::quota::store::{FailMode, StoreConfig};
use attach_tests::gateway::{GatewayProcess, metric_sum};
use attach_tests::mock_model::MockModel;
use attach_tests::redis_server::RedisServer;
use attach_tests::tools::Tools;
use serde_json::json;

async fn status(gw: &GatewayProcess, token: &str, model: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/api/chat", gw.url))
        .bearer_auth(token)
        .json(&json!({"model": model, "stream": false, "messages": []}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn staff_may_use(models: &[&str]) -> Vec<Rule> {
    vec![Rule::new(
        "staff",
        Subjects::groups(&["staff"]),
        models,
        &[EndpointClass::Inference],
    )]
}

/// Polls until `status` of bob using `model` is `want`.
async fn until_status(gw: &GatewayProcess, token: &str, model: &str, want: u16) {
    let mut last = 0;
    for _ in 0..100 {
        last = status(gw, token, model).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{model}: still {last}, expected {want}; the gateway logged:\n{}",
        gw.log()
    );
}

#[tokio::test]
async fn a_config_written_in_two_steps_is_never_applied_half_written() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let model = MockModel::start().await.unwrap();
    let mut config = common::gateway_config(&model);
    config.reload_interval = Duration::from_millis(100);
    config.access.rules = staff_may_use(&["*:1b"]);
    let gw = GatewayProcess::start(config.clone()).await.unwrap();
    assert_eq!(status(&gw, &bob, "llama3.1:70b").await, 403);

    // The whole new file allows 70b models too; the writer truncates the
    // file, writes up to the `access` section, pauses, then the rest.
    config.access.rules = staff_may_use(&["*:1b", "*:70b"]);
    config.quotas.limits = vec![QuotaLimit {
        requests_per_minute: Some(1000),
        ..QuotaLimit::named("per-user")
    }];
    let text = serde_yaml::to_string(&config).unwrap();
    let cut = text.find("\naccess:").unwrap() + 1;
    GatewayConfig::parse(&text[..cut]).expect("the first half alone is a valid config");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(gw.config_path())
        .unwrap();
    file.write_all(&text.as_bytes()[..cut]).unwrap();
    file.flush().unwrap();
    // Many reload intervals pass while the file is half-written.
    for _ in 0..10 {
        assert_eq!(
            status(&gw, &bob, "llama3.1:70b").await,
            403,
            "half a file is never more permissive than the whole"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    file.write_all(&text.as_bytes()[cut..]).unwrap();
    file.flush().unwrap();
    drop(file);
    until_status(&gw, &bob, "llama3.1:70b", 200).await;
    assert_eq!(status(&gw, &bob, "llama3.2:1b").await, 200);
}

#[tokio::test]
async fn a_reload_rebuilds_the_quota_store_and_audit_sink_and_keeps_what_did_not_change() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let model = MockModel::start().await.unwrap();
    let tools = Tools::locate().unwrap();
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(&tools.redis_server, redis_dir.path())
        .await
        .unwrap();
    let audit_dir = tempfile::tempdir().unwrap();
    let first_audit = audit_dir.path().join("first.jsonl");
    let second_audit = audit_dir.path().join("second.jsonl");

    let mut config = common::gateway_config(&model);
    config.reload_interval = Duration::from_millis(100);
    config.audit.path = Some(first_audit.clone());
    config.access.rules = staff_may_use(&["*:1b"]);
    config.quotas.limits = vec![QuotaLimit {
        requests_per_minute: Some(2),
        ..QuotaLimit::named("per-user")
    }];
    let mut gw = GatewayProcess::start(config.clone()).await.unwrap();
    // The addresses the harness bound, so that later files name them.
    let port_of = |url: &str| url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    config.listen.address = [127, 0, 0, 1].into();
    config.listen.port = port_of(&gw.url);
    config.admin.address = [127, 0, 0, 1].into();
    config.admin.port = port_of(&gw.admin_url);
    let small = "llama3.2:1b";
    assert_eq!(status(&gw, &bob, small).await, 200);
    assert_eq!(status(&gw, &bob, small).await, 200);
    assert_eq!(status(&gw, &bob, small).await, 429);
    assert_eq!(status(&gw, &bob, "llama3.1:70b").await, 403);

    // A reload that leaves the store alone keeps the in-memory budgets,
    // maxKeys included (resized in place).
    config.access.rules = staff_may_use(&["*"]);
    config.quotas.max_keys = 5000;
    gw.write_config(&config).unwrap();
    // 70b is allowed now, and bob's spent budget survived the reload.
    until_status(&gw, &bob, "llama3.1:70b", 429).await;

    // Switching to Redis takes effect (a fresh shared budget).
    let prefix = format!("t{:08x}:", rand::random::<u32>());
    config.quotas.store = StoreConfig::Redis {
        url: redis.url(),
        url_file: None,
        fail_mode: FailMode::Closed,
        key_prefix: prefix.clone(),
    };
    config.audit.path = Some(second_audit.clone());
    gw.write_config(&config).unwrap();
    until_status(&gw, &bob, small, 200).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "the budget lives in Redis now");

    // The new audit sink gets the new lines.
    let mut moved = false;
    for _ in 0..100 {
        if std::fs::read_to_string(&second_audit).is_ok_and(|t| t.contains("\"status\":200")) {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(moved, "audit lines go to the reloaded path");

    // failMode changes without a restart: closed, then open.
    redis.stop();
    until_status(&gw, &bob, small, 503).await;
    if let StoreConfig::Redis { fail_mode, .. } = &mut config.quotas.store {
        *fail_mode = FailMode::Open;
    }
    gw.write_config(&config).unwrap();
    // Fail open admits against the local in-memory budgets, where bob's
    // minute is still spent from before the switch (429, not 503)...
    until_status(&gw, &bob, small, 429).await;
    // ...until the next minute.
    gw.advance_clock(60).await.unwrap();
    until_status(&gw, &bob, small, 200).await;

    assert_eq!(gw.readyz().await.unwrap()["restartRequired"], json!([]));
    // A new listen port and new trace settings need a restart: said, not
    // silently ignored.
    let mut moved_listen = config.clone();
    moved_listen.listen.port = attach_tests::ports::free_port().unwrap();
    moved_listen.tracing.endpoint = Some("http://127.0.0.1:4318".into());
    gw.write_config(&moved_listen).unwrap();
    let mut said = false;
    for _ in 0..100 {
        let ready = gw.readyz().await.unwrap();
        if ready["restartRequired"] == json!(["listen", "tracing"]) {
            said = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(said, "{}", gw.readyz().await.unwrap());
    let metrics = gw.metrics().await.unwrap();
    for setting in ["listen", "tracing"] {
        assert_eq!(
            metric_sum(
                &metrics,
                &format!("attach_config_restart_required{{setting=\"{setting}\"}}")
            ),
            1.0,
            "{metrics}"
        );
    }
    gw.stop(Duration::from_secs(5));
}
