#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The Helm chart and the GitOps examples: the chart's CRDs are the
//! generated ones, `helm lint` is clean, `helm template` matches its golden
//! files, the chart installs into the real API server, its RBAC is enough
//! for the operator (run as the chart's ServiceAccount) and no more, and
//! every example passes `kubectl apply --dry-run=server`.

mod common;

use attach_operator::crd::LLMBackend;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Output;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    root().join("charts/attach")
}

fn run(mut cmd: std::process::Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn helm(args: &[&str]) -> Output {
    let mut cmd = common::world().helm().unwrap();
    cmd.args(args);
    run(cmd)
}

fn kubectl(args: &[&str]) -> Output {
    let mut cmd = common::world().kubectl().unwrap();
    cmd.args(args);
    run(cmd)
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    let mut names = Vec::new();
    let yaml = |entry: std::io::Result<std::fs::DirEntry>| {
        let path = entry.unwrap().path();
        path.extension()
            .is_some_and(|e| e == "yaml")
            .then_some(path)
    };
    for path in std::fs::read_dir(root().join("crds"))
        .unwrap()
        .filter_map(yaml)
    {
        let name = path.file_name().unwrap().to_owned();
        let copy = chart().join("crds").join(&name);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::fs::read_to_string(&copy).unwrap_or_default(),
            "charts/attach/crds/{} differs from crds/: cp crds/*.yaml charts/attach/crds/",
            name.to_string_lossy()
        );
        names.push(name);
    }
    assert_eq!(
        std::fs::read_dir(chart().join("crds"))
            .unwrap()
            .filter_map(yaml)
            .count(),
        names.len(),
        "charts/attach/crds/ has a file crds/ does not"
    );
}

#[test]
fn helm_lint_is_clean() {
    let out = helm(&["lint", "--strict", chart().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("[WARNING]") && !text.contains("[ERROR]"),
        "{text}"
    );
    // The schema refuses a bad value, naming it.
    let mut cmd = common::world().helm().unwrap();
    cmd.args([
        "template",
        "attach",
        chart().to_str().unwrap(),
        "--kube-version",
        "1.35.4",
    ])
    .args(["--set", "webhook.failurePolicy=Sometimes"]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("failurePolicy"));
}

#[test]
fn helm_template_matches_its_golden_files() {
    let fixtures = root().join("tests/fixtures/helm");
    let update = std::env::var_os("ATTACH_UPDATE_GOLDEN").is_some();
    let custom = fixtures.join("custom-values.yaml");
    let chart = chart();
    for (name, extra) in [
        ("default", vec![]),
        ("custom", vec!["-f", custom.to_str().unwrap()]),
    ] {
        let mut args = vec![
            "template",
            "attach",
            chart.to_str().unwrap(),
            "--namespace",
            "attach-system",
            "--kube-version",
            "1.35.4",
        ];
        args.extend(extra);
        let got = String::from_utf8(helm(&args).stdout).unwrap();
        let golden = fixtures.join(format!("{name}.golden.yaml"));
        if update {
            std::fs::write(&golden, &got).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&golden).unwrap_or_default(),
            got,
            "helm template ({name}) changed; ATTACH_UPDATE_GOLDEN=1 regenerates {}",
            golden.display()
        );
    }
}

#[tokio::test]
async fn the_chart_installs_and_its_rbac_runs_the_operator() {
    let world = common::world();
    let chart = common::install_chart().await;

    // What it needs, it may do: the caBundle is set (install_chart waits
    // for it), a backend gets Ready, a selected pod is injected.
    let client = world.client().await.unwrap();
    let ns = chart.namespace("chart-team").await;
    let kc = world.keycloak().unwrap();
    let manifest = format!(
        "apiVersion: attach.dev/v1alpha1\nkind: IdentityProvider\nmetadata: {{name: keycloak, namespace: {ns}}}\nspec: {{issuer: \"{}\", insecure: true, audiences: [attach-gateway], preset: keycloak}}\n---\napiVersion: attach.dev/v1alpha1\nkind: LLMBackend\nmetadata: {{name: ollama, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: ollama}}}}\n  engine: ollama\n  port: 11434\n  identityProviderRefs: [{{name: keycloak}}]\n",
        kc.issuer(attach_tests::keycloak::REALM)
    );
    common::kubectl_apply(&manifest);
    let backends: Api<LLMBackend> = Api::namespaced(client.clone(), &ns);
    common::wait_ready(&backends, "ollama", "True").await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "ollama-0", "labels": {"app": "ollama"}},
        "spec": {"containers": [{"name": "ollama", "image": "ollama/ollama", "ports": [{"containerPort": 11434}]}]},
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert!(
        created
            .spec
            .unwrap()
            .init_containers
            .unwrap_or_default()
            .iter()
            .any(|c| c.name == "attach-gateway"),
        "not injected"
    );
    assert!(
        !chart.operator.log().contains("Forbidden"),
        "{}",
        chart.operator.log()
    );

    // What it does not need, it may not do.
    for (verb, resource, namespace) in [
        ("delete", "pods", ns.as_str()),
        ("create", "pods", ns.as_str()),
        ("update", "deployments", ns.as_str()),
        ("delete", "llmbackends.attach.dev", ns.as_str()),
        ("update", "llmbackends.attach.dev", ns.as_str()),
        ("delete", "secrets", ns.as_str()),
        ("patch", "mutatingwebhookconfigurations/some-other", ""),
        ("create", "clusterroles", ""),
        ("update", "leases", ns.as_str()),
    ] {
        let mut cmd = world.kubectl().unwrap();
        cmd.args([
            "auth",
            "can-i",
            verb,
            resource,
            "--as",
            &chart.service_account,
        ]);
        if !namespace.is_empty() {
            cmd.args(["-n", namespace]);
        }
        let out = cmd.output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "the chart grants {verb} {resource}"
        );
    }
}

#[tokio::test]
async fn the_examples_pass_server_side_dry_run() {
    common::install_crds();
    let examples = root().join("examples");
    // Namespaces for real (dry-run of namespaced objects needs them).
    for ns in ["ml-team/namespace.yaml", "vllm-team/namespace.yaml"] {
        kubectl(&["apply", "-f", examples.join(ns).to_str().unwrap()]);
    }
    for dir in ["platform", "ml-team", "vllm-team"] {
        let out = kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            examples.join(dir).to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("(server dry run)"), "{text}");
    }
}
