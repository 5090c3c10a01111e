#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The generated CRDs on the real API server: they install, valid objects
//! are stored, invalid ones are refused with a message naming the field, and
//! `kubectl explain` shows the doc comments.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use attach_tests::World;

fn kubectl(world: &World, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = world
        .kubectl()
        .unwrap()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        let mut input = input;
        input.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

const VALID: &str = r#"
apiVersion: attach.dev/v1alpha1
kind: ClusterIdentityProvider
metadata: {name: corp-NS}
spec:
  issuer: https://corp.okta.com/oauth2/default
  audiences: [api://ollama]
  preset: okta
---
apiVersion: attach.dev/v1alpha1
kind: IdentityProvider
metadata: {name: local}
spec:
  issuer: http://127.0.0.1:8080/realms/attach
  insecure: true
  audiences: [attach-gateway]
  preset: keycloak
  claims: {user: preferred_username}
---
apiVersion: attach.dev/v1alpha1
kind: LLMBackend
metadata: {name: ollama}
spec:
  selector: {matchLabels: {app: ollama}}
  engine: ollama
  port: http
  identityProviderRefs: [{kind: ClusterIdentityProvider, name: corp-NS}, {name: local}]
  access:
    rules:
      - {name: power, subjects: {groups: [ai-power-users]}, models: ["*"], endpoints: [inference, read]}
      - {name: staff, subjects: {groups: [staff]}, models: ["*:1b", "qwen2.5:0.5b"], endpoints: [inference]}
  quotas:
    - {name: per-user, tokensPerMinute: 20000, concurrent: 4}
  quotaStore: {type: redis, urlSecretRef: {name: redis, key: url}, failMode: open}
  apiKeys:
    enabled: true
    signingKeySecretRef: {name: api-keys, key: signing-key}
    maxLifetime: 720h
    defaultLifetime: 168h
    cacheTtl: 30s
    maxKeysPerUser: 10
    admins: {issuer: "http://127.0.0.1:8080/realms/attach", groups: [llm-admins]}
  unauthenticatedPaths: ["/"]
"#;

#[tokio::test]
async fn valid_objects_are_stored_and_explained() {
    let world = common::world();
    common::install_crds();
    let ns = world.namespace("crds").await.unwrap();
    let manifest = VALID.replace("corp-NS", &format!("corp-{ns}"));
    let out = kubectl(world, &["apply", "-n", &ns, "-f", "-"], Some(&manifest));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = kubectl(world, &["get", "attach", "-n", &ns, "-o", "name"], None);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains("llmbackend.attach.dev/ollama"), "{listed}");
    assert!(
        listed.contains("identityprovider.attach.dev/local"),
        "{listed}"
    );
    let short = kubectl(world, &["get", "llmb", "-n", &ns], None);
    let short = String::from_utf8_lossy(&short.stdout).to_string();
    assert!(
        short.contains("ENGINE") && short.contains("ollama"),
        "{short}"
    );
    let explain = kubectl(
        world,
        &["explain", "llmbackend.spec.quotas.tokensPerMinute"],
        None,
    );
    assert!(String::from_utf8_lossy(&explain.stdout).contains("LLM tokens per minute"));
    kubectl(
        world,
        &["delete", "clusteridentityprovider", &format!("corp-{ns}")],
        None,
    );
}

/// RFC 7386 merge patch: `null` removes, objects merge, anything else
/// replaces.
fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    if let Some(object) = target.as_object_mut() {
        for (key, value) in fields {
            if value.is_null() {
                object.remove(key);
            } else {
                merge(
                    object.entry(key.clone()).or_insert(serde_json::Value::Null),
                    value,
                );
            }
        }
    }
}

/// A valid base object of `kind`, for the invalid-object table.
fn base_spec(kind: &str) -> serde_json::Value {
    match kind {
        "LLMBackend" => serde_json::json!({
            "selector": {"matchLabels": {"app": "ollama"}}, "engine": "ollama", "port": 11434,
            "identityProviderRefs": [{"name": "corp"}],
        }),
        _ => serde_json::json!({
            "issuer": "https://idp.example.com/realms/corp", "audiences": ["attach-gateway"],
        }),
    }
}

#[derive(serde::Deserialize)]
struct InvalidCase {
    name: String,
    kind: String,
    spec: serde_json::Value,
    field: String,
}

/// Every manifest of `tests/fixtures/crds/invalid.yaml` is refused by the
/// API server (schema, CEL or strict field validation), naming the field;
/// and each base, unchanged, is stored (so the refusals are the cases').
#[tokio::test]
async fn invalid_objects_are_refused_naming_the_field() {
    let world = common::world();
    common::install_crds();
    let ns = world.namespace("crds").await.unwrap();
    let table = attach_tests::source_tree::tests_dir().join("fixtures/crds/invalid.yaml");
    let cases: Vec<InvalidCase> =
        serde_yaml::from_str(&std::fs::read_to_string(&table).unwrap()).unwrap();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let manifest = |kind: &str, name: &str, spec: serde_json::Value| {
        let mut metadata = serde_json::json!({"name": name});
        if kind == "ClusterIdentityProvider" {
            metadata["name"] = serde_json::json!(format!("{name}-{ns}"));
        }
        serde_json::json!({"apiVersion": "attach.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec})
            .to_string()
    };
    for kind in ["LLMBackend", "IdentityProvider", "ClusterIdentityProvider"] {
        let out = kubectl(
            world,
            &["create", "-n", &ns, "-f", "-"],
            Some(&manifest(kind, "valid", base_spec(kind))),
        );
        assert!(
            out.status.success(),
            "the valid {kind} base: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    kubectl(
        world,
        &["delete", "clusteridentityprovider", &format!("valid-{ns}")],
        None,
    );
    let mut failures = Vec::new();
    for case in cases {
        let mut spec = base_spec(&case.kind);
        merge(&mut spec, &case.spec);
        let out = kubectl(
            world,
            &["create", "-n", &ns, "-f", "-"],
            Some(&manifest(&case.kind, "bad", spec)),
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            failures.push(format!("{}: accepted", case.name));
            kubectl(
                world,
                &["delete", "-n", &ns, &case.kind.to_lowercase(), "bad"],
                None,
            );
        } else if !stderr.contains(&case.field) {
            failures.push(format!(
                "{}: {} not named in {stderr}",
                case.name, case.field
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Conditions are a map keyed by `type`: a status with two `Ready`
/// conditions is refused.
#[tokio::test]
async fn conditions_are_a_map_keyed_by_type() {
    let world = common::world();
    common::install_crds();
    let ns = world.namespace("crds").await.unwrap();
    let backend = "apiVersion: attach.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: chat}\nspec: {selector: {matchLabels: {app: x}}, engine: ollama, port: 11434, identityProviderRefs: [{name: corp}]}\n";
    let out = kubectl(world, &["create", "-n", &ns, "-f", "-"], Some(backend));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let condition = |reason: &str| {
        serde_json::json!({"type": "Ready", "status": "True", "reason": reason, "message": "",
                           "lastTransitionTime": "2026-01-01T00:00:00Z"})
    };
    let patch = serde_json::json!({"status": {"conditions": [condition("A"), condition("B")]}});
    let out = kubectl(
        world,
        &[
            "patch",
            "-n",
            &ns,
            "llmbackend",
            "chat",
            "--subresource",
            "status",
            "--type",
            "merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "two Ready conditions stored");
    assert!(
        stderr.contains("status.conditions[1]") && stderr.contains("Duplicate value"),
        "{stderr}"
    );
}
