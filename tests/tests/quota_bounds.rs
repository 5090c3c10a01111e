#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! Quotas under abuse, through the real gateway binary with real Keycloak
//! tokens, on a real Redis (single server and a three-master cluster) and
//! in memory: every way a request ends frees its slot and reservation; a
//! killed gateway's slots come back after one lease time; 40 concurrent
//! streams cannot outrun one token budget; Redis out of memory and too many
//! model names are reported as such; a master killed mid-test follows
//! `failMode`. Quota clocks are frozen (`ATTACH_TEST_CLOCK`), so no test
//! depends on the wall-clock minute.

mod common;

use std::time::Duration;

use attach_sidecar::config::GatewayConfig;
use attach_sidecar::quota::QuotaLimit;
use attach_sidecar::quota::store::{FailMode, StoreConfig};
use attach_tests::gateway::{GatewayProcess, metric_sum};
use attach_tests::mock_model::MockModel;
use attach_tests::redis_cluster::RedisCluster;
use attach_tests::redis_server::RedisServer;
use attach_tests::tools::Tools;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};

fn prefix() -> String {
    format!("t{:08x}:", rand::random::<u32>())
}

fn with_store(config: &mut GatewayConfig, url: &str, prefix: &str, mode: FailMode) {
    config.quotas.store = StoreConfig::Redis {
        url: url.to_owned(),
        url_file: None,
        fail_mode: mode,
        key_prefix: prefix.to_owned(),
    };
}

async fn own_redis(extra: &[&str]) -> (RedisServer, tempfile::TempDir) {
    let tools = Tools::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = attach_tests::ports::free_port().unwrap();
    (
        RedisServer::start_with(&tools.redis_server, dir.path(), port, extra)
            .await
            .unwrap(),
        dir,
    )
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Leases held in Redis under `prefix` (0 when nothing leaked).
async fn leases(url: &str, prefix: &str) -> u64 {
    let mut conn = redis_conn(url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}*:l"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut total = 0;
    for key in keys {
        let n: u64 = redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        total += n;
    }
    total
}

fn chat_body(content_len: usize, num_predict: Option<u64>) -> Value {
    let mut body = json!({"model": "llama3.2:1b", "messages": [
        {"role": "user", "content": "x".repeat(content_len)}
    ]});
    if let Some(n) = num_predict {
        body["options"] = json!({"num_predict": n});
    }
    body
}

async fn admissions_in_flight(gw: &GatewayProcess) -> f64 {
    metric_sum(
        &gw.metrics().await.unwrap(),
        "attach_quota_admissions_in_flight",
    )
}

/// Waits until the gateway holds no admission and Redis (if any) no lease.
async fn nothing_held(gw: &GatewayProcess, redis: Option<(&str, &str)>) {
    for _ in 0..150 {
        let local = admissions_in_flight(gw).await;
        let in_flight = metric_sum(&gw.metrics().await.unwrap(), "attach_in_flight_requests");
        let remote = match redis {
            Some((url, prefix)) => leases(url, prefix).await,
            None => 0,
        };
        if local == 0.0 && in_flight == 0.0 && remote == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "leaked: admissions {}, leases {:?}",
        admissions_in_flight(gw).await,
        match redis {
            Some((url, prefix)) => Some(leases(url, prefix).await),
            None => None,
        }
    );
}

async fn post(
    gw: &GatewayProcess,
    token: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/chat", gw.url))
        .bearer_auth(token)
        .json(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

/// Every way a request ends, on a store: the slot (concurrent: 1) and the
/// reservation come back each time.
async fn every_path_releases(redis: Option<&str>) {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let model = MockModel::start().await.unwrap();
    let prefix = prefix();
    let mut config = common::gateway_config(&model);
    config.upstream.response_header_timeout = Duration::from_millis(500);
    config.quotas.limits = vec![QuotaLimit {
        concurrent: Some(1),
        tokens_per_minute: Some(1_000_000),
        ..QuotaLimit::named("per-user")
    }];
    if let Some(url) = redis {
        with_store(&mut config, url, &prefix, FailMode::Closed);
    }
    let gw = GatewayProcess::start(config).await.unwrap();
    let redis = redis.map(|url| (url, prefix.as_str()));
    let body = chat_body(10, None);

    // The client leaves before the response headers.
    let pending = tokio::spawn({
        let (url, bob, body) = (gw.url.clone(), bob.clone(), body.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{url}/api/chat"))
                .bearer_auth(bob)
                .header("x-mock-header-delay-ms", "3000")
                .json(&body)
                .send()
                .await
        }
    });
    for _ in 0..100 {
        if model.request_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(admissions_in_flight(&gw).await, 1.0);
    pending.abort();
    nothing_held(&gw, redis).await;

    // The client leaves mid-stream.
    let mut response = post(&gw, &bob, &body, &[("x-mock-hold", "1")]).await;
    response.chunk().await.unwrap().unwrap();
    assert_eq!(post(&gw, &bob, &body, &[]).await.status(), 429);
    drop(response);
    // The slot is held until the model's answer ends (its usage is charged).
    model.release();
    nothing_held(&gw, redis).await;

    // HTTP/2 RST_STREAM, before and after the headers.
    let stream = tokio::net::TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let h2 = |header: &str, value: &str| {
        http::Request::post(format!("{}/api/chat", gw.url))
            .header("authorization", format!("Bearer {bob}"))
            .header(header, value)
            .body(http_body_util::Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        send.send_request(h2("x-mock-header-delay-ms", "2000")),
    )
    .await;
    nothing_held(&gw, redis).await;
    send.ready().await.unwrap();
    let response = send.send_request(h2("x-mock-hold", "1")).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut h2_body = response.into_body();
    h2_body.frame().await.unwrap().unwrap();
    drop(h2_body);
    // As above: held until the model's answer ends.
    model.release();
    nothing_held(&gw, redis).await;

    // The model does not answer in time (504).
    let r = post(&gw, &bob, &body, &[("x-mock-header-delay-ms", "2000")]).await;
    assert_eq!(r.status(), 504);
    nothing_held(&gw, redis).await;

    // And an answer that ends normally.
    let r = post(&gw, &bob, &body, &[]).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    nothing_held(&gw, redis).await;
}

#[tokio::test]
async fn every_way_a_request_ends_frees_its_slot_in_memory() {
    every_path_releases(None).await;
}

#[tokio::test]
async fn every_way_a_request_ends_frees_its_slot_on_redis() {
    let (redis, _dir) = own_redis(&[]).await;
    every_path_releases(Some(&redis.url())).await;
}

#[tokio::test]
async fn a_killed_gateways_slots_come_back_after_one_lease_time_and_long_streams_renew() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let (redis, _dir) = own_redis(&[]).await;
    let model = MockModel::start().await.unwrap();
    let prefix = prefix();
    let mut config = common::gateway_config(&model);
    config.quotas.limits = vec![QuotaLimit {
        concurrent: Some(1),
        ..QuotaLimit::named("per-user")
    }];
    config.quotas.lease_ttl = Duration::from_secs(3);
    with_store(&mut config, &redis.url(), &prefix, FailMode::Closed);
    let mut doomed = GatewayProcess::start(config.clone()).await.unwrap();
    let survivor = GatewayProcess::start(config).await.unwrap();
    let body = chat_body(10, None);

    let mut stream = post(&doomed, &bob, &body, &[("x-mock-hold", "1")]).await;
    stream.chunk().await.unwrap().unwrap();
    assert_eq!(post(&survivor, &bob, &body, &[]).await.status(), 429);
    // Time passes beyond the lease time: the running stream renews its
    // lease (every third of it), so its slot stays taken.
    doomed.advance_clock(10).await.unwrap();
    survivor.advance_clock(10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = post(&survivor, &bob, &body, &[]).await;
    assert_eq!(r.status(), 429, "the renewed lease still counts");
    assert_eq!(r.json::<Value>().await.unwrap()["kind"], "concurrent");
    // The gateway dies mid-stream: nothing settles its lease...
    doomed.kill();
    assert_eq!(post(&survivor, &bob, &body, &[]).await.status(), 429);
    assert_eq!(leases(&redis.url(), &prefix).await, 1);
    // ...until its deadline passes: then the slot is free again.
    survivor.advance_clock(4).await.unwrap();
    let r = post(&survivor, &bob, &body, &[]).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    nothing_held(&survivor, Some((&redis.url(), &prefix))).await;
    drop(stream);
}

/// 40 streams at once against one 100-token budget; returns (admitted,
/// charged tokens, the reservation each made).
async fn forty_streams(
    gw: &GatewayProcess,
    model: &MockModel,
    bob: &str,
    body: &Value,
) -> (u64, u64) {
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (url, bob, body) = (gw.url.clone(), bob.to_owned(), body.clone());
            tokio::spawn(async move {
                let mut r = reqwest::Client::new()
                    .post(format!("{url}/api/chat"))
                    .bearer_auth(bob)
                    .header("x-mock-hold", "1")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    r.chunk().await.unwrap();
                }
                r
            })
        })
        .collect();
    let mut responses = Vec::new();
    for t in tasks {
        responses.push(t.await.unwrap());
    }
    // A held stream waits for the release only once it sent its first
    // chunk: keep releasing until every answer has ended.
    let releasing = async {
        loop {
            model.release();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut admitted = 0;
    let read_all = async {
        for r in responses {
            match r.status().as_u16() {
                200 => {
                    admitted += 1;
                    r.bytes().await.unwrap();
                }
                429 => {}
                other => panic!("unexpected {other}"),
            }
        }
    };
    tokio::select! {
        () = read_all => {}
        () = releasing => unreachable!(),
    }
    // The last answers' charges settle as their bodies end.
    let mut charged = 0.0;
    for _ in 0..100 {
        charged = metric_sum(&gw.metrics().await.unwrap(), "attach_tokens_total{");
        if charged >= admitted as f64 * 14.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (admitted, charged as u64)
}

/// The mock reports 11 prompt tokens and 3 completion tokens: 14 per answer.
async fn forty_streams_cannot_outrun_one_budget(redis: Option<&str>) {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    const LIMIT: u64 = 100;
    for (num_predict, reservation) in [(Some(3), 17), (None, 14 + 1024)] {
        let model = MockModel::start().await.unwrap();
        let prefix = prefix();
        let mut config = common::gateway_config(&model);
        config.quotas.limits = vec![QuotaLimit {
            tokens_per_minute: Some(LIMIT),
            ..QuotaLimit::named("per-user")
        }];
        if let Some(url) = redis {
            with_store(&mut config, url, &prefix, FailMode::Closed);
        }
        let gw = GatewayProcess::start(config).await.unwrap();
        // 30 bytes of prompt: an estimate of 10 + 4 for the message.
        let body = chat_body(30, num_predict);
        let (admitted, charged) = forty_streams(&gw, &model, &bob, &body).await;
        assert!(admitted >= 1);
        assert_eq!(charged, admitted * 14, "every admitted answer charged");
        assert!(
            charged <= LIMIT + reservation,
            "overshoot past one reservation: {charged} tokens charged of {LIMIT} ({admitted} admitted)"
        );
        println!(
            "store {}: num_predict {num_predict:?}, reservation {reservation}: {admitted} of 40 admitted, {charged} of {LIMIT} tokens charged, overshoot {}",
            if redis.is_some() { "redis" } else { "memory" },
            charged.saturating_sub(LIMIT)
        );
        if let Some(url) = redis {
            nothing_held(&gw, Some((url, &prefix))).await;
        }
    }
}

#[tokio::test]
async fn forty_concurrent_streams_cannot_outrun_one_token_budget_in_memory() {
    forty_streams_cannot_outrun_one_budget(None).await;
}

#[tokio::test]
async fn forty_concurrent_streams_cannot_outrun_one_token_budget_on_redis() {
    let (redis, _dir) = own_redis(&[]).await;
    forty_streams_cannot_outrun_one_budget(Some(&redis.url())).await;
}

#[tokio::test]
async fn redis_out_of_memory_is_reported_as_such_and_model_names_are_bounded_per_owner() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let (redis, _dir) = own_redis(&[]).await;
    let model = MockModel::start().await.unwrap();
    let prefix = prefix();
    let mut config = common::gateway_config(&model);
    config.quotas.limits = vec![QuotaLimit {
        models: vec!["*".into()],
        requests_per_minute: Some(1000),
        ..QuotaLimit::named("per-model")
    }];
    config.quotas.max_models_per_owner = 3;
    // Budgets are per served model (other names share `(unlisted)`), so the
    // backend serves four: the fourth is one too many for one owner.
    config.upstream.served_models = (0..4).map(|i| format!("m{i}:1b")).collect();
    with_store(&mut config, &redis.url(), &prefix, FailMode::Closed);
    let gw = GatewayProcess::start(config).await.unwrap();
    let named = |name: &str| json!({"model": name, "stream": false, "messages": []});
    for i in 0..3 {
        let r = post(&gw, &bob, &named(&format!("m{i}:1b")), &[]).await;
        assert_eq!(r.status(), 200, "model {i}");
    }
    let r = post(&gw, &bob, &named("m0:1b"), &[]).await;
    assert_eq!(r.status(), 200, "a known model is fine");
    let r = post(&gw, &bob, &named("m3:1b"), &[]).await;
    assert_eq!(r.status(), 429, "a fourth distinct model is refused");
    assert_eq!(r.json::<Value>().await.unwrap()["kind"], "distinct_models");

    // Redis at maxmemory refuses writes: 503, and the log and metric say why.
    let mut conn = redis_conn(&redis.url()).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = post(&gw, &bob, &named("m1:1b"), &[]).await;
    assert_eq!(r.status(), 503);
    let metrics = gw.metrics().await.unwrap();
    assert!(
        metric_sum(
            &metrics,
            "attach_quota_store_errors_total{kind=\"out_of_memory\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(gw.log().contains("out of memory"), "{}", gw.log());
}

fn cluster_config(model: &MockModel, url: &str, prefix: &str, mode: FailMode) -> GatewayConfig {
    let mut config = common::gateway_config(model);
    config.quotas.limits = vec![QuotaLimit {
        requests_per_minute: Some(30),
        ..QuotaLimit::named("per-user")
    }];
    with_store(&mut config, url, prefix, mode);
    config
}

#[tokio::test]
async fn quotas_hold_on_a_redis_cluster_and_a_killed_master_follows_fail_mode() {
    let kc = common::world().keycloak().unwrap();
    let bob = kc.token_for("bob").await.unwrap();
    let tools = Tools::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = RedisCluster::start(&tools.redis_server, &tools.redis_cli, dir.path())
        .await
        .unwrap();
    let model = MockModel::start().await.unwrap();
    let prefix = prefix();
    // Three gateways, each told a different node: one limit between them.
    let urls = cluster.urls();
    let mut gateways = Vec::new();
    for url in &urls {
        gateways.push(
            GatewayProcess::start(cluster_config(&model, url, &prefix, FailMode::Closed))
                .await
                .unwrap(),
        );
    }
    let open = GatewayProcess::start(cluster_config(&model, &urls[0], &prefix, FailMode::Open))
        .await
        .unwrap();
    let body = chat_body(10, None);
    let mut statuses = Vec::new();
    let tasks: Vec<_> = (0..45)
        .map(|i| {
            let (url, bob, body) = (gateways[i % 3].url.clone(), bob.clone(), body.clone());
            tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(format!("{url}/api/chat"))
                    .bearer_auth(bob)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                status
            })
        })
        .collect();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        admitted, 30,
        "exactly the limit across the cluster: {statuses:?}"
    );
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
    for gw in &gateways {
        nothing_held(gw, None).await;
    }
    let tag = format!("{{{prefix}}}");
    let owner = cluster.master_of(&tag).unwrap();
    assert!(cluster.kill(owner), "the master serving the budget's slot");
    // Fail closed: 503 with Retry-After; fail open: the local limit.
    let r = post(&gateways[0], &bob, &body, &[]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    // 31 at once: the fresh local copy of the limit admits exactly 30.
    let tasks: Vec<_> = (0..31)
        .map(|_| {
            let (url, bob, body) = (open.url.clone(), bob.clone(), body.clone());
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(format!("{url}/api/chat"))
                    .bearer_auth(bob)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut local = Vec::new();
    for t in tasks {
        local.push(t.await.unwrap());
    }
    assert_eq!(
        local.iter().filter(|s| **s == 200).count(),
        30,
        "fail open admits against a local limit that limits: {local:?}"
    );
    assert_eq!(local.iter().filter(|s| **s == 429).count(), 1);
    for gw in [&gateways[0], &open] {
        let metrics = gw.metrics().await.unwrap();
        assert!(
            metric_sum(&metrics, "attach_quota_store_errors_total") >= 1.0,
            "{metrics}"
        );
    }
}
