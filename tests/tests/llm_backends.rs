#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The LLMBackend controller, as the operator process, on the real API
//! server, controller manager and Keycloak: the rendered ConfigMap is the
//! gateway's config (naming the Secrets the pod mounts, never holding them),
//! changes re-render it, selected pods without the gateway keep the backend
//! from Ready, missing references fail closed, conflicts keep the earlier
//! backend, objects of the owned name that are not the operator's are never
//! adopted, a restart writes nothing, deletion garbage-collects, and of two
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
/// with `files` (name -> the user's Secret value) mounted beside it, as the
/// injected pod mounts them.
fn load_rendered(config_map: &ConfigMap, files: &[(&str, &[u8])]) -> GatewayConfig {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for (name, value) in files {
        std::fs::write(secrets.join(name), value).unwrap();
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
    assert_eq!(status.matched_pods, Some(1), "vllm-0 is not selected");
    assert_eq!(status.injected_pods, Some(1));
    let resolved = common::condition(&ready, "IdentityProvidersResolved").unwrap();
    assert_eq!(resolved["status"], "True");
    assert_eq!(
        common::condition(&ready, "ConfigRendered").unwrap()["reason"],
        "Rendered"
    );
    assert_eq!(
        common::condition(&ready, "PodsProtected").unwrap()["status"],
        "True"
    );

    // The ConfigMap is the gateway's config; no Secret is the operator's.
    let cm = config_maps.get("chat-attach-gateway").await.unwrap();
    assert_eq!(Some(hash_of(&cm)), status.config_hash);
    assert_eq!(cm.owner_references()[0].uid, ready.uid().unwrap());
    assert_eq!(
        cm.labels()["app.kubernetes.io/managed-by"],
        "attach-operator"
    );
    for name in ["chat-attach-gateway", "chat-gateway"] {
        assert!(
            secrets.get_opt(name).await.unwrap().is_none(),
            "Secret {name}"
        );
    }
    let text = cm.data.as_ref().unwrap()["gateway.yaml"].clone();
    let redis_url = world.redis_url().unwrap();
    assert!(!text.contains(redis_url), "the Redis URL is never read");
    assert!(
        text.contains("urlFile: /etc/attach/secrets/redis-url"),
        "{text}"
    );
    let config = load_rendered(&cm, &[("redis-url", redis_url.as_bytes())]);
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
        StoreConfig::Redis {
            url, key_prefix, ..
        } => {
            assert_eq!(url, redis_url, "read from the mounted Secret");
            assert_eq!(
                key_prefix,
                &format!("attach:quota:{ns}/chat:"),
                "its own budgets"
            );
        }
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
    let cm = common::wait_for(&config_maps, "chat-attach-gateway", "re-rendered", |cm| {
        hash_of(cm) != before
    })
    .await;
    let config = load_rendered(&cm, &[("redis-url", redis_url.as_bytes())]);
    assert_eq!(config.quotas.limits.len(), 1);
    assert_eq!(config.quotas.limits[0].tokens_per_minute, Some(5000));
    let after = hash_of(&cm);
    let updated = common::wait_for(&backends, "chat", "observed generation 2", |b| {
        b.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
    })
    .await;
    assert_eq!(status_hash(&updated).as_deref(), Some(after.as_str()));

    // A selected pod without the gateway (the pod watch, not a resync):
    // not Ready, naming it, with a Warning; gone, Ready again.
    create_pod(&client, &ns, "ollama-1", "ollama", None).await;
    let unprotected = common::wait_ready(&backends, "chat", "False").await;
    let ready_condition = common::condition(&unprotected, "Ready").unwrap();
    assert_eq!(ready_condition["reason"], "PodsNotInjected");
    assert!(
        ready_condition["message"]
            .as_str()
            .unwrap()
            .contains("ollama-1"),
        "{ready_condition}"
    );
    assert_eq!(unprotected.status.as_ref().unwrap().matched_pods, Some(2));
    common::wait_event(&client, &ns, "chat", "Warning", "PodsNotInjected").await;
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete("ollama-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    common::wait_ready(&backends, "chat", "True").await;
    common::wait_event(&client, &ns, "chat", "Normal", "Ready").await;

    // The IdP goes: fail closed.
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
    let cm = common::wait_for(&config_maps, "chat-attach-gateway", "deny-all", |cm| {
        cm.data.as_ref().unwrap()["gateway.yaml"].contains("denyAll: true")
    })
    .await;
    let config = GatewayConfig::parse(&cm.data.as_ref().unwrap()["gateway.yaml"]).unwrap();
    assert!(config.deny_all && config.issuers.is_empty() && config.access.rules.is_empty());
    assert_eq!(config.unauthenticated_paths, ["/"], "probes still answer");
    common::wait_event(&client, &ns, "chat", "Warning", "IdentityProviderNotFound").await;

    // Deleting the backend deletes what it owns (the garbage collector).
    backends
        .delete("chat", &DeleteParams::default())
        .await
        .unwrap();
    for _ in 0..300 {
        if config_maps
            .get_opt("chat-attach-gateway")
            .await
            .unwrap()
            .is_none()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the owned ConfigMap was not collected");
}

/// Another team's ConfigMap and Secret of the names a backend would use
/// (today's and the old ones): never written, never adopted, never
/// garbage-collected with the backend; the backend says Conflict.
#[tokio::test]
async fn objects_it_did_not_create_are_never_adopted() {
    let world = common::world();
    common::install_crds();
    let _operator = OperatorProcess::start(world, &lease("adopt"), "adopt", &[])
        .await
        .unwrap();
    let ns = world.namespace("adopt").await.unwrap();
    let client = world.client().await.unwrap();
    create_idp(&client, &ns).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in ["shop-attach-gateway", "shop-gateway"] {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"team": "web"}}, "data": {"gateway.yaml": "the web team's"},
        }))
        .unwrap();
        config_maps
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"team": "web"}}, "stringData": {"redis-url": "the web team's"},
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let original: Vec<(ConfigMap, Secret)> =
        futures::future::join_all(["shop-attach-gateway", "shop-gateway"].map(|n| async {
            (
                config_maps.get(n).await.unwrap(),
                secrets.get(n).await.unwrap(),
            )
        }))
        .await;

    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), &ns);
    backends
        .create(&PostParams::default(), &backend("shop", "shop", json!({})))
        .await
        .unwrap();
    let shop = common::wait_ready(&backends, "shop", "False").await;
    let ready = common::condition(&shop, "Ready").unwrap();
    assert_eq!(ready["reason"], "Conflict");
    assert!(
        ready["message"].as_str().unwrap().contains(&format!(
            "ConfigMap {ns}/shop-attach-gateway exists and was not created by attach-operator"
        )),
        "{ready}"
    );
    common::wait_event(&client, &ns, "shop", "Warning", "Conflict").await;
    // Give a wrong write every chance, then delete the backend.
    tokio::time::sleep(Duration::from_secs(2)).await;
    backends
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (cm, secret) in &original {
        let name = cm.name_any();
        let cm_now = config_maps.get(&name).await.unwrap();
        assert_eq!(
            cm_now.resource_version(),
            cm.resource_version(),
            "ConfigMap {name} written"
        );
        assert!(
            cm_now.owner_references().is_empty(),
            "ConfigMap {name} adopted"
        );
        let secret_now = secrets.get(&name).await.unwrap();
        assert_eq!(
            secret_now.resource_version(),
            secret.resource_version(),
            "Secret {name} written"
        );
    }

    // A backend whose name is free, while the taken one is freed: it
    // recovers on its own.
    backends
        .create(&PostParams::default(), &backend("shop", "shop", json!({})))
        .await
        .unwrap();
    common::wait_ready(&backends, "shop", "False").await;
    config_maps
        .delete("shop-attach-gateway", &DeleteParams::default())
        .await
        .unwrap();
    common::wait_ready(&backends, "shop", "True").await;
    let ours = config_maps.get("shop-attach-gateway").await.unwrap();
    assert_eq!(
        ours.labels()["app.kubernetes.io/managed-by"],
        "attach-operator"
    );
}

/// API writes so far, counted by the API server itself, on what the
/// operator writes about backends.
fn api_writes(world: &attach_tests::World) -> f64 {
    let out = world
        .kubectl()
        .unwrap()
        .args(["get", "--raw", "/metrics"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            ["POST", "PUT", "PATCH", "APPLY", "DELETE"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter(|l| {
            [
                "configmaps",
                "secrets",
                "llmbackends",
                "namespaces",
                "events",
            ]
            .iter()
            .any(|r| l.contains(&format!("resource=\"{r}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A restart reconciles every backend again with nothing to change: the
/// API server sees no write (ConfigMap, status, Events, namespace label).
/// In a control plane of its own, so that no other test's writes count.
#[tokio::test]
async fn a_restarted_operator_writes_nothing_that_is_already_right() {
    let world: &'static attach_tests::World = Box::leak(Box::new(
        attach_tests::World::start_private(
            env!("CARGO_BIN_EXE_attach-harness"),
            &["control-plane"],
        )
        .unwrap(),
    ));
    let crds = attach_tests::source_tree::repo_root().join("crds");
    let crds = crds.to_str().expect("a UTF-8 path");
    for args in [
        vec!["apply", "--server-side", "-f", crds],
        vec![
            "wait",
            "--for",
            "condition=established",
            "--timeout=30s",
            "-f",
            crds,
        ],
    ] {
        let out = world.kubectl().unwrap().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lease = lease("steady");
    let mut operator = OperatorProcess::start(world, &lease, "steady-a", &[])
        .await
        .unwrap();
    let ns = world.namespace("steady").await.unwrap();
    let client = world.client().await.unwrap();
    // No IdP answers here: the backends render, not Ready; a steady state
    // all the same.
    let idp: IdentityProvider = serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "IdentityProvider", "metadata": {"name": "keycloak"},
        "spec": {"issuer": "https://idp.invalid/realms/none", "audiences": [AUDIENCE]},
    }))
    .unwrap();
    Api::<IdentityProvider>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &idp)
        .await
        .unwrap();
    create_pod(&client, &ns, "ollama-0", "ollama", Some("chat")).await;
    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), &ns);
    for (name, app) in [("chat", "ollama"), ("code", "coder")] {
        backends
            .create(&PostParams::default(), &backend(name, app, json!({})))
            .await
            .unwrap();
        common::wait_for(&backends, name, "rendered", |b| {
            b.status
                .as_ref()
                .and_then(|s| s.config_hash.as_ref())
                .is_some()
        })
        .await;
    }
    // Settled: nothing written for a while.
    let mut last = api_writes(world);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = api_writes(world);
        if now == last {
            break;
        }
        last = now;
    }
    operator.stop(Duration::from_secs(10));

    let before = api_writes(world);
    let restarted = OperatorProcess::start(world, &lease, "steady-b", &[])
        .await
        .unwrap();
    let reconciles = |metrics: &str| {
        metric_sum(
            metrics,
            "attach_operator_reconciles_total{kind=\"LLMBackend\"}",
        )
    };
    for _ in 0..300 {
        if reconciles(&restarted.metrics().await.unwrap()) >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        reconciles(&restarted.metrics().await.unwrap()) >= 2.0,
        "{}",
        restarted.log()
    );
    assert_eq!(
        api_writes(world) - before,
        0.0,
        "API writes by a reconcile that had nothing to change:\n{}",
        restarted.log()
    );
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
        .get("second-attach-gateway")
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
async fn an_identity_providers_token_exchange_names_its_secret_by_file() {
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
    // No Secret yet: the operator does not look for it (the pod mounts it,
    // and does not start without it).
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
    let cm = config_maps.get("chat-attach-gateway").await.unwrap();
    let text = &cm.data.as_ref().unwrap()["gateway.yaml"];
    assert!(
        text.contains("clientSecretFile: /etc/attach/secrets/exchange-client-secret-0"),
        "{text}"
    );
    let config = load_rendered(
        &cm,
        &[("exchange-client-secret-0", b"attach-gateway-secret\n")],
    );
    let exchange = config.issuers[0].token_exchange.as_ref().unwrap();
    assert_eq!(exchange.client_id, "attach-gateway");
    assert_eq!(
        exchange.client_secret, "attach-gateway-secret",
        "read from the mounted Secret"
    );
    assert_eq!(exchange.audience.as_deref(), Some("llm-downstream"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets
            .get_opt("chat-attach-gateway")
            .await
            .unwrap()
            .is_none()
    );
}
