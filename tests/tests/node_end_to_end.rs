#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The whole chain with nothing imitated: the chart installed in the
//! cluster, the examples' Ollama and vLLM Deployments (their images swapped
//! for the model stand-in built here) injected by the operator's webhook and
//! run by the kubelet. From the running pods: the gateway started before the
//! model, the kubelet's probes pass through the admin port, the model
//! listens on loopback only; from another pod through the Services: 401,
//! 200, 403, 429 with Keycloak tokens; a quota raised with `kubectl apply`
//! reaches the running gateway through the ConfigMap volume's `..data` swap,
//! without a restart and without cutting a stream in flight; the vLLM pod runs in a PodSecurity `restricted`
//! namespace with its quotas in the world's Redis. The Ollama example runs
//! once more on the real Ollama (the `attach-ollama` image built here): the
//! injection binds it to loopback, its own `/` answers the moved probe, and
//! the quota counts exactly the tokens it reports. The llama.cpp example
//! (`engine: openai`, "any OpenAI-compatible server") runs on the real
//! llama-cpp-python server (the `attach-llamacpp` image built here), moved
//! to loopback through HOST and PORT. The MCP example (`engine: mcp`) runs
//! on the official MCP Python SDK's server (the `attach-mcp-tools` image),
//! judged tool by tool from another pod.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use attach_operator::crd::{ClusterIdentityProvider, LLMBackend};
use attach_tests::images::build::ImageBuild;
use attach_tests::keycloak::{AUDIENCE, REALM};
use attach_tests::node::inspect::{container_pids, listening_sockets, start_ticks};
use attach_tests::pod_client::{HttpCall, HttpResult, PodClient};
use common::node::{
    Release, TestNamespace, admin_port, client_pod, container_id, env_of, first_answer,
    gateway_metric, images, install_release, namespace, pod_ip, ready_pods,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// The YAML documents of an example, as JSON.
fn example(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(
        attach_tests::source_tree::repo_root()
            .join("examples")
            .join(path),
    )
    .unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(doc).unwrap()).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// `kubectl apply` of JSON documents.
fn apply(docs: &[Value]) -> String {
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
    common::kubectl_apply(&text.join("\n---\n"))
}

/// The example's documents, moved into `ns`, their model image replaced,
/// their ClusterIdentityProvider reference renamed to this run's.
fn adapted(path: &str, ns: &str, idp: &str) -> Vec<Value> {
    let mut docs = example(path);
    for doc in &mut docs {
        if doc["metadata"]["namespace"].is_string() {
            doc["metadata"]["namespace"] = json!(ns);
        }
        if doc["kind"] == "Deployment" {
            doc["spec"]["template"]["spec"]["containers"][0]["image"] = json!(images().model);
            doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(2);
        }
        if doc["kind"] == "LLMBackend" {
            for r in doc["spec"]["identityProviderRefs"].as_array_mut().unwrap() {
                r["name"] = json!(idp);
            }
        }
    }
    docs
}

/// A pod spec `restricted` admits: the model container locked down.
fn restrict(deployment: &mut Value) {
    let spec = &mut deployment["spec"]["template"]["spec"];
    spec["securityContext"] =
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}});
    spec["containers"][0]["securityContext"] = json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    });
}

fn kind<'a>(docs: &'a mut [Value], kind: &str) -> &'a mut Value {
    docs.iter_mut().find(|d| d["kind"] == kind).unwrap()
}

async fn chat(
    client: &PodClient,
    url: &str,
    token: Option<&str>,
    model: &str,
    extra: &[(&str, &str)],
) -> HttpResult {
    let mut call = HttpCall::new("POST", &format!("{url}/api/chat")).json(
        &json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    if let Some(token) = token {
        call = call.bearer(token);
    }
    for (k, v) in extra {
        call = call.header(k, v);
    }
    client.http(&call).await.unwrap()
}

/// The one model pod of `app` in `ns`, Ready.
async fn model_pod(ns: &str, app: &str) -> Pod {
    let client = common::world().client().await.unwrap();
    let pods = ready_pods(
        &client,
        ns,
        &format!("app={app}"),
        1,
        Duration::from_secs(180),
    )
    .await;
    pods.into_iter().next().unwrap()
}

/// Shows, from the running pod, what the injection promises.
async fn check_running_pod(pod: &Pod, model: &str, port: u16, other: &PodClient) {
    let spec = pod.spec.as_ref().unwrap();
    let gateway = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "attach-gateway")
        .expect("injected");
    assert_eq!(
        gateway.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );
    assert_eq!(gateway.image.as_deref(), Some(images().gateway.as_str()));

    // The gateway started before the model: the kubelet waited for its
    // startup probe.
    let gateway_pid = container_pids(&container_id(pod, "attach-gateway")).unwrap()[0];
    let model_pid = container_pids(&container_id(pod, model)).unwrap()[0];
    assert!(
        start_ticks(gateway_pid).unwrap() < start_ticks(model_pid).unwrap(),
        "the model started first"
    );

    // The gateway runs as uid 65532, without capabilities, on a read-only root.
    assert_eq!(
        common::node::process_identity(gateway_pid),
        ("65532".to_owned(), "0000000000000000".to_owned(), true),
        "the gateway's uid, capabilities and root"
    );

    // The kubelet's probes of the model (when the example has one) go to
    // the gateway's admin port, and pass.
    let admin = admin_port(pod);
    let model_container = spec.containers.iter().find(|c| c.name == model).unwrap();
    if let Some(probe) = &model_container.readiness_probe {
        assert_eq!(
            probe.http_get.as_ref().unwrap().port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(admin)),
            "{probe:?}"
        );
    }
    let statuses = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .clone()
        .unwrap();
    assert!(statuses.iter().all(|s| s.ready), "{statuses:?}");

    // The model listens on loopback only; the gateway holds the pod's port.
    let model_sockets = listening_sockets(model_pid).unwrap();
    assert!(!model_sockets.is_empty());
    assert!(
        model_sockets.iter().all(|a| a.ip().is_loopback()),
        "the model listens beyond loopback: {model_sockets:?}"
    );
    let upstream = model_sockets[0].port();
    let gateway_sockets = listening_sockets(gateway_pid).unwrap();
    assert!(
        gateway_sockets
            .iter()
            .any(|a| a.port() == port && a.ip().is_unspecified()),
        "{gateway_sockets:?}"
    );
    // So from another pod, the model's own port is closed, the gateway's open.
    let ip = pod_ip(pod);
    let direct = other
        .connect(&format!("{ip}:{upstream}"), Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        !direct.connected,
        "the model is reachable around the gateway: {direct:?}"
    );
    let through = other
        .connect(&format!("{ip}:{port}"), Duration::from_secs(2))
        .await
        .unwrap();
    assert!(through.connected, "{through:?}");
}

/// Creates this run's ClusterIdentityProvider (the world's Keycloak).
async fn cluster_idp(name: &str) {
    cluster_idp_with(name, &[]).await;
}

/// [`cluster_idp`], with the clients whose tokens are people's own
/// (`userClients`, which `humanOnly` rules need).
async fn cluster_idp_with(name: &str, user_clients: &[&str]) {
    let client = common::world().client().await.unwrap();
    let kc = common::world().keycloak().unwrap();
    let cidp: ClusterIdentityProvider = serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "ClusterIdentityProvider",
        "metadata": {"name": name},
        "spec": {"issuer": kc.issuer(REALM), "insecure": true, "audiences": [AUDIENCE],
                 "preset": "keycloak", "algorithms": ["RS256"], "userClients": user_clients},
    }))
    .unwrap();
    let cidps: Api<ClusterIdentityProvider> = Api::all(client);
    cidps.create(&PostParams::default(), &cidp).await.unwrap();
    common::wait_ready(&cidps, name, "True").await;
}

async fn covered_namespace(
    release: &Release,
    prefix: &str,
    labels: &[(&str, &str)],
) -> TestNamespace {
    let ns = namespace(prefix, labels).await;
    release.cover(&ns.name);
    ns
}

/// Bob's per-user budget is used up in the current minute: returns the
/// 429's Retry-After and when it came. Waits for a fresh minute first when
/// fewer than `need` seconds of this one are left.
async fn exhaust_bob(
    client: &PodClient,
    url: &str,
    bob: &str,
    limit: &str,
    need: u64,
) -> (u64, Instant) {
    for _ in 0..3 {
        let spent = chat(
            client,
            url,
            Some(bob),
            "llama3.2:1b",
            &[("x-mock-usage", limit)],
        )
        .await;
        if spent.status == 429 {
            // Already spent in this window: wait it out.
            let wait: u64 = spent.headers["retry-after"].parse().unwrap();
            tokio::time::sleep(Duration::from_secs(wait + 1)).await;
            continue;
        }
        assert_eq!(spent.status, 200, "{spent:?}");
        let refused = chat(client, url, Some(bob), "llama3.2:1b", &[]).await;
        let at = Instant::now();
        assert_eq!(refused.status, 429, "{refused:?}");
        let retry_after: u64 = refused.headers["retry-after"].parse().unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        if retry_after >= need {
            return (retry_after, at);
        }
        tokio::time::sleep(Duration::from_secs(retry_after + 1)).await;
    }
    panic!("could not use up bob's quota early enough in a minute");
}

#[tokio::test]
async fn the_examples_run_injected_and_enforce_access_and_quotas() {
    let world = common::world();
    let kube = world.client().await.unwrap();
    let kc = world.keycloak().unwrap();
    let release = install_release(&[]).await;
    let run = release.label.1.clone();
    let idp = format!("keycloak-{run}");
    cluster_idp(&idp).await;
    let (_client_ns, other) = client_pod().await;
    let alice = kc.token_for("alice").await.unwrap();
    let bob = kc.token_for("bob").await.unwrap();

    // ---- The Ollama example, as the team applies it.
    let ml = covered_namespace(&release, "ml-team", &[]).await;
    let backend_docs = adapted("ml-team/llm-backend.yaml", &ml.name, &idp);
    apply(&backend_docs);
    let backends: Api<LLMBackend> = Api::namespaced(kube.clone(), &ml.name);
    common::wait_ready(&backends, "ollama", "True").await;
    apply(&adapted("ml-team/ollama.yaml", &ml.name, &idp));
    let pod = model_pod(&ml.name, "ollama").await;
    // The example's readiness probe targeted the model's port.
    assert!(
        pod.spec.as_ref().unwrap().containers[0]
            .readiness_probe
            .is_some()
    );
    assert_eq!(
        env_of(&pod, "ollama")
            .get("OLLAMA_HOST")
            .map(String::as_str)
            .map(|h| h.starts_with("127.0.0.1:")),
        Some(true)
    );
    check_running_pod(&pod, "ollama", 11434, &other).await;

    let url = format!("http://ollama.{}.svc.cluster.local:11434", ml.name);
    first_answer(&other, &HttpCall::new("GET", &format!("{url}/"))).await;
    // No token.
    let r = chat(&other, &url, None, "llama3.2:1b", &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.headers["www-authenticate"].starts_with("Bearer"), "{r:?}");
    // alice (ai-power-users): a large model, streamed.
    let r = chat(
        &other,
        &url,
        Some(&alice),
        "llama3.1:70b",
        &[("x-mock-chunks", "5")],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body.lines().count(),
        6,
        "5 chunks and the final line: {}",
        r.body
    );
    // bob (staff): not that one, but a small one; no admin endpoints.
    let r = chat(&other, &url, Some(&bob), "llama3.1:70b", &[]).await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = chat(&other, &url, Some(&bob), "llama3.2:1b", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let pull = other
        .http(
            &HttpCall::new("POST", &format!("{url}/api/pull"))
                .bearer(&bob)
                .json(&json!({"model": "llama3.2:1b"})),
        )
        .await
        .unwrap();
    assert_eq!(pull.status, 403, "{pull:?}");

    // ---- The quota, raised with kubectl apply, reaches the running pod.
    let ip = pod_ip(&pod);
    let admin = admin_port(&pod);
    let gateway_id = container_id(&pod, "attach-gateway");
    let gateway_pid = container_pids(&gateway_id).unwrap()[0];
    let config_maps: Api<ConfigMap> = Api::namespaced(kube.clone(), &ml.name);
    // bob spends his 20,000 tokens a minute and is refused, with enough of
    // the minute left for the change to arrive (the windows are minutes:
    // were the change to arrive in the next one, a 200 would prove nothing).
    let (retry_after, refused_at) = exhaust_bob(&other, &url, &bob, "20000", 50).await;
    let before = config_maps.get("ollama-attach-gateway").await.unwrap();
    let hash = before.annotations()["attach.dev/config-hash"].clone();
    let reloads = gateway_metric(&ip, admin, "attach_config_reloads_total{result=\"ok\"}").await;
    // A stream in flight while the kubelet swaps the file.
    let in_flight = {
        let (other, url, alice) = (other.clone(), url.clone(), alice.clone());
        tokio::spawn(async move {
            let mut call = HttpCall::new("POST", &format!("{url}/api/chat"))
                .json(&json!({"model": "llama3.1:70b", "stream": true,
                              "messages": [{"role": "user", "content": "hi"}]}))
                .bearer(&alice)
                .header("x-mock-chunks", "40")
                .header("x-mock-delay-ms", "250");
            call.timeout_ms = Some(60_000);
            other.http(&call).await.unwrap()
        })
    };
    let mut raised = backend_docs.clone();
    kind(&mut raised, "LLMBackend")["spec"]["quotas"][0]["tokensPerMinute"] = json!(60000);
    apply(&raised);
    common::wait_for(&config_maps, "ollama-attach-gateway", "re-rendered", |cm| {
        cm.annotations()["attach.dev/config-hash"] != hash
    })
    .await;
    // The kubelet swaps the projected volume's ..data; the gateway reloads.
    let mut reloaded = reloads;
    for _ in 0..120 {
        reloaded = gateway_metric(&ip, admin, "attach_config_reloads_total{result=\"ok\"}").await;
        if reloaded > reloads {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(reloaded > reloads, "the gateway in the pod did not reload");
    let streamed = in_flight.await.unwrap();
    assert_eq!(
        (streamed.status, streamed.body.lines().count()),
        (200, 41),
        "the stream in flight during the reload: {streamed:?}"
    );
    let arrived = refused_at.elapsed();
    eprintln!("the raised quota arrived {arrived:?} after the refusal");
    // Still bob's refused minute: the new limit, not a new window, lets him on.
    let r = chat(
        &other,
        &url,
        Some(&bob),
        "llama3.2:1b",
        &[("x-mock-usage", "39000")],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // And his count survived the reload: 20,000 + 3 + 39,000 + ... is at 60,000.
    let r = chat(
        &other,
        &url,
        Some(&bob),
        "llama3.2:1b",
        &[("x-mock-usage", "1000")],
    )
    .await;
    let r2 = chat(&other, &url, Some(&bob), "llama3.2:1b", &[]).await;
    assert!(
        refused_at.elapsed() < Duration::from_secs(retry_after),
        "the minute ended before the checks; they prove nothing"
    );
    assert_eq!((r.status, r2.status), (200, 429), "{r:?} {r2:?}");
    // Without a restart.
    let now = model_pod(&ml.name, "ollama").await;
    assert_eq!(container_id(&now, "attach-gateway"), gateway_id);
    assert_eq!(container_pids(&gateway_id).unwrap()[0], gateway_pid);
    let status = now.status.unwrap();
    for s in status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
    {
        assert_eq!(s.restart_count, 0, "{s:?}");
    }

    // ---- The vLLM example in a PodSecurity `restricted` namespace, its
    // quotas shared through the world's Redis.
    let vllm = covered_namespace(
        &release,
        "vllm-team",
        &[
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/enforce-version", "latest"),
        ],
    )
    .await;
    // The backend (and its Redis Secret, pointed at the world's Redis)
    // before the model, as for Ollama.
    let mut docs = adapted("vllm-team/vllm.yaml", &vllm.name, &idp);
    kind(&mut docs, "Secret")["stringData"]["url"] = json!(world.redis_url().unwrap());
    restrict(kind(&mut docs, "Deployment"));
    let (deployment, rest): (Vec<Value>, Vec<Value>) =
        docs.into_iter().partition(|d| d["kind"] == "Deployment");
    apply(&rest);
    let backends: Api<LLMBackend> = Api::namespaced(kube.clone(), &vllm.name);
    common::wait_ready(&backends, "vllm", "True").await;
    apply(&deployment);
    let pod = model_pod(&vllm.name, "vllm").await;
    check_running_pod(&pod, "vllm", 8000, &other).await;
    let url = format!("http://vllm.{}.svc.cluster.local:8000", vllm.name);
    first_answer(&other, &HttpCall::new("GET", &format!("{url}/"))).await;
    let completion = |token: Option<&str>| {
        let mut call = HttpCall::new("POST", &format!("{url}/v1/chat/completions")).json(&json!({
            "model": "meta-llama/Llama-3.2-1B-Instruct",
            "messages": [{"role": "user", "content": "hi"}],
        }));
        if let Some(token) = token {
            call = call.bearer(token);
        }
        call
    };
    let r = other.http(&completion(None)).await.unwrap();
    assert_eq!(r.status, 401, "{r:?}");
    let r = other.http(&completion(Some(&alice))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    // The gateway in the pod counted alice's tokens in the world's Redis.
    let mut redis = redis::Client::open(world.redis_url().unwrap())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "no quota counters in Redis");

    // The restricted namespace admitted the injected pod: it runs.
    assert!(common::node::is_ready(&pod));
    drop(release);
}

/// Applies an example to a new namespace the release covers, as a team
/// would: its `LLMBackend` (`(file, name)`) first, waited Ready, then its
/// workload (`(file, app label)`) with `image` as the model's. Returns the
/// namespace and the workload's Ready pod.
async fn deploy_example(
    release: &Release,
    prefix: &str,
    idp: &str,
    (backend_file, backend): (&str, &str),
    (workload_file, app): (&str, &str),
    image: &str,
) -> (TestNamespace, Pod) {
    let kube = common::world().client().await.unwrap();
    let ns = covered_namespace(release, prefix, &[]).await;
    apply(&adapted(backend_file, &ns.name, idp));
    let backends: Api<LLMBackend> = Api::namespaced(kube, &ns.name);
    common::wait_ready(&backends, backend, "True").await;
    let mut docs = adapted(workload_file, &ns.name, idp);
    kind(&mut docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!(image);
    apply(&docs);
    let pod = model_pod(&ns.name, app).await;
    (ns, pod)
}

/// Prepares an image's files in a temporary folder with `build`, builds it
/// and pushes it to the world's registry; returns its reference.
async fn pushed(
    build: impl AsyncFnOnce(&Path) -> Result<ImageBuild, attach_tests::HarnessError>,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let build = build(dir.path()).await.unwrap();
    let images = common::world().images().unwrap().clone();
    tokio::task::spawn_blocking(move || build.build_and_push(&images))
        .await
        .unwrap()
        .unwrap()
        .reference
}

/// The real Ollama image (built here, with the tiny models under the
/// example's names), pushed to the world's registry once per process.
async fn ollama_image() -> String {
    static IMAGE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    IMAGE
        .get_or_init(|| pushed(async |dir| attach_tests::images::ollama::image_build(dir).await))
        .await
        .clone()
}

/// A streamed chat to the real Ollama, cut at a few tokens (random
/// weights need not ever stop on their own).
async fn short_chat(client: &PodClient, url: &str, token: Option<&str>, model: &str) -> HttpResult {
    let mut call = HttpCall::new("POST", &format!("{url}/api/chat")).json(&json!({
        "model": model, "stream": true, "options": {"num_predict": 8},
        "messages": [{"role": "user", "content": "hi"}],
    }));
    // The first answer loads the model into a runner.
    call.timeout_ms = Some(60_000);
    if let Some(token) = token {
        call = call.bearer(token);
    }
    client.http(&call).await.unwrap()
}

/// The last NDJSON object of a streamed Ollama answer.
fn last_line(body: &str) -> Value {
    let line = body.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    serde_json::from_str(line).unwrap()
}

#[tokio::test]
async fn the_ollama_example_runs_on_the_real_ollama_injected() {
    let world = common::world();
    let kc = world.keycloak().unwrap();
    let image = ollama_image().await;
    let release = install_release(&[]).await;
    let idp = format!("keycloak-{}", release.label.1);
    cluster_idp(&idp).await;
    let (_client_ns, other) = client_pod().await;
    let alice = kc.token_for("alice").await.unwrap();
    let bob = kc.token_for("bob").await.unwrap();

    // The example as the team applies it, with only the image changed: the
    // real server, built here, not the stand-in.
    let (ml, pod) = deploy_example(
        &release,
        "ml-ollama",
        &idp,
        ("ml-team/llm-backend.yaml", "ollama"),
        ("ml-team/ollama.yaml", "ollama"),
        &image,
    )
    .await;
    // Ollama itself took the loopback address the injection gave it
    // (OLLAMA_HOST), and its own `/` answers the rewritten readiness probe.
    check_running_pod(&pod, "ollama", 11434, &other).await;

    let url = format!("http://ollama.{}.svc.cluster.local:11434", ml.name);
    first_answer(&other, &HttpCall::new("GET", &format!("{url}/"))).await;
    let r = short_chat(&other, &url, None, "llama3.2:1b").await;
    assert_eq!(r.status, 401, "{r:?}");
    // Bob (staff) may not use the large model: refused before Ollama.
    let r = short_chat(&other, &url, Some(&bob), "llama3.1:70b").await;
    assert_eq!(r.status, 403, "{r:?}");
    // Ollama's own case-insensitive lookup does not open it either.
    let r = short_chat(&other, &url, Some(&bob), "Llama3.1:70B").await;
    assert_eq!(r.status, 403, "{r:?}");

    // Alice (ai-power-users) and bob's small model: Ollama generates.
    let ip = pod_ip(&pod);
    let admin = admin_port(&pod);
    let series = r#"attach_tokens_total{model="llama3.2:1b",kind="completion""#;
    let before = gateway_metric(&ip, admin, series).await;
    let r = short_chat(&other, &url, Some(&bob), "llama3.2:1b").await;
    assert_eq!(r.status, 200, "{r:?}");
    let done = last_line(&r.body);
    assert_eq!(done["done"], true, "{}", r.body);
    assert_eq!(done["model"], "llama3.2:1b");
    let generated = done["eval_count"].as_f64().unwrap();
    assert!(generated >= 1.0, "{done}");
    // The quota counted exactly what Ollama reported.
    let after = gateway_metric(&ip, admin, series).await;
    assert!(
        (after - before - generated).abs() < f64::EPSILON,
        "counted {} for {generated} generated",
        after - before
    );
    let r = short_chat(&other, &url, Some(&alice), "llama3.1:70b").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(last_line(&r.body)["model"], "llama3.1:70b");
    // The model list shows bob only what he may use.
    let tags = other
        .http(&HttpCall::new("GET", &format!("{url}/api/tags")).bearer(&bob))
        .await
        .unwrap();
    assert_eq!(tags.status, 200, "{tags:?}");
    let names: Vec<String> = serde_json::from_str::<Value>(&tags.body).unwrap()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"llama3.2:1b".to_owned()), "{names:?}");
    assert!(!names.contains(&"llama3.1:70b".to_owned()), "{names:?}");
    // Pulling is an admin endpoint: refused, whoever asks.
    let pull = other
        .http(
            &HttpCall::new("POST", &format!("{url}/api/pull"))
                .json(&json!({"model": "llama3.2:1b"}))
                .bearer(&alice),
        )
        .await
        .unwrap();
    assert_eq!(pull.status, 403, "{pull:?}");
    drop(release);
}

/// The llama.cpp image (built here: llama-cpp-python's server and the tiny
/// models under the file names the example's server config loads), pushed
/// to the world's registry once per process.
async fn llamacpp_image() -> String {
    static IMAGE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    IMAGE
        .get_or_init(|| pushed(async |dir| attach_tests::images::llamacpp::image_build(dir).await))
        .await
        .clone()
}

/// A chat completion of a few tokens (random weights need not stop).
async fn openai_chat(
    client: &PodClient,
    url: &str,
    token: Option<&str>,
    model: &str,
) -> HttpResult {
    let mut call = HttpCall::new("POST", &format!("{url}/v1/chat/completions")).json(&json!({
        "model": model, "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }));
    call.timeout_ms = Some(60_000);
    if let Some(token) = token {
        call = call.bearer(token);
    }
    client.http(&call).await.unwrap()
}

#[tokio::test]
async fn the_llamacpp_example_runs_on_the_real_llamacpp_server_injected() {
    let world = common::world();
    let kc = world.keycloak().unwrap();
    let image = llamacpp_image().await;
    let release = install_release(&[]).await;
    let idp = format!("keycloak-{}", release.label.1);
    cluster_idp(&idp).await;
    let (_client_ns, other) = client_pod().await;
    let alice = kc.token_for("alice").await.unwrap();
    let bob = kc.token_for("bob").await.unwrap();

    // "Any OpenAI-compatible server": the example as the team applies it
    // (its server config in a ConfigMap, HOST and PORT as the rebinding),
    // with only the image changed.
    let (team, pod) = deploy_example(
        &release,
        "llamacpp",
        &idp,
        ("llamacpp-team/llm-backend.yaml", "llama-cpp"),
        ("llamacpp-team/llamacpp.yaml", "llama-cpp"),
        &image,
    )
    .await;
    // The server took the loopback address the injection gave it through
    // HOST and PORT, and its own /v1/models answers the moved probe.
    check_running_pod(&pod, "llama-cpp", 8000, &other).await;

    let url = format!("http://llama-cpp.{}.svc.cluster.local:8000", team.name);
    first_answer(&other, &HttpCall::new("GET", &format!("{url}/"))).await;
    let small = "llama-3.2-1b-instruct";
    let big = "llama-3.1-70b-instruct";
    let r = openai_chat(&other, &url, None, small).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.headers["www-authenticate"].starts_with("Bearer"), "{r:?}");
    // Bob (staff) may not use the large model: refused before the server.
    let r = openai_chat(&other, &url, Some(&bob), big).await;
    assert_eq!(r.status, 403, "{r:?}");

    // Bob's small model: llama.cpp generates, and the quota counts exactly
    // the usage the server reported.
    let ip = pod_ip(&pod);
    let admin = admin_port(&pod);
    let series = format!(r#"attach_tokens_total{{model="{small}",kind="completion""#);
    let before = gateway_metric(&ip, admin, &series).await;
    let r = openai_chat(&other, &url, Some(&bob), small).await;
    assert_eq!(r.status, 200, "{r:?}");
    let answer: Value = serde_json::from_str(&r.body).unwrap();
    let generated = answer["usage"]["completion_tokens"].as_f64().unwrap();
    assert!(generated >= 1.0, "{answer}");
    let after = gateway_metric(&ip, admin, &series).await;
    assert!(
        (after - before - generated).abs() < f64::EPSILON,
        "counted {} for {generated} generated",
        after - before
    );
    // Alice (ai-power-users) may use the large one.
    let r = openai_chat(&other, &url, Some(&alice), big).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Bob may embed with the small embedding model.
    let r = other
        .http(
            &HttpCall::new("POST", &format!("{url}/v1/embeddings"))
                .json(&json!({"model": "nomic-embed-text-v1.5", "input": "hello"}))
                .bearer(&bob),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let embedding: Value = serde_json::from_str(&r.body).unwrap();
    assert!(
        !embedding["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{embedding}"
    );
    // The model list shows bob only what he may use.
    let models = other
        .http(&HttpCall::new("GET", &format!("{url}/v1/models")).bearer(&bob))
        .await
        .unwrap();
    assert_eq!(models.status, 200, "{models:?}");
    let ids: Vec<String> = serde_json::from_str::<Value>(&models.body).unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&small.to_owned()), "{ids:?}");
    assert!(!ids.contains(&big.to_owned()), "{ids:?}");
    // llama-cpp-python's own tokenizer routes are not OpenAI endpoints: the
    // gateway does not know them, so they are refused, whoever asks.
    let r = other
        .http(
            &HttpCall::new("POST", &format!("{url}/extras/tokenize"))
                .json(&json!({"model": small, "input": "hello"}))
                .bearer(&alice),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    drop(release);
}

/// The MCP server image (built here: the official MCP Python SDK's server
/// on its Python runtime), pushed to the world's registry once per process.
async fn mcp_tools_image() -> String {
    static IMAGE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    IMAGE
        .get_or_init(|| pushed(async |dir| attach_tests::images::mcp_tools::image_build(dir).await))
        .await
        .clone()
}

/// A JSON-RPC request of MCP protocol 2026-07-28 (no session: each request
/// carries its version and capabilities, and its method and name in
/// headers), sent from another pod.
async fn mcp_call(
    client: &PodClient,
    url: &str,
    token: Option<&str>,
    method: &str,
    params: Value,
) -> (u16, Value) {
    let mut params = params;
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let name = params["name"].as_str().map(str::to_owned);
    let mut call = HttpCall::new("POST", url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = &name {
        call = call.header("mcp-name", name);
    }
    if let Some(token) = token {
        call = call.bearer(token);
    }
    let r = client.http(&call).await.unwrap();
    // A JSON answer, or an SSE stream whose last data line is the answer.
    let text = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .rfind(|l| l.starts_with('{'))
        .unwrap_or(&r.body)
        .to_owned();
    (r.status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_mcp_example_runs_injected_and_is_judged_tool_by_tool() {
    let world = common::world();
    let kc = world.keycloak().unwrap();
    let image = mcp_tools_image().await;
    let release = install_release(&[]).await;
    let docs = example("mcp-team/llm-backend.yaml");
    let resource = docs[0]["spec"]["mcp"]["resource"]
        .as_str()
        .unwrap()
        .to_owned();
    let clients = kc
        .resource_clients(&resource, &["mcp:deploy"])
        .await
        .unwrap();
    let idp = format!("keycloak-{}", release.label.1);
    cluster_idp_with(&idp, &[clients.user.as_str()]).await;
    let (_client_ns, other) = client_pod().await;
    let bob = kc
        .resource_user_token(&clients, "bob", "openid")
        .await
        .unwrap();

    // The example as the team applies it, with only the image changed.
    let (team, pod) = deploy_example(
        &release,
        "mcp",
        &idp,
        ("mcp-team/llm-backend.yaml", "docs-tools"),
        ("mcp-team/docs-tools.yaml", "docs-tools"),
        &image,
    )
    .await;
    // The server took the loopback address the injection gave it (HOST,
    // PORT), and its /healthz answers the moved probe.
    check_running_pod(&pod, "tools", 8000, &other).await;

    let base = format!("http://docs-tools.{}.svc.cluster.local:8000", team.name);
    first_answer(&other, &HttpCall::new("GET", &format!("{base}/"))).await;
    let url = format!("{base}/mcp");
    let (status, _) = mcp_call(&other, &url, None, "tools/list", json!({})).await;
    assert_eq!(status, 401);
    // Bob (staff) sees and calls only what the example's rules give him.
    let (status, answer) = mcp_call(&other, &url, Some(&bob), "tools/list", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let mut tools: Vec<&str> = answer["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    tools.sort_unstable();
    assert_eq!(tools, ["search_docs", "whoami"], "{answer}");
    let (status, answer) = mcp_call(
        &other,
        &url,
        Some(&bob),
        "tools/call",
        json!({"name": "search_docs", "arguments": {"query": "pods"}}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["result"]["structuredContent"]["result"],
        "found: pods"
    );
    let (status, answer) = mcp_call(
        &other,
        &url,
        Some(&bob),
        "tools/call",
        json!({"name": "delete_all", "arguments": {}}),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    // The deploy tool needs a scope bob's token does not have.
    let (status, _) = mcp_call(
        &other,
        &url,
        Some(&bob),
        "tools/call",
        json!({"name": "deploy_app", "arguments": {"name": "x"}}),
    )
    .await;
    assert_eq!(status, 403);
    // The server got bob's identity, not his token.
    let (status, answer) = mcp_call(
        &other,
        &url,
        Some(&bob),
        "tools/call",
        json!({"name": "whoami", "arguments": {}}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let text = answer["result"]["content"][0]["text"].as_str().unwrap();
    let who: Value = serde_json::from_str(text).unwrap();
    assert_eq!(who["authorization"], false, "{who}");
    assert!(who["groups"].as_str().unwrap().contains("staff"), "{who}");
    drop(release);
}
