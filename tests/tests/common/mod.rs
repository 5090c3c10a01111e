//! Shared by the integration tests: the one world of this test process, and
//! the gateway config most tests start from.
#![allow(dead_code)] // each test binary uses its own subset

pub mod chart;
pub mod clients;
pub mod node;
#[allow(unused_imports)] // each test binary uses its own subset
pub use chart::{install_chart, kubectl, kubectl_apply};

use attach_sidecar::claims::Preset;
use attach_sidecar::config::{GatewayConfig, IssuerConfig};
use attach_tests::World;
use attach_tests::keycloak::{AUDIENCE, REALM};
use attach_tests::mock_model::MockModel;

/// The world every test in this binary shares (see [`World::shared`]). The
/// test files named `node*` run real pods: their world has the node.
pub fn world() -> &'static World {
    let harness = env!("CARGO_BIN_EXE_attach-harness");
    if env!("CARGO_CRATE_NAME").starts_with("node") {
        World::shared_with(harness, &["node"])
    } else {
        World::shared(harness)
    }
}

/// A gateway config trusting the harness Keycloak's `attach` realm, in front
/// of `model`.
pub fn gateway_config(model: &MockModel) -> GatewayConfig {
    let kc = world().keycloak().expect("the world has Keycloak");
    let issuer = IssuerConfig::new(kc.issuer(REALM), vec![AUDIENCE.into()], Preset::Keycloak);
    let mut config = GatewayConfig::new(vec![issuer]);
    config.upstream.url = model.url();
    config
}

/// Installs the generated CRDs (once per test process; server-side apply,
/// so concurrent installs from other processes do not conflict) and waits
/// until the API server serves them.
pub fn install_crds() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let crds = attach_tests::source_tree::repo_root().join("crds");
        let crds = crds.to_str().expect("a UTF-8 path");
        let kubectl = |args: &[&str]| {
            let out = world()
                .kubectl()
                .expect("the world has a control plane")
                .args(args)
                .output()
                .expect("kubectl runs");
            assert!(
                out.status.success(),
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds]);
        kubectl(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout=30s",
            "-f",
            crds,
        ]);
    });
}

/// Polls until the object's `Ready` condition has `status`; returns it.
pub async fn wait_ready<K>(api: &kube::Api<K>, name: &str, status: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    wait_for(api, name, &format!("Ready={status}"), |obj| {
        condition(obj, "Ready").is_some_and(|c| c["status"] == status)
    })
    .await
}

/// Polls (up to 30 s) until `done` holds for the object; returns it.
pub async fn wait_for<K>(
    api: &kube::Api<K>,
    name: &str,
    what: &str,
    mut done: impl FnMut(&K) -> bool,
) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..300 {
        if let Some(obj) = api.get_opt(name).await.unwrap()
            && done(&obj)
        {
            return obj;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{name} never became {what}: {:?}", api.get_opt(name).await);
}

/// The condition of `type_` in an object's status, as JSON.
pub fn condition<K: serde::Serialize>(obj: &K, type_: &str) -> Option<serde_json::Value> {
    let json = serde_json::to_value(obj).ok()?;
    json["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// `(type, reason)` of the Events about the object `name` in `ns`.
pub async fn events_for(client: &kube::Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(client.clone(), ns);
    let list = events
        .list(&kube::api::ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap();
    list.items
        .into_iter()
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect()
}

/// Polls (up to 10 s) until an Event of `type_` and `reason` is about `name`.
pub async fn wait_event(client: &kube::Client, ns: &str, name: &str, type_: &str, reason: &str) {
    let mut events = Vec::new();
    for _ in 0..100 {
        events = events_for(client, ns, name).await;
        if events.iter().any(|(t, r)| t == type_ && r == reason) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no {type_} {reason} event about {name}: {events:?}");
}

/// The first pod labelled `app=<app>` in `ns` (waiting up to 30 s for the
/// ReplicaSet to create it).
pub async fn pod_of(client: &kube::Client, ns: &str, app: &str) -> k8s_openapi::api::core::v1::Pod {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), ns);
    for _ in 0..300 {
        let list = pods
            .list(&kube::api::ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap();
        if let Some(pod) = list.items.into_iter().next() {
            return pod;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no pod for {app} in {ns}");
}

/// The key of the tests' own token issuer (`sidecar/testdata/keys`), for
/// tokens Keycloak cannot make (an `act` chain).
pub fn local_key() -> jsonwebtoken::EncodingKey {
    let pem = std::fs::read(
        attach_tests::source_tree::repo_root().join("sidecar/testdata/keys/rsa-trusted.pem"),
    )
    .expect("the test key");
    jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("an RSA key")
}
