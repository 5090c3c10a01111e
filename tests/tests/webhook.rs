#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The injection webhook on the real API server and controller manager:
//! registered by URL and caBundle (which the operator sets), Deployments of
//! Ollama and vLLM get pods with the gateway, an opted-out namespace is left
//! alone, pod creation fails closed when the webhook is down (only where it
//! applies), and the bypass, shown as processes: the injected pod's
//! containers run as the patch says, and the model answers only through the
//! gateway.

mod common;

use std::time::Duration;

use attach_operator::crd::{IdentityProvider, LLMBackend};
use attach_tests::injected_pod::InjectedPod;
use attach_tests::keycloak::{AUDIENCE, REALM};
use attach_tests::operator::OperatorProcess;
use attach_tests::ports::free_port;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

struct Setup {
    run: String,
    operator: OperatorProcess,
    client: Client,
}

/// A fresh namespace of this run (which its webhook covers), with `labels`.
async fn namespace(run: &str, prefix: &str, labels: &[(&str, &str)]) -> String {
    let mut all = vec![("attach.dev/webhook-test", run)];
    all.extend_from_slice(labels);
    common::world()
        .namespace_with_labels(prefix, &all)
        .await
        .unwrap()
}

async fn setup() -> Setup {
    let world = common::world();
    common::install_crds();
    let client = world.client().await.unwrap();
    let run = format!("{:06x}", rand_id());
    let port = free_port().unwrap();
    // Registered by URL, as envtest does; no caBundle: the operator sets it.
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": format!("attach-{run}")},
        "webhooks": [{
            "name": "inject.attach.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate-pods")},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            // The chart's selector (every namespace but the opted-out ones;
            // kube-system and the operator's own are excluded there too),
            // narrowed to this run's namespaces: the world is shared.
            "namespaceSelector": {
                "matchLabels": {"attach.dev/webhook-test": run},
                "matchExpressions": [
                    {"key": "attach.dev/injection", "operator": "NotIn", "values": ["disabled"]},
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]},
                ],
            },
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
        }],
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mwc)
        .await
        .unwrap();
    let operator_ns = world.namespace("attach-system").await.unwrap();
    let operator = OperatorProcess::start(
        world,
        &format!("webhook-{run}"),
        "webhook",
        &[
            "--webhook",
            "true",
            "--webhook-addr",
            &format!("127.0.0.1:{port}"),
            "--webhook-dns-names",
            "127.0.0.1",
            "--webhook-configuration",
            &format!("attach-{run}"),
            "--namespace",
            &operator_ns,
            "--gateway-image",
            "attach-gateway:e2e",
        ],
    )
    .await
    .unwrap();
    Setup {
        run,
        operator,
        client,
    }
}

fn rand_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos ^ std::process::id()) & 0xff_ffff
}

async fn idp_and_backends(client: &Client, ns: &str) {
    let kc = common::world().keycloak().unwrap();
    let idp: IdentityProvider = serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "IdentityProvider", "metadata": {"name": "keycloak"},
        "spec": {"issuer": kc.issuer(REALM), "insecure": true, "audiences": [AUDIENCE], "preset": "keycloak"},
    }))
    .unwrap();
    Api::<IdentityProvider>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &idp)
        .await
        .unwrap();
    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), ns);
    for (name, engine, port) in [("ollama", "ollama", 11434), ("vllm", "vllm", 8000)] {
        let backend: LLMBackend = serde_json::from_value(json!({
            "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}}, "engine": engine, "port": port,
                     "identityProviderRefs": [{"name": "keycloak"}],
                     "access": {"rules": [{"name": "power", "subjects": {"groups": ["ai-power-users"]}, "endpoints": ["inference", "read"]}]}},
        }))
        .unwrap();
        backends
            .create(&PostParams::default(), &backend)
            .await
            .unwrap();
    }
}

async fn deploy(client: &Client, ns: &str, app: &str, container: serde_json::Value) {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": app},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                 "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [container]}}},
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
}

/// The pod the ReplicaSet made for `app`.
fn sidecar(pod: &Pod) -> Option<&Container> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == "attach-gateway")
}

fn env_of(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[tokio::test]
async fn deployments_get_the_gateway_and_the_model_is_only_reachable_through_it() {
    let Setup {
        run,
        mut operator,
        client,
    } = setup().await;
    // The operator set the caBundle.
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    common::wait_for(&mwcs, &format!("attach-{run}"), "caBundle set", |m| {
        m.webhooks
            .iter()
            .flatten()
            .all(|w| w.client_config.ca_bundle.is_some())
    })
    .await;

    let ns = namespace(&run, "models", &[]).await;
    idp_and_backends(&client, &ns).await;
    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), &ns);
    let ollama_backend = common::wait_ready(&backends, "ollama", "True").await;
    common::wait_ready(&backends, "vllm", "True").await;

    deploy(
        &client,
        &ns,
        "ollama",
        json!({"name": "ollama", "image": "ollama/ollama:0.12", "ports": [{"name": "http", "containerPort": 11434}],
               "readinessProbe": {"httpGet": {"path": "/", "port": "http"}}}),
    )
    .await;
    deploy(
        &client,
        &ns,
        "vllm",
        json!({"name": "vllm", "image": "vllm/vllm-openai:v0.11", "ports": [{"name": "http", "containerPort": 8000}],
               "args": ["--model", "meta-llama/Llama-3.2-1B-Instruct", "--port", "8000"]}),
    )
    .await;

    // Ollama: sidecar first, native, taking over port 11434 and its name.
    let pod = common::pod_of(&client, &ns, "ollama").await;
    let gateway = sidecar(&pod).unwrap_or_else(|| panic!("not injected: {pod:?}"));
    assert_eq!(
        pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0].name,
        "attach-gateway"
    );
    assert_eq!(gateway.restart_policy.as_deref(), Some("Always"));
    assert_eq!(gateway.image.as_deref(), Some("attach-gateway:e2e"));
    let ports = gateway.ports.as_ref().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p.container_port == 11434 && p.name.as_deref() == Some("http"))
    );
    let model = &pod.spec.as_ref().unwrap().containers[0];
    assert!(model.ports.is_none(), "the model gave its port up");
    assert_eq!(
        env_of(model, "OLLAMA_HOST").as_deref(),
        Some("127.0.0.1:15434")
    );
    let security = gateway.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let annotations = pod.annotations();
    assert_eq!(annotations["attach.dev/backend"], "ollama");
    assert_eq!(
        Some(&annotations["attach.dev/injected"]),
        ollama_backend.status.as_ref().unwrap().config_hash.as_ref()
    );
    // The readiness probe goes to the gateway's admin port.
    let probe = model
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/probe/ollama/readiness"));

    // vLLM: rebound by flags.
    let vllm = common::pod_of(&client, &ns, "vllm").await;
    assert!(sidecar(&vllm).is_some(), "vllm not injected");
    assert_eq!(
        vllm.spec.as_ref().unwrap().containers[0]
            .args
            .as_ref()
            .unwrap(),
        &[
            "--model",
            "meta-llama/Llama-3.2-1B-Instruct",
            "--port",
            "15434",
            "--host",
            "127.0.0.1"
        ]
    );

    // The status counts the injected pod.
    common::wait_for(&backends, "ollama", "1 injected pod", |b| {
        b.status.as_ref().and_then(|s| s.injected_pods) == Some(1)
    })
    .await;

    // The bypass, as processes.
    bypass_is_closed(&client, &ns, &pod).await;

    // An opted-out namespace is left alone.
    let off = namespace(&run, "optout", &[("attach.dev/injection", "disabled")]).await;
    idp_and_backends(&client, &off).await;
    deploy(
        &client,
        &off,
        "ollama",
        json!({"name": "ollama", "image": "ollama/ollama:0.12",
        "ports": [{"name": "http", "containerPort": 11434}]}),
    )
    .await;
    let untouched = common::pod_of(&client, &off, "ollama").await;
    assert!(sidecar(&untouched).is_none());
    assert!(!untouched.annotations().contains_key("attach.dev/injected"));

    // The webhook goes down: pods in its namespaces fail closed; others are unaffected.
    operator.stop(Duration::from_secs(10));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let bare: Pod = serde_json::from_value(json!({"metadata": {"name": "direct", "labels": {"app": "ollama"}},
        "spec": {"containers": [{"name": "ollama", "image": "ollama/ollama", "ports": [{"containerPort": 11434}]}]}}))
    .unwrap();
    let err = pods
        .create(&PostParams::default(), &bare)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("inject.attach.dev"), "{err}");
    let unrelated = common::world().namespace("unrelated").await.unwrap();
    for ns in [unrelated, off] {
        Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &bare)
            .await
            .unwrap_or_else(|e| panic!("{ns}: {e}"));
    }
}

/// Runs the injected pod's model (a mock, bound as the patch says) and its
/// gateway (with the rendered config), and shows the model answers only
/// through the gateway, with a token.
async fn bypass_is_closed(client: &Client, ns: &str, pod: &Pod) {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&format!(
            "{}-gateway",
            pod.annotations()["attach.dev/backend"]
        ))
        .await
        .unwrap();
    let running = InjectedPod::start(pod, &cm.data.unwrap()["gateway.yaml"])
        .await
        .unwrap();
    assert_eq!(running.model_ip, "127.0.0.1");
    let http = reqwest::Client::new();
    // The model's original port, now the gateway's: no token, no answer.
    let anonymous = http
        .get(format!("{}/api/tags", running.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let token = common::world()
        .keycloak()
        .unwrap()
        .token_for("alice")
        .await
        .unwrap();
    let authed = http
        .get(format!("{}/api/tags", running.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(authed.status(), 200, "{}", running.gateway_log());
    // The gateway listens on every address of the pod...
    let other_address = running.url.replace("127.0.0.1", "127.0.0.2");
    assert_eq!(
        http.get(format!("{other_address}/api/tags"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // ...the model only on 127.0.0.1: from any other address it is refused.
    let model_port = running.port(running.model_port).unwrap();
    let direct = http
        .get(format!("http://127.0.0.2:{model_port}/api/tags"))
        .send()
        .await;
    assert!(
        direct.is_err(),
        "the model answered off loopback: {direct:?}"
    );
    // The kubelet's probe, through the admin port, gets the model's answer.
    let probe = http
        .get(format!("{}/probe/ollama/readiness", running.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    let unknown = http
        .get(format!("{}/probe/ollama/api/tags", running.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404, "the admin port proxies nothing else");
}
