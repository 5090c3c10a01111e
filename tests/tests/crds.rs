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

#[tokio::test]
async fn invalid_objects_are_refused_naming_the_field() {
    let world = common::world();
    common::install_crds();
    let ns = world.namespace("crds").await.unwrap();
    let backend = |spec: &str| {
        format!(
            "apiVersion: attach.dev/v1alpha1\nkind: LLMBackend\nmetadata: {{name: bad}}\nspec:\n{spec}"
        )
    };
    let base = "  selector: {matchLabels: {app: ollama}}\n  engine: ollama\n  port: 11434\n  identityProviderRefs: [{name: corp}]\n";
    let idp = |spec: &str| {
        format!(
            "apiVersion: attach.dev/v1alpha1\nkind: IdentityProvider\nmetadata: {{name: bad}}\nspec:\n{spec}"
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "empty selector",
            backend(&base.replace("{app: ollama}", "{}")),
            "spec.selector.matchLabels",
        ),
        (
            "unknown engine",
            backend(&base.replace("engine: ollama", "engine: llamacpp")),
            "spec.engine",
        ),
        (
            "quota of zero",
            backend(&format!(
                "{base}  quotas: [{{name: q, tokensPerMinute: 0}}]\n"
            )),
            "spec.quotas[0].tokensPerMinute",
        ),
        (
            "negative quota",
            backend(&format!("{base}  quotas: [{{name: q, concurrent: -1}}]\n")),
            "spec.quotas[0].concurrent",
        ),
        (
            "quota that limits nothing",
            backend(&format!("{base}  quotas: [{{name: q}}]\n")),
            "spec.quotas[0]",
        ),
        (
            "redis without a Secret",
            backend(&format!("{base}  quotaStore: {{type: redis}}\n")),
            "spec.quotaStore.urlSecretRef",
        ),
        (
            "bad model glob",
            backend(&format!(
                "{base}  access: {{rules: [{{name: r, subjects: {{groups: [g]}}, models: [\"llama 3\"], endpoints: [inference]}}]}}\n"
            )),
            "spec.access.rules[0].models[0]",
        ),
        (
            "rule for nobody",
            backend(&format!(
                "{base}  access: {{rules: [{{name: r, subjects: {{}}, endpoints: [inference]}}]}}\n"
            )),
            "spec.access.rules[0].subjects",
        ),
        (
            "unknown endpoint class",
            backend(&format!(
                "{base}  access: {{rules: [{{name: r, subjects: {{groups: [g]}}, endpoints: [root]}}]}}\n"
            )),
            "spec.access.rules[0].endpoints[0]",
        ),
        (
            "no identity provider",
            backend(&base.replace("[{name: corp}]", "[]")),
            "spec.identityProviderRefs",
        ),
        (
            "openai without rebinding",
            backend(&base.replace("engine: ollama", "engine: openai")),
            "spec.openai",
        ),
        (
            "port out of range",
            backend(&base.replace("port: 11434", "port: 70000")),
            "spec.port",
        ),
        (
            "port name with spaces",
            backend(&base.replace("port: 11434", "port: \"my port\"")),
            "spec.port",
        ),
        (
            "probe path without a slash",
            backend(&format!("{base}  unauthenticatedPaths: [health]\n")),
            "spec.unauthenticatedPaths[0]",
        ),
        (
            "plain http issuer",
            idp("  issuer: http://idp.example.com\n  audiences: [x]\n"),
            "spec.issuer",
        ),
        (
            "no audience",
            idp("  issuer: https://idp.example.com\n  audiences: []\n"),
            "spec.audiences",
        ),
        (
            "HMAC algorithm",
            idp("  issuer: https://idp.example.com\n  audiences: [x]\n  algorithms: [HS256]\n"),
            "spec.algorithms[0]",
        ),
        (
            "unknown preset",
            idp("  issuer: https://idp.example.com\n  audiences: [x]\n  preset: cognito\n"),
            "spec.preset",
        ),
    ];
    assert!(cases.len() >= 8);
    for (name, manifest, field) in cases {
        let out = kubectl(world, &["create", "-n", &ns, "-f", "-"], Some(&manifest));
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{name}: accepted");
        assert!(stderr.contains("is invalid"), "{name}: {stderr}");
        assert!(
            stderr.contains(field),
            "{name}: {field} not named in {stderr}"
        );
    }
}
