#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The injection webhook on the real API server and controller manager,
//! through the chart's own MutatingWebhookConfiguration and admission
//! policies, with the operator (as the chart's ServiceAccount) deciding:
//! Deployments of Ollama and vLLM get pods with the gateway; every reason a
//! selected pod cannot be protected is refused, naming it and the fix, on a
//! second try too; an opt-out passes only where the backend allows it; an
//! outage blocks pod creation only in namespaces that hold a backend; and
//! the bypass, shown as processes: the injected pod's containers run as the
//! patch says, and the model answers only through the gateway.

mod common;

use attach_operator::crd::{IdentityProvider, LLMBackend};
use attach_tests::injected_pod::InjectedPod;
use attach_tests::keycloak::{AUDIENCE, REALM};
use common::chart::InstalledChart;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

async fn idp(client: &Client, ns: &str) {
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
}

async fn backend(client: &Client, ns: &str, name: &str, extra: Value) {
    let mut spec = json!({"selector": {"matchLabels": {"app": name}}, "engine": "ollama", "port": 11434,
             "identityProviderRefs": [{"name": "keycloak"}],
             "access": {"rules": [{"name": "power", "subjects": {"groups": ["ai-power-users"]}, "endpoints": ["inference", "read"]}]}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let backend: LLMBackend = serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend", "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    Api::<LLMBackend>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &backend)
        .await
        .unwrap();
}

async fn deploy(client: &Client, ns: &str, app: &str, container: Value) {
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

/// A pod labelled `app`, serving the model port.
fn model_pod(name: &str, app: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"app": app}},
           "spec": {"containers": [{"name": "ollama", "image": "ollama/ollama",
                                    "ports": [{"name": "http", "containerPort": 11434}]}]}})
}

async fn create(client: &Client, ns: &str, pod: &Value) -> Result<Pod, kube::Error> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod.clone()).unwrap(),
        )
        .await
}

/// A namespace under the chart holding an IdP and the backends `names`
/// (each selecting `app=<name>`), Ready and labelled for the webhook.
async fn team(
    chart: &InstalledChart,
    client: &Client,
    prefix: &str,
    backends: &[(&str, Value)],
) -> String {
    let ns = chart.namespace(prefix).await;
    idp(client, &ns).await;
    for (name, extra) in backends {
        backend(client, &ns, name, extra.clone()).await;
    }
    let api: Api<LLMBackend> = Api::namespaced(client.clone(), &ns);
    for (name, _) in backends {
        common::wait_ready(&api, name, "True").await;
    }
    chart.wait_namespace_label(&ns, true).await;
    ns
}

/// The operators of this file's tests. Each labels every namespace that
/// holds a backend (`attach.dev/llm-backends`, one label cluster-wide, as a
/// cluster runs one operator), whichever install it belongs to; the outage
/// test needs to be the only one. Each test holds its guard until its chart
/// (and operator) is gone: declared first, dropped last.
static OPERATORS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

#[tokio::test]
async fn deployments_get_the_gateway_and_the_model_is_only_reachable_through_it() {
    let _alongside = OPERATORS.read().await;
    let chart = common::install_chart().await;
    let client = common::world().client().await.unwrap();
    let ns = team(
        &chart,
        &client,
        "models",
        &[
            ("ollama", json!({})),
            ("vllm", json!({"engine": "vllm", "port": 8000})),
        ],
    )
    .await;
    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), &ns);
    let ollama_backend = backends.get("ollama").await.unwrap();

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

    // The status counts the injected pod, and every selected pod is protected.
    let counted = common::wait_for(&backends, "ollama", "1 injected pod", |b| {
        b.status.as_ref().and_then(|s| s.injected_pods) == Some(1)
    })
    .await;
    assert_eq!(
        common::condition(&counted, "PodsProtected").unwrap()["status"],
        "True"
    );

    bypass_is_closed(&client, &ns, &pod).await;
}

/// Creating `pod` is refused, twice, by the chart's webhook with the
/// operator deciding: the message names `reason` and a fix.
async fn refused_twice(client: &Client, ns: &str, pod: &Value, reason: &str) {
    for attempt in ["first", "second"] {
        match create(client, ns, pod).await {
            Err(kube::Error::Api(e)) => {
                assert!(
                    e.message
                        .contains("admission webhook \"inject.attach.dev\" denied the request")
                        && e.message.contains(reason)
                        && e.message.contains("Fix:"),
                    "{reason} ({attempt} try): {}",
                    e.message
                );
            }
            other => panic!("{reason} ({attempt} try): not refused: {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_reason_a_selected_pod_cannot_be_protected_is_refused_twice() {
    let _alongside = OPERATORS.read().await;
    let chart = common::install_chart().await;
    let client = common::world().client().await.unwrap();
    let ns = team(
        &chart,
        &client,
        "refusals",
        &[
            ("ollama", json!({})),
            ("tolerant", json!({"podOptOut": "Allow"})),
        ],
    )
    .await;

    let mut annotated = model_pod("opt-out-annotation", "ollama");
    annotated["metadata"]["annotations"] = json!({"attach.dev/inject": "false"});
    let mut labelled = model_pod("opt-out-label", "ollama");
    labelled["metadata"]["labels"]["attach.dev/inject"] = json!("false");
    let mut host = model_pod("host", "ollama");
    host["spec"]["hostNetwork"] = json!(true);
    let mut other_port = model_pod("other-port", "ollama");
    other_port["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(8080);
    let mut forged = model_pod("forged", "ollama");
    forged["metadata"]["annotations"] =
        json!({"attach.dev/injected": "0123456789abcdef", "attach.dev/backend": "ollama"});
    let mut foreign = model_pod("foreign", "ollama");
    foreign["spec"]["initContainers"] = json!([{"name": "attach-gateway", "image": "busybox",
        "restartPolicy": "Always", "command": ["sleep", "infinity"]}]);
    for (pod, reason) in [
        (&annotated, "opt_out_forbidden"),
        (&labelled, "opt_out_forbidden"),
        (&host, "host_network"),
        (&other_port, "engine_container_not_found"),
        (&forged, "forged_annotation"),
        (&foreign, "foreign_gateway_container"),
    ] {
        refused_twice(&client, &ns, pod, reason).await;
    }
    common::wait_event(&client, &ns, "ollama", "Warning", "InjectionRefused").await;

    // The opt-out, where the backend allows it: admitted without the
    // gateway, with a warning kubectl shows, and not counted unprotected.
    for (form, pod) in [
        ("annotation", {
            let mut p = model_pod("tolerated-annotation", "tolerant");
            p["metadata"]["annotations"] = json!({"attach.dev/inject": "false"});
            p
        }),
        ("label", {
            let mut p = model_pod("tolerated-label", "tolerant");
            p["metadata"]["labels"]["attach.dev/inject"] = json!("false");
            p
        }),
    ] {
        let mut manifest = pod.clone();
        manifest["apiVersion"] = json!("v1");
        manifest["kind"] = json!("Pod");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), serde_json::to_string(&manifest).unwrap()).unwrap();
        let out = common::world()
            .kubectl()
            .unwrap()
            .args(["create", "-n", &ns, "-f", file.path().to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{form}: {stderr}");
        assert!(
            stderr.contains("Warning:") && stderr.contains("WITHOUT attach-gateway"),
            "{form}: {stderr}"
        );
        let name = pod["metadata"]["name"].as_str().unwrap();
        let created = Api::<Pod>::namespaced(client.clone(), &ns)
            .get(name)
            .await
            .unwrap();
        assert!(sidecar(&created).is_none(), "{form}");
    }
    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), &ns);
    let tolerant = common::wait_for(&backends, "tolerant", "2 matched pods", |b| {
        b.status.as_ref().and_then(|s| s.matched_pods) == Some(2)
    })
    .await;
    assert_eq!(
        common::condition(&tolerant, "PodsProtected").unwrap()["status"],
        "True"
    );

    // A ConfigMap of the backend's name that is someone else's: the backend
    // reports a Conflict, and its pods are refused rather than mounting it.
    let taken = chart.namespace("taken").await;
    idp(&client, &taken).await;
    let theirs: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "shop-attach-gateway"}, "data": {"gateway.yaml": "theirs"},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &taken)
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    backend(&client, &taken, "shop", json!({})).await;
    let shops: Api<LLMBackend> = Api::namespaced(client.clone(), &taken);
    let shop = common::wait_ready(&shops, "shop", "False").await;
    assert_eq!(
        common::condition(&shop, "ConfigRendered").unwrap()["reason"],
        "Conflict"
    );
    chart.wait_namespace_label(&taken, true).await;
    refused_twice(
        &client,
        &taken,
        &model_pod("shop-0", "shop"),
        "config_map_taken",
    )
    .await;
}

/// The operator stopped: pod creation fails closed only in namespaces that
/// hold an LLMBackend (the webhook's namespaceSelector); elsewhere, pods are
/// created. A backend created during the outage leaves its namespace
/// unlabelled, and its selected pods are refused by the admission policy.
#[tokio::test]
async fn an_outage_blocks_pod_creation_only_where_backends_are() {
    // No other operator may run meanwhile: any would label the namespace
    // whose backend comes during this one's outage.
    let _alone = OPERATORS.write().await;
    let mut chart = common::install_chart().await;
    let client = common::world().client().await.unwrap();
    let models = team(&chart, &client, "outage-models", &[("ollama", json!({}))]).await;
    // Under the chart too, but holding no backend: never labelled.
    let unrelated = chart.namespace("outage-unrelated").await;
    // Not under the chart at all.
    let elsewhere = common::world().namespace("outage-elsewhere").await.unwrap();
    let plain = json!({"metadata": {"name": "web", "labels": {"app": "web"}},
                       "spec": {"containers": [{"name": "web", "image": "nginx"}]}});

    chart.stop_operator();
    for ns in [&unrelated, &elsewhere] {
        create(&client, ns, &plain)
            .await
            .unwrap_or_else(|e| panic!("a plain pod in {ns}: {e}"));
    }
    for pod in [model_pod("ollama-0", "ollama"), plain.clone()] {
        let err = create(&client, &models, &pod).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("failed calling webhook \"inject.attach.dev\""),
            "{err}"
        );
    }

    // A namespace whose first backend comes while the operator is down.
    let late = chart.namespace("outage-late").await;
    idp(&client, &late).await;
    backend(&client, &late, "ollama", json!({})).await;
    match create(&client, &late, &model_pod("ollama-0", "ollama")).await {
        Err(kube::Error::Api(e)) => assert!(
            e.message.contains("selected-pods")
                && e.message.contains(
                    "LLMBackend ollama selects this pod, but attach-gateway was not injected"
                ),
            "{}",
            e.message
        ),
        other => panic!("admitted unprotected: {other:?}"),
    }
    create(
        &client,
        &late,
        &json!({"metadata": {"name": "web"},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}}),
    )
    .await
    .unwrap();

    // The operator returns: it labels that namespace, and the pod is injected.
    chart.start_operator().await;
    chart.wait_namespace_label(&late, true).await;
    let injected = create(&client, &late, &model_pod("ollama-1", "ollama"))
        .await
        .unwrap();
    assert!(sidecar(&injected).is_some());
    // The last backend goes: so does the label.
    Api::<LLMBackend>::namespaced(client.clone(), &late)
        .delete("ollama", &DeleteParams::default())
        .await
        .unwrap();
    chart.wait_namespace_label(&late, false).await;
}

/// Runs the injected pod's model (a mock, bound as the patch says) and its
/// gateway (with the rendered config), and shows the model answers only
/// through the gateway, with a token.
async fn bypass_is_closed(client: &Client, ns: &str, pod: &Pod) {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&format!(
            "{}-attach-gateway",
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
