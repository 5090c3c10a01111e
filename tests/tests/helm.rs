#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The Helm chart and the GitOps examples: the chart's CRDs are the
//! generated ones (kept on uninstall, upgraded by `helm upgrade`), `helm
//! lint` is clean, the schema and templates refuse bad values, names fit in
//! 63 characters, `helm template` matches its golden files, the chart
//! installs into the real API server, its RBAC is enough for the operator
//! (run as the chart's ServiceAccount) and exactly the reviewed allow-list,
//! the account cannot mint a token or touch what is not its own, `helm
//! uninstall` leaves only the CRDs and the users' objects, and every
//! example passes `kubectl apply --dry-run=server`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use attach_operator::crd::LLMBackend;
use attach_tests::World;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn root() -> PathBuf {
    attach_tests::source_tree::repo_root()
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

/// `helm template` of the chart with `args`; the documents.
fn template(args: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut all = vec![
        "template",
        "attach",
        chart.to_str().unwrap(),
        "--namespace",
        "attach-system",
        "--kube-version",
        "1.35.4",
    ];
    all.extend_from_slice(args);
    let text = String::from_utf8(helm(&all).stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// What `helm template` says about `args` it refuses.
fn refused(args: &[&str]) -> String {
    let chart = chart();
    let mut cmd = common::world().helm().unwrap();
    cmd.args([
        "template",
        "attach",
        chart.to_str().unwrap(),
        "--kube-version",
        "1.35.4",
    ])
    .args(args);
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_chart_carries_the_generated_crds_behind_crds_enabled() {
    let docs = template(&[]);
    let crds: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(crds.len(), 3);
    for crd in &crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "helm uninstall must not delete the users' objects"
        );
        let name = crd["metadata"]["name"].as_str().unwrap();
        let file = format!("{}.yaml", name.split('.').next().unwrap());
        let generated: Value = serde_yaml::from_str(
            &std::fs::read_to_string(root().join("crds").join(&file)).unwrap(),
        )
        .unwrap();
        assert_eq!(crd["spec"], generated["spec"], "{file}");
    }
    assert!(
        !template(&["--set", "crds.enabled=false"])
            .iter()
            .any(|d| d["kind"] == "CustomResourceDefinition")
    );
}

#[test]
fn helm_lint_is_clean_and_bad_values_are_refused_by_name() {
    let out = helm(&["lint", "--strict", chart().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("[WARNING]") && !text.contains("[ERROR]"),
        "{text}"
    );
    let long_name = format!("nameOverride={}", "n".repeat(64));
    for (args, named) in [
        (
            vec!["--set", "webhook.failurePolicy=Sometimes"],
            "failurePolicy",
        ),
        (vec!["--set", long_name.as_str()], "nameOverride"),
        (
            vec![
                "--set",
                "replicaCount=2",
                "--set",
                "podDisruptionBudget.minAvailable=2",
            ],
            "podDisruptionBudget.minAvailable (2) must be less than replicaCount (2)",
        ),
        (
            vec!["--set", "podDisruptionBudget.minAvailable=100%"],
            "minAvailable",
        ),
        (
            vec!["--set", "podDisruptionBudget.maxUnavailable=0"],
            "maxUnavailable",
        ),
        (
            vec!["--set", "networkPolicy.enabled=true"],
            "networkPolicy.apiServerCIDRs is required",
        ),
        (
            vec!["--set", "serviceAccount.create=false"],
            "serviceAccount.name is required",
        ),
    ] {
        let stderr = refused(&args);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

#[test]
fn the_monitoring_objects_carry_the_tested_rule_file_and_dashboard_only_when_asked() {
    let kinds = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .filter_map(|d| d["kind"].as_str().map(str::to_owned))
            .collect()
    };
    let plain = template(&[]);
    for kind in ["PrometheusRule", "PodMonitor"] {
        assert!(
            !kinds(&plain).iter().any(|k| k == kind),
            "{kind} by default"
        );
    }
    let docs = template(&[
        "--set",
        "metrics.prometheusRule.enabled=true,metrics.gatewayPodMonitor.enabled=true",
        "--set",
        "metrics.dashboard.enabled=true,metrics.dashboard.namespace=grafana",
        "--set",
        "metrics.prometheusRule.labels.release=kube-prometheus",
    ]);
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    // The PrometheusRule is the rule file promtool tests, unchanged.
    let rules: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("files/alerts.yaml")).unwrap())
            .unwrap();
    let rule = find("PrometheusRule");
    assert_eq!(rule["spec"], rules);
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus");
    // The dashboard ConfigMap holds the dashboard, for Grafana's sidecar.
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["attach.json"].is_string())
        .expect("the dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["namespace"], "grafana");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(dashboard["data"]["attach.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("files/dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shipped, file);
    // Gateways are scraped on the sidecar's admin port, in every namespace.
    let monitor = find("PodMonitor");
    assert_eq!(monitor["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"],
        "attach-admin"
    );
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

/// The longest release name helm allows, and the longest override: every
/// Service name is a DNS label (63), every name is unique per kind, and the
/// overrides show.
#[test]
fn names_fit_in_63_characters() {
    let long_release = "a".repeat(53);
    let chart = chart();
    let cases = [
        vec![],
        vec![
            "--set".to_owned(),
            format!("fullnameOverride={}", "b".repeat(63)),
        ],
        vec![
            "--set".to_owned(),
            format!("nameOverride={}", "c".repeat(63)),
        ],
    ];
    for extra in cases {
        let mut args = vec![
            "template".to_owned(),
            long_release.clone(),
            chart.to_str().unwrap().to_owned(),
            "--namespace".to_owned(),
            "attach-system".to_owned(),
            "--kube-version".to_owned(),
            "1.35.4".to_owned(),
        ];
        args.extend(extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let text = String::from_utf8(helm(&args).stdout).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
            .filter(|v: &Value| !v.is_null())
            .collect();
        let mut seen = BTreeSet::new();
        for doc in &docs {
            let kind = doc["kind"].as_str().unwrap();
            let name = doc["metadata"]["name"].as_str().unwrap();
            assert!(name.len() <= 253, "{kind} {name}");
            if matches!(kind, "Service" | "Deployment" | "ServiceAccount") {
                assert!(
                    name.len() <= 63,
                    "{kind} {name} ({} characters)",
                    name.len()
                );
            }
            assert!(seen.insert((kind, name)), "{kind} {name} twice ({extra:?})");
            for value in doc["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, v)| v)
            {
                assert!(
                    value.as_str().unwrap().len() <= 63,
                    "label {value} of {kind} {name}"
                );
            }
        }
        if let Some(name) = extra
            .get(1)
            .and_then(|a| a.strip_prefix("fullnameOverride="))
        {
            assert!(
                seen.iter()
                    .any(|(k, n)| *k == "MutatingWebhookConfiguration" && *n == name)
            );
        }
        if extra.get(1).is_some_and(|a| a.starts_with("nameOverride=")) {
            assert!(text.contains(&format!("app.kubernetes.io/name: {}", "c".repeat(63))));
        }
    }
}

/// One line of `kubectl auth can-i --list`: (resource or URL, names, verb).
fn granted(
    world: &World,
    service_account: &str,
    namespace: &str,
) -> BTreeSet<(String, String, String)> {
    let out = world
        .kubectl()
        .unwrap()
        .args([
            "auth",
            "can-i",
            "--list",
            "--as",
            service_account,
            "-n",
            namespace,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rules = BTreeSet::new();
    for line in text.lines().skip(1) {
        // Resources, Non-Resource URLs, Resource Names, Verbs: the last
        // three are bracketed lists.
        let brackets: Vec<(usize, usize)> = line
            .match_indices('[')
            .filter_map(|(start, _)| line[start..].find(']').map(|end| (start, start + end)))
            .collect();
        let [urls, names, verbs] = brackets[..] else {
            panic!("unexpected line {line:?}");
        };
        let list = |(a, b): (usize, usize)| -> Vec<String> {
            line[a + 1..b]
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let resource = line[..urls.0].trim().to_owned();
        let names = list(names).join(",");
        let subjects = if resource.is_empty() {
            list(urls)
        } else {
            vec![resource]
        };
        for subject in subjects {
            for verb in list(verbs) {
                rules.insert((subject.clone(), names.clone(), verb));
            }
        }
    }
    rules
}

/// The reviewed allow-list for `scopes`.
fn allow_list(release: &str, scopes: &[&str]) -> BTreeSet<(String, String, String)> {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/helm/rbac-allow-list.txt")).unwrap();
    let mut rules = BTreeSet::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [scope, subject, names, verbs] = fields[..] else {
            panic!("bad allow-list line {line:?}");
        };
        if !scopes.contains(&scope) {
            continue;
        }
        for verb in verbs.split_whitespace() {
            rules.insert((
                subject.to_owned(),
                names.replace("{release}", release),
                verb.to_owned(),
            ));
        }
    }
    rules
}

#[tokio::test]
async fn the_chart_installs_and_its_rbac_is_exactly_the_reviewed_allow_list() {
    let world = common::world();
    let chart = common::install_chart().await;

    // What it needs, it may do: the caBundle is set (install_chart waits
    // for it), a backend gets Ready, its namespace labelled, a selected pod
    // injected.
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
    chart.wait_namespace_label(&ns, true).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
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
    let log = chart.operator_log();
    assert!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "{log}"
    );

    // What it may do is exactly the reviewed list: anywhere, and in its
    // own namespace.
    for (namespace, scopes) in [
        (ns.as_str(), &["any"][..]),
        (chart.release_namespace.as_str(), &["any", "release"][..]),
    ] {
        let granted = granted(world, &chart.service_account, namespace);
        let allowed = allow_list(&chart.release, scopes);
        let unexpected: Vec<_> = granted.difference(&allowed).collect();
        assert!(
            unexpected.is_empty(),
            "in {namespace}, the chart grants what the allow-list does not: {unexpected:?}"
        );
        let missing: Vec<_> = allowed
            .difference(&granted)
            .filter(|(subject, _, _)| !subject.starts_with('/'))
            .collect();
        assert!(
            missing.is_empty(),
            "in {namespace}, the allow-list holds what the chart no longer grants (update it): {missing:?}"
        );
    }
}

/// The escalations a cluster-wide Secret grant allowed, and the writes RBAC
/// cannot narrow, tried as the chart's ServiceAccount: each is refused.
#[tokio::test]
async fn the_operators_account_cannot_mint_tokens_or_touch_what_is_not_its_own() {
    let world = common::world();
    let chart = common::install_chart().await;
    let admin = world.client().await.unwrap();
    let sa = chart.service_account_client().await;
    let ns = world.namespace("escalation").await.unwrap();

    // A privileged ServiceAccount, and a long-lived token of it.
    let privileged = format!("admin-bot-{ns}");
    common::kubectl_apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: admin-bot, namespace: {ns}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {privileged}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}\nsubjects: [{{kind: ServiceAccount, name: admin-bot, namespace: {ns}}}]\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: admin-bot-token, namespace: {ns}, annotations: {{kubernetes.io/service-account.name: admin-bot}}}}\ntype: kubernetes.io/service-account-token\n"
    ));
    let forbidden = |what: &str, result: Result<Value, kube::Error>| match result {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("{what}: not refused: {other:?}"),
    };
    let token_secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "minted", "annotations": {"kubernetes.io/service-account.name": "admin-bot"}},
        "type": "kubernetes.io/service-account-token",
    });
    // 1. Mint a token Secret for the privileged account, here or in its own
    // namespace, and read one back.
    for namespace in [ns.as_str(), chart.release_namespace.as_str()] {
        let secrets: Api<Secret> = Api::namespaced(sa.clone(), namespace);
        forbidden(
            &format!("create a token Secret in {namespace}"),
            secrets
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(token_secret.clone()).unwrap(),
                )
                .await
                .map(|s| serde_json::to_value(s).unwrap()),
        );
        forbidden(
            &format!("apply a Secret in {namespace}"),
            secrets
                .patch(
                    "minted",
                    &PatchParams::apply("x").force(),
                    &Patch::Apply(&token_secret),
                )
                .await
                .map(|s| serde_json::to_value(s).unwrap()),
        );
        forbidden(
            &format!("list Secrets in {namespace}"),
            secrets
                .list(&Default::default())
                .await
                .map(|l| json!(l.items.len())),
        );
    }
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), &ns);
    forbidden(
        "read the privileged token",
        secrets
            .get("admin-bot-token")
            .await
            .map(|s| serde_json::to_value(s).unwrap()),
    );
    forbidden(
        "read kube-system's Secrets",
        Api::<Secret>::namespaced(sa.clone(), "kube-system")
            .list(&Default::default())
            .await
            .map(|l| json!(l.items.len())),
    );
    // A TokenRequest for the privileged account.
    let token_request = sa
        .request::<Value>(
            http::Request::post(format!("/api/v1/namespaces/{ns}/serviceaccounts/admin-bot/token"))
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})).unwrap())
                .unwrap(),
        )
        .await;
    forbidden("request a token", token_request);

    // 2. Relabel a namespace (e.g. to a privileged PodSecurity level), or
    // change anything but its own label.
    let namespaces: Api<Namespace> = Api::all(sa.clone());
    for (what, patch) in [
        (
            "PodSecurity",
            json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}),
        ),
        (
            "another webhook's opt-out",
            json!({"metadata": {"labels": {"other.example/inject": "disabled"}}}),
        ),
        (
            "its label to another value",
            json!({"metadata": {"labels": {common::chart::NAMESPACE_LABEL: "false"}}}),
        ),
        (
            "an annotation",
            json!({"metadata": {"annotations": {"scheduler.alpha.kubernetes.io/node-selector": "x=y"}}}),
        ),
    ] {
        let result = namespaces
            .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|n| serde_json::to_value(n).unwrap());
        forbidden(&format!("set {what} on a namespace"), result);
    }
    // Its own label it may set, and remove.
    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {common::chart::NAMESPACE_LABEL: "true"}}}),
            ),
        )
        .await
        .unwrap();
    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {common::chart::NAMESPACE_LABEL: null}}})),
        )
        .await
        .unwrap();

    // 3. Overwrite someone else's ConfigMap, or write one of its own
    // shape where it was not made by the operator.
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let foreign: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "shop-attach-gateway"}, "data": {"gateway.yaml": "theirs"},
    }))
    .unwrap();
    let foreign = config_maps
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let mut stolen = foreign.clone();
    stolen.data = Some([("gateway.yaml".to_owned(), "ours".to_owned())].into());
    stolen.metadata.labels = Some(
        [
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "attach-operator".to_owned(),
            ),
            ("attach.dev/backend".to_owned(), "shop".to_owned()),
        ]
        .into(),
    );
    stolen.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({
            "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend", "name": "shop",
            "uid": "00000000-0000-0000-0000-000000000000", "controller": true,
        }))
        .unwrap(),
    ]);
    let as_operator: Api<ConfigMap> = Api::namespaced(sa.clone(), &ns);
    forbidden(
        "take over a ConfigMap",
        as_operator
            .replace("shop-attach-gateway", &PostParams::default(), &stolen)
            .await
            .map(|c| serde_json::to_value(c).unwrap()),
    );
    let coredns: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "coredns"}, "data": {"Corefile": ".:53 { forward . 203.0.113.1 }"},
    }))
    .unwrap();
    forbidden(
        "create a ConfigMap in kube-system",
        Api::<ConfigMap>::namespaced(sa.clone(), "kube-system")
            .create(&PostParams::default(), &coredns)
            .await
            .map(|c| serde_json::to_value(c).unwrap()),
    );
    assert_eq!(
        config_maps.get("shop-attach-gateway").await.unwrap().data,
        foreign.data,
        "untouched"
    );
    kubectl(&["delete", "clusterrolebinding", &privileged]);
}

/// The CRDs upgrade with the chart, and `helm uninstall` leaves nothing but
/// them and what users created; in a world of its own, since the CRDs are
/// cluster-wide.
#[tokio::test]
async fn crds_upgrade_with_the_chart_and_uninstall_leaves_only_them() {
    let world: &'static World = Box::leak(Box::new(
        World::start_private(env!("CARGO_BIN_EXE_attach-harness"), &["control-plane"]).unwrap(),
    ));
    let mut installed = common::chart::install_chart_in(world, &[]).await;
    let client = world.client().await.unwrap();
    let kubectl_private = |args: &[&str], stdin: Option<&str>| -> Output {
        use std::io::Write;
        let mut child = world
            .kubectl()
            .unwrap()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    };

    // The operator filled the chart's Secret and holds its Lease.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &installed.release_namespace);
    let tls = format!("{}-webhook-tls", installed.release);
    common::wait_for(&secrets, &tls, "filled", |s| {
        s.data.as_ref().is_some_and(|d| d.contains_key("ca.crt"))
    })
    .await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &installed.release_namespace);
    let lease = format!("{}-operator", installed.release);
    common::wait_for(&leases, &lease, "held", |l| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_ref())
            .is_some()
    })
    .await;

    // Version 1 has no spec.tier.
    let ns = world.namespace("upgrade").await.unwrap();
    let backend = "apiVersion: attach.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: gold}\nspec:\n  selector: {matchLabels: {app: ollama}}\n  engine: ollama\n  port: 11434\n  identityProviderRefs: [{name: corp}]\n  tier: gold\n";
    let out = kubectl_private(&["create", "-n", &ns, "-f", "-"], Some(backend));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field \"spec.tier\""));

    // Version 2 adds it; `helm upgrade` brings it.
    let next = tempfile::tempdir().unwrap();
    copy_dir(&chart(), next.path());
    let chart_yaml = next.path().join("Chart.yaml");
    let text = std::fs::read_to_string(&chart_yaml).unwrap();
    std::fs::write(
        &chart_yaml,
        text.replace("version: 0.1.0", "version: 0.1.1"),
    )
    .unwrap();
    let crd = next.path().join("templates/crds/llmbackends.yaml");
    let text = std::fs::read_to_string(&crd).unwrap();
    let marker = "              unauthenticatedPaths:\n";
    assert!(text.contains(marker));
    std::fs::write(
        &crd,
        text.replacen(
            marker,
            &format!("              tier:\n                description: A field of the next chart version.\n                type: string\n{marker}"),
            1,
        ),
    )
    .unwrap();
    let out = world
        .helm()
        .unwrap()
        .args([
            "upgrade",
            &installed.release,
            next.path().to_str().unwrap(),
            "--namespace",
            &installed.release_namespace,
            "--reuse-values",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm upgrade: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stored = false;
    for _ in 0..100 {
        let out = kubectl_private(&["create", "-n", &ns, "-f", "-"], Some(backend));
        if out.status.success() {
            stored = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(stored, "the upgraded CRD does not take spec.tier");
    let out = kubectl_private(
        &[
            "get",
            "llmbackend",
            "gold",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.tier}",
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "gold",
        "kept, not pruned"
    );
    // The Secret and the Lease the operator wrote survive the upgrade.
    assert!(
        secrets
            .get(&tls)
            .await
            .unwrap()
            .data
            .unwrap()
            .contains_key("ca.crt")
    );

    // Uninstall: the CRDs and the backend stay; nothing else of the chart.
    installed.uninstall();
    let out = kubectl_private(
        &["get", "llmbackend", "gold", "-n", &ns, "-o", "name"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        secrets.get_opt(&tls).await.unwrap().is_none(),
        "the webhook Secret is left"
    );
    assert!(
        leases.get_opt(&lease).await.unwrap().is_none(),
        "the Lease is left"
    );
    let left = kubectl_private(
        &[
            "get",
            "all,secrets,leases,configmaps,serviceaccounts,roles,rolebindings,networkpolicies,poddisruptionbudgets",
            "-n",
            &installed.release_namespace,
            "-o",
            "name",
        ],
        None,
    );
    let left: Vec<String> = String::from_utf8_lossy(&left.stdout)
        .lines()
        .filter(|l| {
            // What the cluster makes in every namespace.
            !matches!(*l, "serviceaccount/default" | "configmap/kube-root-ca.crt")
        })
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "left in the release namespace: {left:?}");
    let cluster = kubectl_private(
        &[
            "get",
            "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,validatingadmissionpolicies,validatingadmissionpolicybindings",
            "-o",
            "name",
        ],
        None,
    );
    let cluster = String::from_utf8_lossy(&cluster.stdout).into_owned();
    assert!(
        !cluster.contains(&installed.release),
        "left cluster-wide: {cluster}"
    );
    let crds = kubectl_private(&["get", "crds", "-o", "name"], None);
    assert_eq!(
        String::from_utf8_lossy(&crds.stdout)
            .lines()
            .filter(|l| l.contains("attach.dev"))
            .count(),
        3,
        "the CRDs are kept"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn the_examples_pass_server_side_dry_run() {
    common::install_crds();
    let examples = root().join("examples");
    // Every folder, so that a new example cannot be left unchecked.
    let mut dirs: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 5, "{dirs:?}");
    // Namespaces for real (dry-run of namespaced objects needs them).
    for ns in dirs
        .iter()
        .map(|d| d.join("namespace.yaml"))
        .filter(|p| p.exists())
    {
        kubectl(&["apply", "-f", ns.to_str().unwrap()]);
    }
    for dir in &dirs {
        let out = kubectl(&["apply", "--dry-run=server", "-f", dir.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("(server dry run)"), "{text}");
    }
}
