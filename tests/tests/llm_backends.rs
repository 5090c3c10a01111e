#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The LLMBackend controller, as the operator process, on the real API
//! server, controller manager and Keycloak: the rendered ConfigMap is the
//! gateway's config, changes re-render it, missing references fail closed,
//! conflicts keep the earlier backend, deletion garbage-collects, and of two
//! operator replicas only the leader reconciles.

mod common;

use std::time::Duration;

use attach_operator::crd::{IdentityProvider, LLMBackend};
use attach_sidecar::config::GatewayConfig;
use attach_sidecar::quota::store::StoreConfig;
use attach_tests::gateway::metric_sum;
use attach_tests::keycloak::{AUDIENCE, REALM};
use attach_tests::operator::OperatorProcess;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

fn lease(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

async fn create_idp(client: &Client, ns: &str) {
    let kc = common::world().keycloak().unwrap();
    let idp: IdentityProvider = serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "IdentityProvider",
        "metadata": {"name": "keycloak"},
        "spec": {"issuer": kc.issuer(REALM), "insecure": true, "audiences": [AUDIENCE],
                 "preset": "keycloak", "algorithms": ["RS256"]},
    }))
    .unwrap();
    Api::<IdentityProvider>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &idp)
        .await
        .unwrap();
}

async fn create_redis_secret(client: &Client, ns: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "redis"},
        "stringData": {"url": common::world().redis_url().unwrap()},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

fn backend(name: &str, app: &str, extra: serde_json::Value) -> LLMBackend {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": app}},
        "engine": "ollama",
        "port": 11434,
        "identityProviderRefs": [{"name": "keycloak"}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

async fn create_pod(client: &Client, ns: &str, name: &str, app: &str, injected_by: Option<&str>) {
    let annotations = injected_by.map_or_else(|| json!({}), |b| json!({"attach.dev/backend": b}));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}, "annotations": annotations},
        "spec": {"containers": [{"name": "ollama", "image": "ollama/ollama",
                                 "ports": [{"containerPort": 11434, "name": "http"}]}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

/// The ConfigMap's config, loaded the way the gateway loads it: from files,
/// with the owned Secret mounted beside it.
fn load_rendered(config_map: &ConfigMap, secret: &Secret) -> GatewayConfig {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for (key, value) in secret.data.clone().unwrap_or_default() {
        std::fs::write(secrets.join(key), value.0).unwrap();
    }
    let text = config_map.data.as_ref().unwrap()["gateway.yaml"]
        .replace("/etc/attach/secrets", &secrets.display().to_string());
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, text).unwrap();
    GatewayConfig::load(&path).unwrap()
}

fn hash_of(config_map: &ConfigMap) -> String {
    config_map.annotations()["attach.dev/config-hash"].clone()
}

fn status_hash(backend: &LLMBackend) -> Option<String> {
    backend.status.as_ref().and_then(|s| s.config_hash.clone())
}

#[tokio::test]
async fn a_backend_is_rendered_re_rendered_failed_closed_and_collected() {
    let world = common::world();
    common::install_crds();
    let _operator = OperatorProcess::start(world, &lease("render"), "render", &[])
        .await
        .unwrap();
    let ns = world.namespace("llmb").await.unwrap();
    let client = world.client().await.unwrap();
    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    create_idp(&client, &ns).await;
    create_redis_secret(&client, &ns).await;
    create_pod(&client, &ns, "ollama-0", "ollama", Some("chat")).await;
    create_pod(&client, &ns, "ollama-1", "ollama", None).await;
    create_pod(&client, &ns, "vllm-0", "vllm", None).await;
    let chat = backend(
        "chat",
        "ollama",
        json!({
            "access": {"rules": [
                {"name": "power-users", "subjects": {"groups": ["ai-power-users"]}, "endpoints": ["inference", "read"]},
                {"name": "staff-small", "subjects": {"groups": ["staff"]}, "models": ["*:1b"], "endpoints": ["inference"]},
            ]},
            "quotas": [{"name": "per-user", "tokensPerMinute": 20000},
                       {"name": "staff-pool", "per": "group", "subjects": {"groups": ["staff"]}, "concurrent": 4}],
            "quotaStore": {"type": "redis", "urlSecretRef": {"name": "redis", "key": "url"}},
            "unauthenticatedPaths": ["/"],
        }),
    );
    backends
        .create(&PostParams::default(), &chat)
        .await
        .unwrap();

    // Ready, with the IdP's keys discovered and the pods counted.
    let ready = common::wait_ready(&backends, "chat", "True").await;
    let status = ready.status.clone().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.matched_pods, Some(2), "vllm-0 is not selected");
    assert_eq!(status.injected_pods, Some(1));
    let resolved = common::condition(&ready, "IdentityProvidersResolved").unwrap();
    assert_eq!(resolved["status"], "True");
    assert_eq!(
        common::condition(&ready, "ConfigRendered").unwrap()["reason"],
        "Rendered"
    );

    // The ConfigMap is the gateway's config, with the expected content.
    let cm = config_maps.get("chat-gateway").await.unwrap();
    let secret = secrets.get("chat-gateway").await.unwrap();
    assert_eq!(Some(hash_of(&cm)), status.config_hash);
    assert_eq!(cm.owner_references()[0].name, "chat");
    assert_eq!(secret.owner_references()[0].uid, ready.uid().unwrap());
    let text = cm.data.as_ref().unwrap()["gateway.yaml"].clone();
    assert!(
        !text.contains(world.redis_url().unwrap()),
        "the Redis URL stays in the Secret"
    );
    let config = load_rendered(&cm, &secret);
    let kc = world.keycloak().unwrap();
    assert_eq!(config.issuers.len(), 1);
    assert_eq!(config.issuers[0].issuer, kc.issuer(REALM));
    assert_eq!(config.issuers[0].audiences, [AUDIENCE]);
    let rules: Vec<_> = config
        .access
        .rules
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(rules, ["power-users", "staff-small"]);
    assert_eq!(config.quotas.limits[0].tokens_per_minute, Some(20_000));
    assert_eq!(config.quotas.limits[1].concurrent, Some(4));
    match &config.quotas.store {
        StoreConfig::Redis { url, .. } => assert_eq!(url, world.redis_url().unwrap()),
        other => panic!("not redis: {other:?}"),
    }
    assert!(!config.deny_all);

    // A quota change re-renders: new content, new hash, in status too.
    let before = hash_of(&cm);
    let change = json!({"spec": {"quotas": [{"name": "per-user", "tokensPerMinute": 5000}]}});
    backends
        .patch("chat", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let cm = common::wait_for(&config_maps, "chat-gateway", "re-rendered", |cm| {
        hash_of(cm) != before
    })
    .await;
    let config = load_rendered(&cm, &secrets.get("chat-gateway").await.unwrap());
    assert_eq!(config.quotas.limits.len(), 1);
    assert_eq!(config.quotas.limits[0].tokens_per_minute, Some(5000));
    let after = hash_of(&cm);
    let updated = common::wait_for(&backends, "chat", "observed generation 2", |b| {
        b.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
    })
    .await;
    assert_eq!(status_hash(&updated).as_deref(), Some(after.as_str()));

    // A new pod is counted (the pod watch, not a resync).
    create_pod(&client, &ns, "ollama-2", "ollama", None).await;
    common::wait_for(&backends, "chat", "3 matched pods", |b| {
        b.status.as_ref().and_then(|s| s.matched_pods) == Some(3)
    })
    .await;

    // The Redis Secret goes: not ready, and the config denies everything.
    secrets
        .delete("redis", &DeleteParams::default())
        .await
        .unwrap();
    let failed = common::wait_ready(&backends, "chat", "False").await;
    let ready_condition = common::condition(&failed, "Ready").unwrap();
    assert_eq!(ready_condition["reason"], "SecretNotFound");
    assert!(
        ready_condition["message"]
            .as_str()
            .unwrap()
            .contains("/redis (spec.quotaStore.urlSecretRef) does not exist"),
        "{ready_condition}"
    );
    let cm = common::wait_for(&config_maps, "chat-gateway", "deny-all", |cm| {
        cm.data.as_ref().unwrap()["gateway.yaml"].contains("denyAll: true")
    })
    .await;
    let config = GatewayConfig::parse(&cm.data.as_ref().unwrap()["gateway.yaml"]).unwrap();
    assert!(config.deny_all && config.issuers.is_empty());
    assert_eq!(config.unauthenticated_paths, ["/"], "probes still answer");
    common::wait_event(&client, &ns, "chat", "Warning", "SecretNotFound").await;

    // It comes back: ready again, with a Normal event.
    create_redis_secret(&client, &ns).await;
    common::wait_ready(&backends, "chat", "True").await;
    common::wait_event(&client, &ns, "chat", "Normal", "Ready").await;
    let cm = config_maps.get("chat-gateway").await.unwrap();
    assert_eq!(hash_of(&cm), after, "the same config as before the outage");

    // The IdP goes: fail closed again.
    Api::<IdentityProvider>::namespaced(client.clone(), &ns)
        .delete("keycloak", &DeleteParams::default())
        .await
        .unwrap();
    let failed = common::wait_ready(&backends, "chat", "False").await;
    assert_eq!(
        common::condition(&failed, "Ready").unwrap()["reason"],
        "IdentityProviderNotFound"
    );
    assert_eq!(
        common::condition(&failed, "IdentityProvidersResolved").unwrap()["status"],
        "False"
    );
    common::wait_for(&config_maps, "chat-gateway", "deny-all", |cm| {
        cm.data.as_ref().unwrap()["gateway.yaml"].contains("denyAll: true")
    })
    .await;

    // Deleting the backend deletes what it owns (the garbage collector).
    backends
        .delete("chat", &DeleteParams::default())
        .await
        .unwrap();
    for _ in 0..300 {
        if config_maps.get_opt("chat-gateway").await.unwrap().is_none()
            && secrets.get_opt("chat-gateway").await.unwrap().is_none()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the owned ConfigMap and Secret were not collected");
}

#[tokio::test]
async fn the_later_of_two_overlapping_backends_conflicts_until_the_first_goes() {
    let world = common::world();
    common::install_crds();
    let _operator = OperatorProcess::start(world, &lease("conflict"), "conflict", &[])
        .await
        .unwrap();
    let ns = world.namespace("conflict").await.unwrap();
    let client = world.client().await.unwrap();
    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), &ns);
    create_idp(&client, &ns).await;

    backends
        .create(
            &PostParams::default(),
            &backend("first", "ollama", json!({})),
        )
        .await
        .unwrap();
    common::wait_ready(&backends, "first", "True").await;
    // Creation times have a one-second resolution: make "later" certain.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut second = backend("second", "ollama", json!({}));
    second
        .spec
        .selector
        .match_labels
        .insert("tier".into(), "gpu".into());
    backends
        .create(&PostParams::default(), &second)
        .await
        .unwrap();
    let conflicted = common::wait_ready(&backends, "second", "False").await;
    let ready = common::condition(&conflicted, "Ready").unwrap();
    assert_eq!(ready["reason"], "Conflict");
    assert!(
        ready["message"].as_str().unwrap().contains("first"),
        "{ready}"
    );
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("second-gateway")
        .await
        .unwrap();
    assert!(cm.data.unwrap()["gateway.yaml"].contains("denyAll: true"));
    common::wait_event(&client, &ns, "second", "Warning", "Conflict").await;
    // The earlier one keeps working.
    let first = backends.get("first").await.unwrap();
    assert_eq!(
        common::condition(&first, "Ready").unwrap()["status"],
        "True"
    );

    // A disjoint backend is no conflict.
    backends
        .create(&PostParams::default(), &backend("third", "vllm", json!({})))
        .await
        .unwrap();
    common::wait_ready(&backends, "third", "True").await;

    // The first goes; the second takes over.
    backends
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    common::wait_ready(&backends, "second", "True").await;
}

#[tokio::test]
async fn of_two_operators_only_the_leader_reconciles() {
    let world = common::world();
    common::install_crds();
    let lease = lease("election");
    let lease_args = ["--lease-duration-seconds", "4"];
    let mut a = OperatorProcess::start(world, &lease, "replica-a", &lease_args)
        .await
        .unwrap();
    let leader = |metrics: &str| metric_sum(metrics, "attach_operator_leader ");
    for _ in 0..100 {
        if leader(&a.metrics().await.unwrap()) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(leader(&a.metrics().await.unwrap()), 1.0, "{}", a.log());
    let b = OperatorProcess::start(world, &lease, "replica-b", &lease_args)
        .await
        .unwrap();

    let ns = world.namespace("election").await.unwrap();
    let client = world.client().await.unwrap();
    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), &ns);
    create_idp(&client, &ns).await;
    backends
        .create(
            &PostParams::default(),
            &backend("chat", "ollama", json!({})),
        )
        .await
        .unwrap();
    common::wait_ready(&backends, "chat", "True").await;
    let reconciles = |metrics: &str| {
        metric_sum(
            metrics,
            "attach_operator_reconciles_total{kind=\"LLMBackend\"}",
        )
    };
    // Give a standby every chance to (wrongly) reconcile too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(reconciles(&a.metrics().await.unwrap()) >= 1.0);
    let standby = b.metrics().await.unwrap();
    assert_eq!(
        reconciles(&standby),
        0.0,
        "the standby reconciled:\n{standby}"
    );
    assert_eq!(leader(&standby), 0.0);

    // The leader stops (SIGTERM): it releases the lease and the standby leads.
    a.stop(Duration::from_secs(10));
    assert!(a.log().contains("leader lease released"), "{}", a.log());
    let change = json!({"spec": {"quotas": [{"name": "q", "requestsPerMinute": 10}]}});
    backends
        .patch("chat", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let mut metrics = String::new();
    for _ in 0..300 {
        metrics = b.metrics().await.unwrap();
        if reconciles(&metrics) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(leader(&metrics), 1.0, "{}", b.log());
    assert!(reconciles(&metrics) >= 1.0, "{}", b.log());
    common::wait_for(&backends, "chat", "observed generation 2", |b| {
        b.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
    })
    .await;
}

#[tokio::test]
async fn an_identity_providers_token_exchange_is_rendered_with_its_secret() {
    let world = common::world();
    common::install_crds();
    let _operator = OperatorProcess::start(world, &lease("exchange"), "exchange", &[])
        .await
        .unwrap();
    let ns = world.namespace("exchange").await.unwrap();
    let client = world.client().await.unwrap();
    let kc = world.keycloak().unwrap();
    let idp: IdentityProvider = serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "IdentityProvider",
        "metadata": {"name": "keycloak"},
        "spec": {"issuer": kc.issuer(REALM), "insecure": true, "audiences": [AUDIENCE], "preset": "keycloak",
                 "tokenExchange": {
                     "tokenEndpoint": format!("{}/protocol/openid-connect/token", kc.issuer(REALM)),
                     "clientId": "attach-gateway",
                     "clientSecretRef": {"name": "exchange", "key": "secret"},
                     "audience": "llm-downstream"}},
    }))
    .unwrap();
    Api::<IdentityProvider>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &idp)
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "exchange"}, "stringData": {"secret": "attach-gateway-secret"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), &ns);
    backends
        .create(
            &PostParams::default(),
            &backend("chat", "ollama", json!({})),
        )
        .await
        .unwrap();
    common::wait_ready(&backends, "chat", "True").await;

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = config_maps.get("chat-gateway").await.unwrap();
    let owned = secrets.get("chat-gateway").await.unwrap();
    assert_eq!(
        owned.data.as_ref().unwrap()["exchange-client-secret-0"].0,
        b"attach-gateway-secret"
    );
    assert!(!cm.data.as_ref().unwrap()["gateway.yaml"].contains("attach-gateway-secret"));
    let config = load_rendered(&cm, &owned);
    let exchange = config.issuers[0].token_exchange.as_ref().unwrap();
    assert_eq!(exchange.client_id, "attach-gateway");
    assert_eq!(
        exchange.client_secret, "attach-gateway-secret",
        "read from the mounted Secret"
    );
    assert_eq!(exchange.audience.as_deref(), Some("llm-downstream"));

    // The exchange secret goes: fail closed.
    secrets
        .delete("exchange", &DeleteParams::default())
        .await
        .unwrap();
    let failed = common::wait_ready(&backends, "chat", "False").await;
    let ready = common::condition(&failed, "Ready").unwrap();
    assert_eq!(ready["reason"], "SecretNotFound");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("tokenExchange.clientSecretRef"),
        "{ready}"
    );
    common::wait_for(&config_maps, "chat-gateway", "deny-all", |cm| {
        cm.data.as_ref().unwrap()["gateway.yaml"].contains("denyAll: true")
    })
    .await;
}
