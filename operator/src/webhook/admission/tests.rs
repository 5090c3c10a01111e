//! The review handling: `accepts` (with a patch or not) and `rejects`.

use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;
use crate::crd::{ClusterIdentityProvider, IdentityProvider};

struct Fixture {
    index: Index,
    _writers: (
        Writer<LLMBackend>,
        Writer<IdentityProvider>,
        Writer<ClusterIdentityProvider>,
    ),
}

fn index(backends: Vec<LLMBackend>) -> Fixture {
    let (b, mut bw) = reflector::store();
    for obj in backends {
        bw.apply_watcher_event(&watcher::Event::Apply(obj));
    }
    let (namespaced, iw) = reflector::store();
    let (cluster, cw) = reflector::store();
    Fixture {
        index: Index {
            backends: b,
            idps: IdpStores {
                namespaced,
                cluster,
            },
        },
        _writers: (bw, iw, cw),
    }
}

fn backend(extra: Value) -> LLMBackend {
    let mut spec = json!({"selector": {"matchLabels": {"app": "ollama"}}, "engine": "ollama", "port": 11434,
             "identityProviderRefs": [{"name": "corp"}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend",
        "metadata": {"name": "chat", "namespace": "ml", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
        "status": {"configHash": "abc"},
    }))
    .unwrap()
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

fn ollama_pod(labels: Value, annotations: Value) -> Value {
    let mut all = json!({"app": "ollama"});
    if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
        all.extend(extra.clone());
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "ollama-", "labels": all, "annotations": annotations},
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

fn patch_of(response: &Value) -> Vec<Value> {
    let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone()).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn accepts_a_selected_pod_with_a_patch() {
    let f = index(vec![backend(json!({}))]);
    let (response, outcome) = answer(&review_of(ollama_pod(json!({}), json!({})), "ml"), &f.index);
    assert_eq!(response["uid"], "0a1b");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = patch_of(&response);
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
fn accepts_unselected_pods_unchanged_and_silently() {
    let f = index(vec![backend(json!({}))]);
    let web = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
    let (response, _) = answer(&review_of(web, "ml"), &f.index);
    assert_eq!(response["allowed"], true);
    assert!(response["patch"].is_null());
    assert!(response["warnings"].is_null(), "nobody selects it");
    // The backend in "ml" does not select pods elsewhere.
    let (response, outcome) = answer(
        &review_of(ollama_pod(json!({}), json!({})), "elsewhere"),
        &f.index,
    );
    assert_eq!(response["allowed"], true);
    assert!(response["patch"].is_null());
    assert!(matches!(
        outcome,
        Outcome::Admitted {
            reason: Reason::NoBackend,
            ..
        }
    ));
}

/// The opt-out, as a label and as an annotation: refused unless the
/// backend allows it, admitted with a warning when it does.
#[test]
fn a_pod_opt_out_is_honoured_only_where_the_backend_allows_it() {
    let forbidding = index(vec![backend(json!({}))]);
    let allowing = index(vec![backend(json!({"podOptOut": "Allow"}))]);
    let opt_out = [
        (
            "label",
            ollama_pod(json!({"attach.dev/inject": "false"}), json!({})),
        ),
        (
            "annotation",
            ollama_pod(json!({}), json!({"attach.dev/inject": "false"})),
        ),
    ];
    for (form, pod) in opt_out {
        let (response, outcome) = answer(&review_of(pod.clone(), "ml"), &forbidding.index);
        assert_eq!(response["allowed"], false, "{form}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("opt_out_forbidden") && message.contains("podOptOut: Allow"),
            "{form}: {message}"
        );
        assert!(matches!(
            outcome,
            Outcome::Refused {
                reason: Reason::OptOutForbidden,
                ..
            }
        ));

        let (response, outcome) = answer(&review_of(pod, "ml"), &allowing.index);
        assert_eq!(response["allowed"], true, "{form}");
        assert!(response["patch"].is_null(), "{form}");
        let warning = response["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains("chat") && warning.contains("WITHOUT attach-gateway"),
            "{form}: {warning}"
        );
        assert!(matches!(
            outcome,
            Outcome::Admitted {
                reason: Reason::PodOptedOut,
                ..
            }
        ));
    }
    // "true", or anything else, is no opt-out: injected.
    let (response, _) = answer(
        &review_of(
            ollama_pod(json!({"attach.dev/inject": "true"}), json!({})),
            "ml",
        ),
        &forbidding.index,
    );
    assert_eq!(response["patchType"], "JSONPatch");
}

/// Each half of the already-injected check: a pod with only the annotation,
/// or only the container, is refused; the webhook's own output is admitted.
#[test]
fn only_a_pod_the_webhook_injected_counts_as_injected() {
    let f = index(vec![backend(json!({}))]);
    let (first, _) = answer(&review_of(ollama_pod(json!({}), json!({})), "ml"), &f.index);
    let mut injected = ollama_pod(json!({}), json!({}));
    json_patch::patch(
        &mut injected,
        &serde_json::from_value::<json_patch::Patch>(Value::Array(patch_of(&first))).unwrap(),
    )
    .unwrap();
    let (again, outcome) = answer(&review_of(injected.clone(), "ml"), &f.index);
    assert_eq!(again["allowed"], true);
    assert!(again["patch"].is_null(), "a second pass changes nothing");
    assert!(matches!(
        outcome,
        Outcome::Admitted {
            reason: Reason::AlreadyInjected,
            ..
        }
    ));

    let mut annotation_only = ollama_pod(json!({}), json!({}));
    annotation_only["metadata"]["annotations"] = injected["metadata"]["annotations"].clone();
    let mut container_only = injected.clone();
    container_only["metadata"]["annotations"] = json!({});
    for (what, pod, reason) in [
        ("annotation only", annotation_only, "forged_annotation"),
        (
            "container only",
            container_only,
            "foreign_gateway_container",
        ),
    ] {
        let (response, _) = answer(&review_of(pod, "ml"), &f.index);
        assert_eq!(response["allowed"], false, "{what}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{what}: {message}");
    }
}

#[test]
fn refuses_selected_pods_it_cannot_protect_naming_reason_and_fix() {
    let f = index(vec![backend(json!({}))]);
    let mut host = ollama_pod(json!({}), json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    let mut other_port = ollama_pod(json!({}), json!({}));
    other_port["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(8080);
    for (pod, reason) in [
        (host, "host_network"),
        (other_port, "engine_container_not_found"),
    ] {
        let (response, outcome) = answer(&review_of(pod, "ml"), &f.index);
        assert_eq!(response["allowed"], false, "{reason}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("LLMBackend chat")
                && message.contains(reason)
                && message.contains("Fix:"),
            "{message}"
        );
        assert!(matches!(outcome, Outcome::Refused { .. }));
    }
}

#[test]
fn rejects_what_is_not_a_review() {
    let f = index(vec![backend(json!({}))]);
    for body in [
        &b"not json"[..],
        br#"{"apiVersion": "v1", "kind": "Pod"}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    ] {
        let (response, outcome) = answer(body, &f.index);
        assert_eq!(
            response["allowed"],
            false,
            "{}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(outcome, Outcome::Invalid);
    }
}

/// The webhook looks the exchange client Secret up in its IdP cache and
/// mounts it into the gateway: without it, a gateway configured to
/// exchange tokens has no client secret to exchange them with.
#[test]
fn the_exchange_client_secret_of_the_backends_idp_is_mounted() {
    let (b, mut bw) = reflector::store();
    bw.apply_watcher_event(&watcher::Event::Apply(backend(json!({}))));
    let (namespaced, mut iw) = reflector::store::<IdentityProvider>();
    iw.apply_watcher_event(&watcher::Event::Apply(
        serde_json::from_value(json!({
            "apiVersion": "attach.dev/v1alpha1", "kind": "IdentityProvider",
            "metadata": {"name": "corp", "namespace": "ml"},
            "spec": {"issuer": "https://idp.example.com", "audiences": ["a"],
                     "tokenExchange": {"tokenEndpoint": "https://idp.example.com/token",
                                       "clientId": "gw", "audience": "down",
                                       "clientSecretRef": {"name": "corp-exchange", "key": "client-secret"}}},
        }))
        .unwrap(),
    ));
    let (cluster, cw) = reflector::store();
    let f = Fixture {
        index: Index {
            backends: b,
            idps: IdpStores {
                namespaced,
                cluster,
            },
        },
        _writers: (bw, iw, cw),
    };
    let (response, _) = answer(&review_of(ollama_pod(json!({}), json!({})), "ml"), &f.index);
    assert_eq!(response["allowed"], true);
    let mounted = mounted_volumes(&response);
    assert!(
        mounted.contains("\"corp-exchange\"") && mounted.contains("\"client-secret\""),
        "the exchange Secret is not in the gateway's volume: {mounted}"
    );
    // Without an IdP that exchanges tokens, no such Secret is mounted.
    let plain = index(vec![backend(json!({}))]);
    let (response, _) = answer(
        &review_of(ollama_pod(json!({}), json!({})), "ml"),
        &plain.index,
    );
    let patch = serde_json::to_string(&patch_of(&response)).unwrap();
    assert!(!patch.contains("corp-exchange"), "{patch}");
}

/// The volumes a review's patch adds, as JSON text.
fn mounted_volumes(response: &Value) -> String {
    let patch = patch_of(response);
    let volumes: Vec<&Value> = patch
        .iter()
        .filter(|op| {
            op["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/spec/volumes"))
        })
        .collect();
    serde_json::to_string(&volumes).unwrap()
}

/// With API keys enabled, the signing key Secret is mounted where the
/// rendered config names it: without it, the gateway cannot seal or check
/// a key record. A disabled section mounts nothing (its Secret need not
/// exist for the pod to start).
#[test]
fn the_api_keys_signing_key_is_mounted_while_keys_are_enabled() {
    let keys = |enabled: bool| {
        backend(json!({
            "quotaStore": {"type": "redis", "urlSecretRef": {"name": "redis", "key": "url"}},
            "apiKeys": {"enabled": enabled,
                        "signingKeySecretRef": {"name": "chat-keys", "key": "signing-key"}},
        }))
    };
    let enabled = index(vec![keys(true)]);
    let (response, _) = answer(
        &review_of(ollama_pod(json!({}), json!({})), "ml"),
        &enabled.index,
    );
    assert_eq!(response["allowed"], true);
    let mounted = mounted_volumes(&response);
    assert!(
        mounted.contains("\"chat-keys\"")
            && mounted.contains("\"signing-key\"")
            && mounted.contains("\"secrets/api-keys-signing-key\""),
        "the signing key Secret is not in the gateway's volume: {mounted}"
    );
    assert!(mounted.contains("\"secrets/redis-url\""), "{mounted}");
    let disabled = index(vec![keys(false)]);
    let (response, _) = answer(
        &review_of(ollama_pod(json!({}), json!({})), "ml"),
        &disabled.index,
    );
    let mounted = mounted_volumes(&response);
    assert!(!mounted.contains("chat-keys"), "{mounted}");
    assert!(mounted.contains("\"secrets/redis-url\""), "{mounted}");
}

/// Every answer is counted under its result and reason: refusals and
/// opt-outs are what an operator alerts on.
#[test]
fn every_answer_is_counted_by_result_and_reason() {
    let f = index(vec![backend(json!({}))]);
    let metrics = Metrics::new();
    for (pod, ns) in [
        (ollama_pod(json!({}), json!({})), "ml"),
        (
            ollama_pod(json!({"attach.dev/inject": "false"}), json!({})),
            "ml",
        ),
        (ollama_pod(json!({}), json!({})), "elsewhere"),
    ] {
        let (_, outcome) = answer(&review_of(pod, ns), &f.index);
        outcome.record(&metrics);
    }
    let (_, invalid) = review(b"{not a review", &f.index, &Defaults::default());
    invalid.record(&metrics);
    let text = metrics.encode();
    for line in [
        r#"attach_operator_admissions_total{result="injected",reason=""} 1"#,
        r#"attach_operator_admissions_total{result="refused",reason="opt_out_forbidden"} 1"#,
        r#"attach_operator_admissions_total{result="admitted",reason="no_backend"} 1"#,
        r#"attach_operator_admissions_total{result="invalid",reason=""} 1"#,
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
}
