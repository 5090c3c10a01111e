#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Quotas shared through a real Redis by several gateway processes, and what
//! happens when Redis goes away and comes back. Every gateway's quota clock
//! is frozen at the same instant (`attach_tests::gateway::TEST_CLOCK`), so
//! no count can straddle a minute or a UTC midnight.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use attach_sidecar::config::GatewayConfig;
use attach_sidecar::quota::QuotaLimit;
use attach_sidecar::quota::store::{FailMode, StoreConfig};
use attach_tests::gateway::{GatewayProcess, metric_sum};
use attach_tests::mock_model::MockModel;
use attach_tests::redis_server::RedisServer;
use attach_tests::tools::Tools;
use serde_json::json;

fn config(
    model: &MockModel,
    redis: &RedisServer,
    prefix: &str,
    limit: QuotaLimit,
    mode: FailMode,
) -> GatewayConfig {
    let mut config = common::gateway_config(model);
    config.quotas.limits = vec![limit];
    config.quotas.store = StoreConfig::Redis {
        url: redis.url(),
        url_file: None,
        fail_mode: mode,
        key_prefix: prefix.into(),
    };
    config
}

async fn own_redis() -> (RedisServer, tempfile::TempDir) {
    let tools = Tools::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    (
        RedisServer::start(&tools.redis_server, dir.path())
            .await
            .unwrap(),
        dir,
    )
}

fn chat() -> serde_json::Value {
    json!({"model": "llama3.2:1b", "stream": false, "messages": []})
}

#[tokio::test]
async fn three_gateways_share_one_limit_under_concurrent_load() {
    let kc = common::world().keycloak().unwrap();
    let (redis, _dir) = own_redis().await;
    let model = MockModel::start().await.unwrap();
    let prefix = format!("t{:08x}:", rand::random::<u32>());
    const LIMIT: u64 = 30;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        let cfg = config(
            &model,
            &redis,
            &prefix,
            QuotaLimit {
                requests_per_minute: Some(LIMIT),
                ..QuotaLimit::named("per-user")
            },
            FailMode::Closed,
        );
        gateways.push(GatewayProcess::start(cfg).await.unwrap());
    }
    let bob = kc.token_for("bob").await.unwrap();
    let admitted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let url = gateways[i % 3].url.clone();
            let (bob, admitted, refused) = (bob.clone(), admitted.clone(), refused.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for _ in 0..10 {
                    let r = http
                        .post(format!("{url}/api/chat"))
                        .bearer_auth(&bob)
                        .json(&chat())
                        .send()
                        .await
                        .unwrap();
                    match r.status().as_u16() {
                        200 => admitted.fetch_add(1, Ordering::SeqCst),
                        429 => refused.fetch_add(1, Ordering::SeqCst),
                        other => panic!("unexpected {other}"),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        admitted.load(Ordering::SeqCst) as u64,
        LIMIT,
        "exactly the limit, across processes"
    );
    assert_eq!(refused.load(Ordering::SeqCst) as u64, 120 - LIMIT);
    assert_eq!(model.request_count() as u64, LIMIT);
}

#[tokio::test]
async fn tokens_charged_on_one_gateway_count_on_the_others() {
    let kc = common::world().keycloak().unwrap();
    let (redis, _dir) = own_redis().await;
    let model = MockModel::start().await.unwrap();
    let prefix = format!("t{:08x}:", rand::random::<u32>());
    // Three answers of 14 tokens: the fourth request is refused, wherever it lands.
    let per_day = QuotaLimit {
        tokens_per_day: Some(3 * 14),
        ..QuotaLimit::named("per-user")
    };
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(
            GatewayProcess::start(config(
                &model,
                &redis,
                &prefix,
                per_day.clone(),
                FailMode::Closed,
            ))
            .await
            .unwrap(),
        );
    }
    let bob = kc.token_for("bob").await.unwrap();
    let http = reqwest::Client::new();
    for (i, gw) in gateways.iter().enumerate() {
        // Each answer's charge settles in Redis a moment after it ends;
        // until then its reservation holds the budget (429 Retry-After: 1).
        let mut status = 0;
        for _ in 0..100 {
            let r = http
                .post(format!("{}/api/chat", gw.url))
                .bearer_auth(&bob)
                .json(&chat())
                .send()
                .await
                .unwrap();
            status = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            r.bytes().await.unwrap();
            if status != 429 {
                break;
            }
            assert_eq!(retry.unwrap(), "1", "only the reservation waits");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, 200, "request {i}");
    }
    // Charging happens as each answer ends, asynchronously: wait until Redis
    // holds all three charges before the fourth request.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pattern = format!("{{{prefix}}}*:d:*");
    let mut charged = 0;
    for _ in 0..100 {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(key) = keys.first() {
            charged = redis::cmd("GET")
                .arg(key)
                .query_async::<Option<u64>>(&mut conn)
                .await
                .unwrap()
                .unwrap_or(0);
        }
        if charged == 3 * 14 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(charged, 3 * 14, "the three answers' tokens are in Redis");
    let r = http
        .post(format!("{}/api/chat", gateways[0].url))
        .bearer_auth(&bob)
        .json(&chat())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["kind"],
        "tokens_per_day"
    );
    assert_eq!(status, 429);
}

#[tokio::test]
async fn when_redis_dies_fail_closed_refuses_fail_open_serves_and_both_recover() {
    let kc = common::world().keycloak().unwrap();
    let (mut redis, _dir) = own_redis().await;
    let model = MockModel::start().await.unwrap();
    let prefix = format!("t{:08x}:", rand::random::<u32>());
    // Small enough that a fail-open path admitting everything is caught.
    let generous = QuotaLimit {
        requests_per_minute: Some(3),
        ..QuotaLimit::named("per-user")
    };
    let closed = GatewayProcess::start(config(
        &model,
        &redis,
        &prefix,
        generous.clone(),
        FailMode::Closed,
    ))
    .await
    .unwrap();
    let open = GatewayProcess::start(config(&model, &redis, &prefix, generous, FailMode::Open))
        .await
        .unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let http = reqwest::Client::new();
    let status = |url: String| {
        let (http, bob) = (http.clone(), bob.clone());
        async move {
            http.post(format!("{url}/api/chat"))
                .bearer_auth(&bob)
                .json(&chat())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(closed.url.clone()).await, 200);
    assert_eq!(status(open.url.clone()).await, 200);

    redis.stop();
    let r = http
        .post(format!("{}/api/chat", closed.url))
        .bearer_auth(&bob)
        .json(&chat())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "fail closed");
    assert_eq!(r.headers()["retry-after"], "1");
    let mut local = Vec::new();
    for _ in 0..4 {
        local.push(status(open.url.clone()).await);
    }
    assert_eq!(
        local,
        [200, 200, 200, 429],
        "fail open: a local copy of the limit admits, and limits"
    );
    for gw in [&closed, &open] {
        let metrics = gw.metrics().await.unwrap();
        assert!(
            metric_sum(&metrics, "attach_quota_store_errors_total") >= 1.0,
            "{metrics}"
        );
        assert!(
            metrics.contains("attach_quota_store_up{store=\"redis\"} 0"),
            "{metrics}"
        );
    }
    // Only the fail-open gateway let requests through without Redis: the
    // three it admitted locally (the 429 was refused by the local copy).
    let admitted_open = |m: &str| metric_sum(m, "attach_quota_fail_open_admissions_total");
    assert_eq!(admitted_open(&open.metrics().await.unwrap()), 3.0);
    assert_eq!(admitted_open(&closed.metrics().await.unwrap()), 0.0);
    assert!(
        closed
            .log()
            .contains("the shared quota store (Redis) is unreachable")
    );

    redis.restart().await.unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        if status(closed.url.clone()).await == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the fail-closed gateway came back without a restart"
    );
    assert_eq!(status(open.url.clone()).await, 200);
    for gw in [&closed, &open] {
        let metrics = gw.metrics().await.unwrap();
        assert!(
            metrics.contains("attach_quota_store_up{store=\"redis\"} 1"),
            "{metrics}"
        );
    }
}
