//! The chart installed into the world (`webhook.url` mode, narrowed to the
//! namespaces labelled for this install), and the operator running outside
//! the cluster as the chart's ServiceAccount, with its webhook registered.

use attach_tests::operator::OperatorProcess;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;

use super::{install_crds, wait_for, world};

pub struct InstalledChart {
    pub release: String,
    pub release_namespace: String,
    pub service_account: String,
    /// Namespaces with this label go to this install's webhook.
    pub label: (String, String),
    pub operator: OperatorProcess,
    _kubeconfig: tempfile::TempPath,
}

impl InstalledChart {
    /// A fresh namespace this install's webhook covers.
    pub async fn namespace(&self, prefix: &str) -> String {
        let ns = world().namespace(prefix).await.unwrap();
        self.label_namespace(&ns);
        ns
    }

    /// Puts `ns` under this install's webhook.
    pub fn label_namespace(&self, ns: &str) {
        kubectl(&[
            "label",
            "--overwrite",
            "namespace",
            ns,
            &format!("{}={}", self.label.0, self.label.1),
        ]);
    }
}

/// Runs kubectl against the world; fails the test if it fails.
pub fn kubectl(args: &[&str]) -> std::process::Output {
    let out = world().kubectl().unwrap().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `kubectl apply -f` of `manifest`; returns what kubectl printed.
pub fn kubectl_apply(manifest: &str) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), manifest).unwrap();
    String::from_utf8_lossy(&kubectl(&["apply", "-f", file.path().to_str().unwrap()]).stdout)
        .into_owned()
}

/// `helm install`s the chart and starts the operator as its ServiceAccount.
pub async fn install_chart() -> InstalledChart {
    let world = world();
    install_crds();
    let release_namespace = world.namespace("attach-system").await.unwrap();
    let run = release_namespace.rsplit('-').next().unwrap().to_owned();
    let port = attach_tests::ports::free_port().unwrap();
    let release = format!("attach-{run}");
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/attach");
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
    let operator = OperatorProcess::start_with_kubeconfig(
        &kubeconfig,
        &[
            "--lease-name",
            &format!("{release}-operator"),
            "--namespace",
            &release_namespace,
            "--webhook",
            "true",
            "--webhook-addr",
            &format!("127.0.0.1:{port}"),
            "--webhook-dns-names",
            "127.0.0.1",
            "--webhook-secret",
            &format!("{release}-webhook-tls"),
            "--webhook-configuration",
            &release,
        ],
    )
    .await
    .unwrap();
    let mwcs: kube::Api<MutatingWebhookConfiguration> =
        kube::Api::all(world.client().await.unwrap());
    wait_for(&mwcs, &release, "caBundle set", |m| {
        m.webhooks
            .iter()
            .flatten()
            .all(|w| w.client_config.ca_bundle.is_some())
    })
    .await;
    InstalledChart {
        release,
        release_namespace,
        service_account,
        label,
        operator,
        _kubeconfig: kubeconfig,
    }
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
