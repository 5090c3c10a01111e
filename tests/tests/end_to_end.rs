#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The whole chain on the real control plane: `helm install`, the operator
//! as the chart's ServiceAccount, the GitOps example applied, its pods
//! injected; then the injected pod's model (a mock bound as the patch says)
//! and gateway (the exact rendered config file) serve real Keycloak tokens:
//! access by group, admin endpoints, quotas, a live quota change through the
//! ConfigMap, and garbage collection at the end. Every cluster-wide name
//! (the ClusterIdentityProvider, the example's namespace) is unique to the
//! run, so leftovers of an earlier run never collide.

mod common;

use std::path::Path;
use std::time::Duration;

use attach_operator::crd::{ClusterIdentityProvider, LLMBackend};
use attach_tests::gateway::metric_sum;
use attach_tests::injected_pod::InjectedPod;
use attach_tests::keycloak::{AUDIENCE, REALM};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

/// An example file as committed, with the team's namespace and the
/// ClusterIdentityProvider renamed for this run.
fn example(path: &str, namespace: &str, idp: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(path),
    )
    .unwrap()
    .replace("namespace: ml-team", &format!("namespace: {namespace}"))
    .replace("name: ml-team", &format!("name: {namespace}"))
    .replace(
        "{kind: ClusterIdentityProvider, name: keycloak}",
        &format!("{{kind: ClusterIdentityProvider, name: {idp}}}"),
    )
}

async fn chat(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    model: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = http.post(format!("{url}/api/chat")).json(
        &json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn from_helm_install_to_enforced_quotas() {
    let world = common::world();
    let chart = common::install_chart().await;
    let client = world.client().await.unwrap();
    let kc = world.keycloak().unwrap();
    let run = chart.label.1.clone();
    let team = format!("ml-team-{run}");
    let idp = format!("keycloak-{run}");
    assert!(
        example("ml-team/llm-backend.yaml", &team, &idp).contains(&idp),
        "the example no longer names its IdP as expected"
    );

    // The platform layer: the corporate IdP, here the world's Keycloak.
    let cidp: ClusterIdentityProvider = serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "ClusterIdentityProvider",
        "metadata": {"name": idp},
        "spec": {"issuer": kc.issuer(REALM), "insecure": true, "audiences": [AUDIENCE], "preset": "keycloak", "algorithms": ["RS256"]},
    }))
    .unwrap();
    let cidps: Api<ClusterIdentityProvider> = Api::all(client.clone());
    cidps.create(&PostParams::default(), &cidp).await.unwrap();
    // The team layer: the example as committed.
    common::kubectl_apply(&example("ml-team/namespace.yaml", &team, &idp));
    chart.label_namespace(&team);
    // The backend before the model: pods created before their backend exists
    // are not injected (the webhook only acts at creation).
    common::kubectl_apply(&example("ml-team/llm-backend.yaml", &team, &idp));
    common::wait_ready(&cidps, &idp, "True").await;
    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), &team);
    common::wait_ready(&backends, "ollama", "True").await;
    chart.wait_namespace_label(&team, true).await;
    common::kubectl_apply(&example("ml-team/ollama.yaml", &team, &idp));
    let pod = common::pod_of(&client, &team, "ollama").await;
    assert_eq!(
        pod.annotations()
            .get("attach.dev/backend")
            .map(String::as_str),
        Some("ollama")
    );

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &team);
    let cm = config_maps.get("ollama-attach-gateway").await.unwrap();
    let mut running = InjectedPod::start(&pod, &cm.data.as_ref().unwrap()["gateway.yaml"])
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let alice = kc.token_for("alice").await.unwrap();
    let bob = kc.token_for("bob").await.unwrap();

    // alice (ai-power-users): a large model, streamed.
    let resp = chat(
        &http,
        &running.url,
        Some(&alice),
        "llama3.1:70b",
        &[("x-mock-chunks", "5")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert_eq!(
        body.lines().count(),
        6,
        "5 chunks and the final line:\n{body}"
    );
    // bob (staff): not that one, but a small one.
    let resp = chat(&http, &running.url, Some(&bob), "llama3.1:70b", &[]).await;
    assert_eq!(resp.status(), 403);
    let resp = chat(&http, &running.url, Some(&bob), "llama3.2:1b", &[]).await;
    assert_eq!(resp.status(), 200);
    // No token.
    let resp = chat(&http, &running.url, None, "llama3.2:1b", &[]).await;
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    // An admin endpoint.
    let resp = http
        .post(format!("{}/api/pull", running.url))
        .bearer_auth(&bob)
        .json(&json!({"model": "llama3.2:1b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // bob spends his 20,000 tokens a minute, then is refused.
    let resp = chat(
        &http,
        &running.url,
        Some(&bob),
        "llama3.2:1b",
        &[("x-mock-usage", "20000")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let resp = chat(&http, &running.url, Some(&bob), "llama3.2:1b", &[]).await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    // The team raises the quota in Git; kubectl apply; the ConfigMap changes.
    let before = cm.annotations()["attach.dev/config-hash"].clone();
    common::kubectl_apply(
        &example("ml-team/llm-backend.yaml", &team, &idp)
            .replace("tokensPerMinute: 20000", "tokensPerMinute: 60000"),
    );
    let cm = common::wait_for(&config_maps, "ollama-attach-gateway", "re-rendered", |cm| {
        cm.annotations()["attach.dev/config-hash"] != before
    })
    .await;
    // A stream in flight while the kubelet swaps the file.
    let pid = running.gateway_pid();
    let in_flight = {
        let (http, url, alice) = (http.clone(), running.url.clone(), alice.clone());
        tokio::spawn(async move {
            let resp = chat(
                &http,
                &url,
                Some(&alice),
                "llama3.1:70b",
                &[("x-mock-chunks", "20"), ("x-mock-delay-ms", "150")],
            )
            .await;
            (resp.status(), resp.text().await.unwrap().lines().count())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = running.admin.clone();
    let reloads = || async {
        let metrics = http
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_sum(&metrics, "attach_config_reloads_total{result=\"ok\"}")
    };
    let reloaded_before = reloads().await;
    running
        .write_config(&cm.data.as_ref().unwrap()["gateway.yaml"])
        .unwrap();
    for _ in 0..100 {
        if reloads().await > reloaded_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reloads().await > reloaded_before,
        "the new config was not loaded"
    );
    assert_eq!(
        in_flight.await.unwrap(),
        (reqwest::StatusCode::OK, 21),
        "the stream in flight completed"
    );
    assert_eq!(running.gateway_pid(), pid, "no restart");
    running.check_running().unwrap();
    // The new limit applies: bob's 20,011 tokens are under 60,000.
    let resp = chat(&http, &running.url, Some(&bob), "llama3.2:1b", &[]).await;
    assert_eq!(resp.status(), 200);

    // The backend goes; what it owns goes with it.
    backends
        .delete("ollama", &DeleteParams::default())
        .await
        .unwrap();
    for _ in 0..300 {
        if config_maps
            .get_opt("ollama-attach-gateway")
            .await
            .unwrap()
            .is_none()
        {
            cidps.delete(&idp, &DeleteParams::default()).await.unwrap();
            common::kubectl(&["delete", "namespace", &team, "--wait=false"]);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the ConfigMap of the deleted backend remains");
}
