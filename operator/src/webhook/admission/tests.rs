//! The review handling: `accepts` (with a patch or not) and `rejects`.

use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;

fn index(
    backends: Vec<LLMBackend>,
    namespaces: Vec<Value>,
) -> (
    Index,
    Writer<LLMBackend>,
    Writer<PartialObjectMeta<Namespace>>,
) {
    let (b, mut bw) = reflector::store();
    for obj in backends {
        bw.apply_watcher_event(&watcher::Event::Apply(obj));
    }
    let (n, mut nw) = reflector::store();
    for ns in namespaces {
        nw.apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(ns).unwrap()));
    }
    (
        Index {
            backends: b,
            namespaces: n,
        },
        bw,
        nw,
    )
}

fn backend() -> LLMBackend {
    serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend",
        "metadata": {"name": "chat", "namespace": "ml", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"selector": {"matchLabels": {"app": "ollama"}}, "engine": "ollama", "port": 11434,
                 "identityProviderRefs": [{"name": "corp"}]},
        "status": {"configHash": "abc"},
    }))
    .unwrap()
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn review_of(pod: Value, ns: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0a1b", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "", "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "dryRun": false,
        },
    }))
    .unwrap()
}

fn ollama_pod(annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "ollama-", "labels": {"app": "ollama"}, "annotations": annotations},
           "spec": {"containers": [{"name": "ollama", "image": "ollama/ollama",
                                    "ports": [{"containerPort": 11434, "name": "http"}]}]}})
}

fn answer(body: &[u8], index: &Index) -> (Value, Outcome) {
    let (review, outcome) = review(body, index, &Defaults::default());
    (
        serde_json::to_value(review).unwrap()["response"].clone(),
        outcome,
    )
}

#[test]
fn accepts_a_selected_pod_with_a_patch() {
    let (index, _b, _n) = index(vec![backend()], vec![namespace("ml", json!({}))]);
    let (response, outcome) = answer(&review_of(ollama_pod(json!({})), "ml"), &index);
    assert_eq!(response["uid"], "0a1b");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone()).unwrap();
    let patch: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
    assert!(
        patch.iter().any(|op| op["path"] == "/spec/initContainers"),
        "{patch:?}"
    );
    assert_eq!(
        outcome,
        Outcome::Injected {
            backend: "chat".into()
        }
    );
}

#[test]
fn accepts_unselected_and_opted_out_pods_without_a_patch() {
    let (index, _b, _n) = index(
        vec![backend()],
        vec![
            namespace("ml", json!({})),
            namespace("off", json!({"attach.dev/injection": "disabled"})),
        ],
    );
    let web = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
    let (response, _) = answer(&review_of(web, "ml"), &index);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none() || response["patch"].is_null());
    assert!(
        response.get("warnings").is_none() || response["warnings"].is_null(),
        "nobody selects it"
    );

    let (response, outcome) = answer(
        &review_of(ollama_pod(json!({"attach.dev/inject": "false"})), "ml"),
        &index,
    );
    assert_eq!(response["allowed"], true);
    assert!(response["patch"].is_null());
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("chat") && warning.contains("pod_opted_out"),
        "{warning}"
    );
    assert!(matches!(
        outcome,
        Outcome::Skipped {
            reason: SkipReason::PodOptedOut,
            ..
        }
    ));

    // No backend in that namespace: the backend in "ml" does not count.
    let (response, outcome) = answer(&review_of(ollama_pod(json!({})), "off"), &index);
    assert!(response["patch"].is_null());
    assert!(matches!(
        outcome,
        Outcome::Skipped {
            reason: SkipReason::NamespaceOptedOut,
            ..
        }
    ));
}

#[test]
fn rejects_what_is_not_a_review() {
    let (index, _b, _n) = index(vec![backend()], vec![]);
    for body in [
        &b"not json"[..],
        br#"{"apiVersion": "v1", "kind": "Pod"}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    ] {
        let (response, outcome) = answer(body, &index);
        assert_eq!(
            response["allowed"],
            false,
            "{}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(outcome, Outcome::Invalid);
    }
}
