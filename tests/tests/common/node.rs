//! For the tests that run real pods on the world's node: the project's
//! images, namespaces that go away with the test, pods waited for, the
//! in-cluster test client, the chart installed with the local images, and
//! looks from the host into a running pod (its processes, its sockets).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use attach_tests::images::build::build_project_images;
pub use attach_tests::images::build::split_reference;
use attach_tests::pod_client::{HttpCall, HttpResult, PodClient};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::chart::kubectl;
use super::world;

/// The image references pods use.
#[derive(Debug, Clone)]
pub struct Images {
    pub gateway: String,
    pub operator: String,
    /// The model stand-in (ATTACH_MODEL_IMAGE overrides it: any image
    /// serving Ollama's API on OLLAMA_HOST and vLLM's on --host/--port).
    pub model: String,
}

/// The project's images: from ATTACH_{GATEWAY,OPERATOR,MODEL}_IMAGE when
/// set (scripts/e2e builds them once), else built now into the world's
/// registry (once per test process).
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let from_env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
        if let (Some(gateway), Some(operator), Some(model)) = (
            from_env("ATTACH_GATEWAY_IMAGE"),
            from_env("ATTACH_OPERATOR_IMAGE"),
            from_env("ATTACH_MODEL_IMAGE"),
        ) {
            return Images {
                gateway,
                operator,
                model,
            };
        }
        let built = build_project_images(world().images().unwrap()).unwrap();
        let by_name = |name: &str| {
            built
                .iter()
                .find(|i| i.name == name)
                .unwrap()
                .reference
                .clone()
        };
        Images {
            gateway: by_name("attach-gateway"),
            operator: by_name("attach-operator"),
            model: from_env("ATTACH_MODEL_IMAGE").unwrap_or_else(|| by_name("attach-mock-model")),
        }
    })
}

/// A namespace deleted (without waiting) when the test ends, so that its
/// pods do not hold the shared node's resources.
pub struct TestNamespace {
    pub name: String,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = world().kubectl().map(|mut k| {
            k.args(["delete", "namespace", &self.name, "--wait=false"])
                .output()
        });
    }
}

/// A fresh namespace `<prefix>-<random>` with `labels`.
pub async fn namespace(prefix: &str, labels: &[(&str, &str)]) -> TestNamespace {
    TestNamespace {
        name: world().namespace_with_labels(prefix, labels).await.unwrap(),
    }
}

/// Whether the pod is Ready.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits (up to `timeout`) until `count` pods matching `selector` in `ns`
/// are Ready; returns them. Fails with the pods' status.
pub async fn ready_pods(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        let ready: Vec<Pod> = list
            .items
            .iter()
            .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        if ready.len() >= count {
            return ready;
        }
        if tokio::time::Instant::now() >= deadline {
            let status: Vec<_> = list
                .items
                .iter()
                .map(|p| (p.metadata.name.clone(), p.status.clone()))
                .collect();
            panic!("{count} pods {selector} in {ns} not Ready after {timeout:?}: {status:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The pod's IP.
pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a running pod has an IP")
}

/// Starts the in-cluster test client (attach-pod-client in the model
/// image) in a namespace of its own and returns it once Ready.
pub async fn client_pod() -> (TestNamespace, PodClient) {
    let ns = namespace("client", &[]).await;
    let client = start_client(&ns.name, "client", "", "").await;
    (ns, client)
}

/// Where [`client_pod_as`] mounts the workload's projected token.
pub const WORKLOAD_TOKEN: &str = "/var/run/attach/token";

/// The test client as a workload: pod `pod` in `ns`, running as
/// ServiceAccount `account` (created if missing), with no API token but a
/// projected token for `audience` at [`WORKLOAD_TOKEN`], as an agent's pod
/// mounts it.
pub async fn client_pod_as(ns: &str, pod: &str, account: &str, audience: &str) -> PodClient {
    super::kubectl_apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {account}, namespace: {ns}}}\nautomountServiceAccountToken: false\n"
    ));
    let identity = format!(
        "  serviceAccountName: {account}\n  automountServiceAccountToken: false\n  volumes:\n    - name: attach-token\n      projected:\n        sources:\n          - serviceAccountToken: {{path: token, audience: \"{audience}\", expirationSeconds: 600}}\n"
    );
    let mount =
        "      volumeMounts: [{name: attach-token, mountPath: /var/run/attach, readOnly: true}]\n";
    start_client(ns, pod, &identity, mount).await
}

/// Runs client pod `pod` in `ns` (with extra pod-spec and container lines)
/// and waits until it is Ready.
async fn start_client(ns: &str, pod: &str, pod_extra: &str, container_extra: &str) -> PodClient {
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  namespace: {ns}
  labels: {{app: attach-test-client, client: {pod}}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    # The image's user, stated: the kubelet gives a projected token to it.
    runAsUser: 65532
    seccompProfile: {{type: RuntimeDefault}}
{pod_extra}  containers:
    - name: client
      image: {image}
      command: [/attach-pod-client, serve, --listen, "0.0.0.0:8080"]
      ports: [{{containerPort: 8080}}]
      readinessProbe:
        httpGet: {{path: /healthz, port: 8080}}
        periodSeconds: 1
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {{drop: [ALL]}}
{container_extra}"#,
        image = images().model,
    );
    super::kubectl_apply(&manifest);
    let client = world().client().await.unwrap();
    let pods = ready_pods(
        &client,
        ns,
        &format!("client={pod}"),
        1,
        Duration::from_secs(120),
    )
    .await;
    PodClient::new(&pod_ip(&pods[0]))
}

/// The chart installed in the cluster: the operator runs as pods from the
/// local image, with its ServiceAccount; the webhook is reached through its
/// Service. Only namespaces labelled `label` go to this release's webhook.
pub struct Release {
    pub name: String,
    pub namespace: TestNamespace,
    pub label: (String, String),
}

impl Release {
    /// Puts `ns` under this release's webhook.
    pub fn cover(&self, ns: &str) {
        kubectl(&[
            "label",
            "--overwrite",
            "namespace",
            ns,
            &format!("{}={}", self.label.0, self.label.1),
        ]);
    }

    /// The operator's pods, once `count` of them are Ready.
    pub async fn operator_pods(&self, count: usize) -> Vec<Pod> {
        let client = world().client().await.unwrap();
        ready_pods(
            &client,
            &self.namespace.name,
            &format!("app.kubernetes.io/instance={}", self.name),
            count,
            Duration::from_secs(120),
        )
        .await
    }
}

/// `helm install` of charts/attach with the local images, waiting until
/// the operator Deployment is available and the webhook's caBundle is set.
pub async fn install_release(extra_values: &[&str]) -> Release {
    super::install_crds();
    let namespace = namespace("attach-system", &[]).await;
    let run = namespace.name.rsplit('-').next().unwrap().to_owned();
    let name = format!("attach-{run}");
    let images = images();
    let (repository, tag) = split_reference(&images.operator);
    let chart = attach_tests::source_tree::repo_root().join("charts/attach");
    let chart = chart.to_str().expect("a UTF-8 path");
    let mut helm = world().helm().unwrap();
    helm.args(["install", &name, chart, "--namespace", &namespace.name])
        .args(["--set", &format!("image.repository={repository}")])
        .args(["--set", &format!("image.tag={tag}")])
        .args(["--set", &format!("gateway.image={}", images.gateway)])
        // The CRDs are shared by every release of the world (install_crds).
        .args(["--set", "crds.enabled=false"])
        // --set-string: a run id of digits only must stay a string.
        .args([
            "--set-string",
            &format!("webhook.namespaceLabels.attach\\.dev/chart-test={run}"),
        ])
        .args(["--wait", "--timeout", "180s"]);
    for value in extra_values {
        helm.args(["--set", value]);
    }
    let out = helm.output().unwrap();
    assert!(
        out.status.success(),
        "helm install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mwcs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(world().client().await.unwrap());
    super::wait_for(&mwcs, &name, "caBundle set", |m| {
        m.webhooks
            .iter()
            .flatten()
            .all(|w| w.client_config.ca_bundle.is_some())
    })
    .await;
    Release {
        name,
        namespace,
        label: ("attach.dev/chart-test".into(), run),
    }
}

/// The container ID (without `containerd://`) of `container` in `pod`,
/// init containers included.
pub fn container_id(pod: &Pod, container: &str) -> String {
    let status = pod.status.as_ref().expect("status");
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|s| s.name == container)
        .and_then(|s| s.container_id.clone())
        .and_then(|id| id.split_once("://").map(|(_, id)| id.to_owned()))
        .unwrap_or_else(|| panic!("no running {container} in the pod"))
}

/// Prometheus counter sum from the gateway's admin `/metrics` at `pod_ip`.
pub async fn gateway_metric(pod_ip: &str, admin_port: u16, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{pod_ip}:{admin_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    attach_tests::gateway::metric_sum(&text, series)
}

/// The `--admin-port` of the injected gateway.
pub fn admin_port(pod: &Pod) -> u16 {
    let gateway = pod
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "attach-gateway")
        .expect("an injected pod");
    let args = gateway.args.clone().unwrap_or_default();
    let i = args.iter().position(|a| a == "--admin-port").unwrap();
    args[i + 1].parse().unwrap()
}

/// `{name: value}` of a container's environment.
pub fn env_of(pod: &Pod, container: &str) -> BTreeMap<String, String> {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == container)
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

/// `(uid, effective capabilities)` from /proc/<pid>/status, and whether its
/// root filesystem is mounted read-only.
pub fn process_identity(pid: i32) -> (String, String, bool) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_ro = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .is_some_and(|l| l.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"));
    (field("Uid:"), field("CapEff:"), root_ro)
}

/// `call` from `client`, retried until it gets an answer: a Service
/// reaches a pod only once kube-proxy has programmed its new endpoint, a
/// moment after the pod turns Ready (until then, a connection to the
/// cluster IP is refused or has no route). The first answer, whatever
/// its status.
pub async fn first_answer(client: &PodClient, call: &HttpCall) -> HttpResult {
    let mut last = None;
    for _ in 0..120 {
        match client.http(call).await {
            Ok(answer) => return answer,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{} never answered: {last:?}", call.url);
}
