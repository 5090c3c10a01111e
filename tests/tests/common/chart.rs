//! The chart installed into the world (`webhook.url` mode, narrowed to the
//! namespaces labelled for this install), and the operator running outside
//! the cluster as the chart's ServiceAccount, with its webhook registered.
//! Dropping it stops the operator and uninstalls the release.

use std::time::Duration;

use attach_tests::World;
use attach_tests::operator::OperatorProcess;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;

use super::{install_crds, wait_for, world};

/// The label the operator keeps on namespaces that hold an LLMBackend.
pub const NAMESPACE_LABEL: &str = "attach.dev/llm-backends";

pub struct InstalledChart {
    pub release: String,
    pub release_namespace: String,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub service_account: String,
    /// Namespaces with this label go to this install's webhook and policies.
    pub label: (String, String),
    pub operator: Option<OperatorProcess>,
    /// A kubeconfig acting as the chart's ServiceAccount.
    pub kubeconfig: tempfile::TempPath,
    webhook_port: u16,
    world: &'static World,
    installed: bool,
}

impl InstalledChart {
    /// A fresh namespace this install's webhook and policies cover.
    pub async fn namespace(&self, prefix: &str) -> String {
        let ns = self.world.namespace(prefix).await.unwrap();
        self.label_namespace(&ns);
        ns
    }

    /// Puts `ns` under this install's webhook and policies.
    pub fn label_namespace(&self, ns: &str) {
        kubectl_in(
            self.world,
            &[
                "label",
                "--overwrite",
                "namespace",
                ns,
                &format!("{}={}", self.label.0, self.label.1),
            ],
        );
    }

    /// Waits until the operator has labelled `ns` for the webhook (it holds
    /// an LLMBackend), or unlabelled it (`labelled` false).
    pub async fn wait_namespace_label(&self, ns: &str, labelled: bool) {
        let namespaces: kube::Api<Namespace> = kube::Api::all(self.world.client().await.unwrap());
        wait_for(
            &namespaces,
            ns,
            if labelled { "labelled" } else { "unlabelled" },
            |n| {
                n.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(NAMESPACE_LABEL))
                    .is_some_and(|v| v == "true")
                    == labelled
            },
        )
        .await;
    }

    /// A client acting as the chart's ServiceAccount.
    pub async fn service_account_client(&self) -> kube::Client {
        attach_tests::control_plane::client_for(&self.kubeconfig)
            .await
            .unwrap()
    }

    /// `kubectl` acting as the chart's ServiceAccount.
    pub fn kubectl_as_operator(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&*self.kubeconfig);
        cmd
    }

    /// Waits until the API server enforces the chart's admission policies:
    /// it loads a new ValidatingAdmissionPolicy and its binding a moment
    /// after they are created, and until then the writes they refuse pass.
    /// Probed with one of them: the ServiceAccount annotating its own
    /// namespace, retried until refused.
    async fn wait_for_admission_policies(&self) {
        let namespaces: kube::Api<Namespace> = kube::Api::all(self.service_account_client().await);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // A new value each time: an unchanged annotation is no change.
            let probe = serde_json::json!({"metadata": {"annotations": {"attach.dev/policy-probe": attempt.to_string()}}});
            match namespaces
                .patch(
                    &self.release_namespace,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&probe),
                )
                .await
            {
                Err(kube::Error::Api(e))
                    if e.code == 403 && e.message.contains("ValidatingAdmissionPolicy") =>
                {
                    return;
                }
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "the chart's admission policies are not enforced after 60 s: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the operator (SIGTERM, then waits).
    pub fn stop_operator(&mut self) {
        if let Some(mut operator) = self.operator.take() {
            operator.stop(Duration::from_secs(10));
        }
    }

    /// Starts the operator as the chart's ServiceAccount, with its webhook.
    pub async fn start_operator(&mut self) {
        self.stop_operator();
        let args = operator_args(&self.release, &self.release_namespace, self.webhook_port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.operator = Some(
            OperatorProcess::start_with_kubeconfig(&self.kubeconfig, &args)
                .await
                .unwrap(),
        );
    }

    /// The operator's log.
    pub fn operator_log(&self) -> String {
        self.operator
            .as_ref()
            .map(OperatorProcess::log)
            .unwrap_or_default()
    }

    /// `helm uninstall` (after stopping the operator); what helm printed.
    pub fn uninstall(&mut self) -> String {
        self.stop_operator();
        self.installed = false;
        let out = self
            .world
            .helm()
            .unwrap()
            .args([
                "uninstall",
                &self.release,
                "--namespace",
                &self.release_namespace,
                "--wait",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for InstalledChart {
    fn drop(&mut self) {
        self.stop_operator();
        if self.installed {
            // Its cluster-wide objects (webhook, policies) must not outlive
            // the test in a shared world.
            let _ = self.world.helm().map(|mut helm| {
                helm.args([
                    "uninstall",
                    &self.release,
                    "--namespace",
                    &self.release_namespace,
                ])
                .output()
            });
        }
    }
}

fn operator_args(release: &str, namespace: &str, port: u16) -> Vec<String> {
    [
        "--lease-name",
        &format!("{release}-operator"),
        "--namespace",
        namespace,
        "--webhook",
        "true",
        "--webhook-addr",
        &format!("127.0.0.1:{port}"),
        "--webhook-dns-names",
        "127.0.0.1",
        "--webhook-secret",
        &format!("{release}-webhook-tls"),
        "--webhook-configuration",
        release,
        "--gateway-image",
        "attach-gateway:e2e",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Runs kubectl against `world`; fails the test if it fails.
fn kubectl_in(world: &World, args: &[&str]) -> std::process::Output {
    let out = world.kubectl().unwrap().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs kubectl against the world; fails the test if it fails.
pub fn kubectl(args: &[&str]) -> std::process::Output {
    kubectl_in(world(), args)
}

/// `kubectl apply -f` of `manifest`; returns what kubectl printed.
pub fn kubectl_apply(manifest: &str) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), manifest).unwrap();
    String::from_utf8_lossy(&kubectl(&["apply", "-f", file.path().to_str().unwrap()]).stdout)
        .into_owned()
}

/// `helm install`s the chart (its CRDs left to [`install_crds`], shared by
/// every test process) and starts the operator as its ServiceAccount.
pub async fn install_chart() -> InstalledChart {
    install_crds();
    install_chart_in(world(), &["--set", "crds.enabled=false"]).await
}

/// `helm install`s the chart into `world` with `extra` helm arguments, and
/// starts the operator as its ServiceAccount.
pub async fn install_chart_in(world: &'static World, extra: &[&str]) -> InstalledChart {
    let release_namespace = world.namespace("attach-system").await.unwrap();
    let run = release_namespace.rsplit('-').next().unwrap().to_owned();
    let port = attach_tests::ports::free_port().unwrap();
    let release = format!("attach-{run}");
    let chart = attach_tests::source_tree::repo_root().join("charts/attach");
    let chart = chart.to_str().expect("a UTF-8 path");
    let label = ("attach.dev/chart-test".to_owned(), run.clone());
    let out = world
        .helm()
        .unwrap()
        .args([
            "install",
            &release,
            chart,
            "--namespace",
            &release_namespace,
        ])
        .args([
            "--set",
            &format!("webhook.url=https://127.0.0.1:{port}/mutate-pods"),
        ])
        // --set-string: a run id of digits only must stay a string.
        .args([
            "--set-string",
            &format!("webhook.namespaceLabels.attach\\.dev/chart-test={run}"),
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let service_account = format!("system:serviceaccount:{release_namespace}:{release}-operator");
    let kubeconfig = impersonating(
        &world.control_plane().unwrap().kubeconfig,
        &service_account,
        &release_namespace,
    );
    let mut chart = InstalledChart {
        release,
        release_namespace,
        service_account,
        label,
        operator: None,
        kubeconfig,
        webhook_port: port,
        world,
        installed: true,
    };
    chart.wait_for_admission_policies().await;
    chart.start_operator().await;
    let mwcs: kube::Api<MutatingWebhookConfiguration> =
        kube::Api::all(world.client().await.unwrap());
    wait_for(&mwcs, &chart.release, "caBundle set", |m| {
        m.webhooks
            .iter()
            .flatten()
            .all(|w| w.client_config.ca_bundle.is_some())
    })
    .await;
    chart
}

/// A copy of `kubeconfig` whose user impersonates `user` (a service account).
fn impersonating(kubeconfig: &std::path::Path, user: &str, namespace: &str) -> tempfile::TempPath {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let mut config: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    for u in config["users"].as_array_mut().unwrap() {
        u["user"]["as"] = serde_json::json!(user);
        u["user"]["as-groups"] = serde_json::json!([
            "system:serviceaccounts",
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated"
        ]);
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_yaml::to_string(&config).unwrap()).unwrap();
    file.into_temp_path()
}
