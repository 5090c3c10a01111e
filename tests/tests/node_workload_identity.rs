#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! An agent pod on the real node reaches a model with nothing but its
//! projected ServiceAccount token. The chart runs in the cluster; the
//! `agents-team` example's model (its image swapped for the stand-in built
//! here) is injected by the webhook; the cluster is the identity provider
//! (`preset: kubernetes`, its keys relayed by the operator). From agent pods
//! through the Service: the account the rule names, with a token for this
//! backend, 200; the same account with a token for another backend, 401;
//! another account of the namespace, 403 for inference but 200 for the
//! model list; the same account name in another namespace, 403.

mod common;

use attach_operator::crd::{ClusterIdentityProvider, LLMBackend};
use attach_tests::pod_client::{HttpCall, HttpResult, PodClient};
use common::node::{
    WORKLOAD_TOKEN, client_pod_as, first_answer, images, install_release, namespace,
};
use kube::api::{Api, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};

/// The example's documents, with `agents-team` replaced by `ns`, the model
/// image by the stand-in, and the identity provider renamed to `idp`.
fn adapted_example(path: &str, ns: &str, idp: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(
        attach_tests::source_tree::repo_root()
            .join("examples/agents-team")
            .join(path),
    )
    .unwrap()
    .replace("agents-team", ns);
    let mut docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::from_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    for doc in &mut docs {
        if doc["kind"] == "Deployment" {
            doc["spec"]["template"]["spec"]["containers"][0]["image"] = json!(images().model);
            doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(2);
        }
        if doc["kind"] == "LLMBackend" {
            doc["spec"]["identityProviderRefs"][0]["name"] = json!(idp);
        }
    }
    docs
}

fn embed_call(url: &str) -> HttpCall {
    HttpCall::new("POST", &format!("{url}/api/embed"))
        .json(&json!({"model": "nomic-embed-text", "input": "hello"}))
        .bearer_file(WORKLOAD_TOKEN)
}

async fn embed(client: &PodClient, url: &str) -> HttpResult {
    client.http(&embed_call(url)).await.unwrap()
}

async fn tags(client: &PodClient, url: &str) -> HttpResult {
    let call = HttpCall::new("GET", &format!("{url}/api/tags")).bearer_file(WORKLOAD_TOKEN);
    client.http(&call).await.unwrap()
}

#[tokio::test]
async fn an_agent_pod_reaches_the_model_with_its_projected_token_only() {
    let kube = common::world().client().await.unwrap();
    let release = install_release(&[]).await;
    let run = release.label.1.clone();

    // The cluster as this run's identity provider, as the API server names it.
    let discovery: Value = kube
        .request(
            http::Request::get("/.well-known/openid-configuration")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let issuer = discovery["issuer"].as_str().unwrap();
    let idp = format!("cluster-{run}");
    let cidp: ClusterIdentityProvider = serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "ClusterIdentityProvider",
        "metadata": {"name": idp},
        "spec": {"issuer": issuer, "audiences": ["unused"], "preset": "kubernetes"},
    }))
    .unwrap();
    let cidps: Api<ClusterIdentityProvider> = Api::all(kube.clone());
    cidps.create(&PostParams::default(), &cidp).await.unwrap();
    common::wait_ready(&cidps, &idp, "True").await;

    // The example, as the team applies it, in a namespace the release covers.
    let team = namespace("agents-team", &[]).await;
    release.cover(&team.name);
    // The backend first, then the model it protects (a pod created before
    // its backend runs unprotected, and the backend says so).
    let (backend, model): (Vec<Value>, Vec<Value>) =
        adapted_example("embeddings.yaml", &team.name, &idp)
            .into_iter()
            .partition(|d| d["kind"] == "LLMBackend");
    let apply = |docs: &[Value]| {
        let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
        common::kubectl_apply(&text.join("\n---\n"));
    };
    apply(&backend);
    let backends: Api<LLMBackend> = Api::namespaced(kube.clone(), &team.name);
    common::wait_ready(&backends, "embeddings", "True").await;
    apply(&model);
    let audience = format!("attach.dev/{}/embeddings", team.name);
    let url = format!("http://embeddings.{}.svc.cluster.local:11434", team.name);

    // The indexer: its projected token for this backend.
    let indexer = client_pod_as(&team.name, "indexer", "rag-indexer", &audience).await;
    let r = first_answer(&indexer, &embed_call(&url)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = embed(&indexer, &url).await;
    assert_eq!(r.status, 200, "{r:?}");

    // The same account, with a token for another backend.
    let misdirected = client_pod_as(
        &team.name,
        "misdirected",
        "rag-indexer",
        &format!("attach.dev/{}/chat", team.name),
    )
    .await;
    let r = embed(&misdirected, &url).await;
    assert_eq!(r.status, 401, "{r:?}");

    // Another account of the namespace: the model list, not inference.
    let other = client_pod_as(&team.name, "other", "summariser", &audience).await;
    assert_eq!(embed(&other, &url).await.status, 403);
    let r = tags(&other, &url).await;
    assert_eq!(r.status, 200, "{r:?}");

    // The indexer's name in another namespace is another account.
    let elsewhere = namespace("elsewhere", &[]).await;
    let lookalike = client_pod_as(&elsewhere.name, "lookalike", "rag-indexer", &audience).await;
    let r = embed(&lookalike, &url).await;
    assert_eq!(r.status, 403, "{r:?}");
    let _ = cidps.delete(&idp, &Default::default()).await;
}
