#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The real node: pods run from images built here and pulled by containerd
//! from the local registry; they reach cluster names through CoreDNS and
//! Services through kube-proxy, the API server, Keycloak and Redis on the
//! bridge, and nothing off the machine (no name outside the cluster
//! resolves, nothing is forwarded off the bridge). The kubelet serves logs
//! and exec. The images are static, non-root, labelled and small.

mod common;

use std::process::Command;
use std::time::Duration;

use attach_tests::images::build::registry_get_json;
use attach_tests::node::{API_SERVICE_IP, BRIDGE, FORWARD_CHAIN};
use attach_tests::pod_client::HttpCall;
use common::node::{client_pod, first_answer, images, namespace, pod_ip, ready_pods};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

/// A plain (not injected) mock model and its Service in a namespace of its own.
async fn model_service() -> (common::node::TestNamespace, String) {
    let ns = namespace("svc", &[]).await;
    common::kubectl_apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: model, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: model}}}}
  template:
    metadata: {{labels: {{app: model}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: model
          image: {image}
          env: [{{name: OLLAMA_HOST, value: "0.0.0.0:11434"}}]
          ports: [{{name: http, containerPort: 11434}}]
          readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: model, namespace: {ns}}}
spec:
  selector: {{app: model}}
  ports: [{{name: http, port: 11434, targetPort: http}}]
"#,
        ns = ns.name,
        image = images().model
    ));
    let client = common::world().client().await.unwrap();
    ready_pods(&client, &ns.name, "app=model", 1, Duration::from_secs(120)).await;
    let name = ns.name.clone();
    (ns, name)
}

/// Packets the node's forward filter dropped coming from the bridge.
fn dropped_from_bridge() -> u64 {
    let out = Command::new("iptables")
        .args(["-w", "-t", "mangle", "-L", FORWARD_CHAIN, "-v", "-x", "-n"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| {
            l.contains("DROP") && l.contains(BRIDGE) && l.split_whitespace().nth(5) == Some(BRIDGE)
        })
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no drop rule for traffic from {BRIDGE}:\n{text}"))
}

/// The host's default gateway: an address off this machine.
fn default_gateway() -> String {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "default"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == "via")
        .expect("a default route");
    words[i + 1].to_owned()
}

#[tokio::test]
async fn pods_reach_the_cluster_and_nothing_beyond() {
    let world = common::world();
    let (_client_ns, client) = client_pod().await;
    let (_model_ns, ns) = model_service().await;
    let kube = world.client().await.unwrap();
    let service = Api::<Service>::namespaced(kube, &ns)
        .get("model")
        .await
        .unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();

    // Cluster names resolve through CoreDNS, search domains included.
    let api = client
        .resolve("kubernetes.default.svc.cluster.local")
        .await
        .unwrap();
    assert_eq!(
        api.addresses,
        [std::net::IpAddr::from(API_SERVICE_IP)],
        "{api:?}"
    );
    for name in [
        format!("model.{ns}.svc.cluster.local"),
        format!("model.{ns}"),
    ] {
        let found = client.resolve(&name).await.unwrap();
        assert_eq!(
            found
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            std::slice::from_ref(&cluster_ip),
            "{name}: {found:?}"
        );
    }
    // Nothing else does: CoreDNS forwards nothing.
    for name in ["example.com", "registry.attach.local", "github.com"] {
        let found = client.resolve(name).await.unwrap();
        assert!(found.addresses.is_empty(), "{name} resolved: {found:?}");
    }

    // A Service, through kube-proxy, by name.
    let version = first_answer(
        &client,
        &HttpCall::new(
            "GET",
            &format!("http://model.{ns}.svc.cluster.local:11434/api/version"),
        ),
    )
    .await;
    assert_eq!(version.status, 200, "{version:?}");
    // The API server through the `kubernetes` Service.
    let api = client
        .connect("kubernetes.default:443", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(api.connected, "{api:?}");
    // Keycloak and Redis, on the bridge.
    let kc = world.keycloak().unwrap();
    let issuer = kc.issuer(attach_tests::keycloak::REALM);
    let discovery = client
        .http(&HttpCall::new(
            "GET",
            &format!("{issuer}/.well-known/openid-configuration"),
        ))
        .await
        .unwrap();
    assert_eq!(discovery.status, 200, "{discovery:?}");
    let doc: serde_json::Value = serde_json::from_str(&discovery.body).unwrap();
    assert_eq!(
        doc["issuer"],
        issuer.as_str(),
        "pods and the host see one issuer"
    );
    let redis = world.redis_url().unwrap();
    let redis_addr = redis.trim_start_matches("redis://").trim_end_matches('/');
    let pong = client
        .exchange(redis_addr, "PING\r\n", Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(pong.reply, "+PONG\r\n", "{redis}: {pong:?}");

    // Nothing leaves the machine: a connection to the host's gateway is
    // dropped by the node's forward filter, which counts it.
    let dropped = dropped_from_bridge();
    let outside = client
        .connect(
            &format!("{}:443", default_gateway()),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert!(!outside.connected, "{outside:?}");
    assert!(dropped_from_bridge() > dropped, "the filter saw no packet");
    // No masquerading of the pod range (the bridge plugin's ipMasq is off).
    let nat = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        !nat.lines()
            .any(|l| l.contains("CNI-") && l.contains("MASQUERADE")),
        "{nat}"
    );
}

#[tokio::test]
async fn logs_and_exec_go_through_the_kubelet() {
    let world = common::world();
    let (client_ns, _client) = client_pod().await;
    let logs = world
        .kubectl()
        .unwrap()
        .args(["logs", "-n", &client_ns.name, "client"])
        .output()
        .unwrap();
    assert!(logs.status.success(), "{logs:?}");
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("serving on")
            || String::from_utf8_lossy(&logs.stdout).contains("serving on"),
        "{logs:?}"
    );
    let exec = world
        .kubectl()
        .unwrap()
        .args(["exec", "-n", &client_ns.name, "client", "--"])
        .args(["/attach-pod-client", "resolve", "kubernetes.default"])
        .output()
        .unwrap();
    assert!(exec.status.success(), "{exec:?}");
    assert!(
        String::from_utf8_lossy(&exec.stdout).contains(&API_SERVICE_IP.to_string()),
        "{exec:?}"
    );
}

#[tokio::test]
async fn images_are_static_non_root_labelled_and_small() {
    let world = common::world();
    let registry = world.images().unwrap();
    for (name, reference) in [
        ("attach-gateway", &images().gateway),
        ("attach-operator", &images().operator),
    ] {
        let digest = reference.split_once('@').unwrap().1;
        let manifest = registry_get_json(
            registry,
            &format!("/v2/attach/{name}/manifests/{digest}"),
            "application/vnd.oci.image.manifest.v1+json",
        )
        .unwrap();
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config = registry_get_json(
            registry,
            &format!("/v2/attach/{name}/blobs/{config_digest}"),
            "application/json",
        )
        .unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        // scratch plus one binary.
        assert_eq!(layers.len(), 1, "{name}: {manifest}");
        let bytes: u64 = layers
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .sum::<u64>()
            + manifest["config"]["size"].as_u64().unwrap();
        eprintln!("{name}: {:.2} MB compressed", bytes as f64 / 1e6);
        assert!(bytes <= 15_000_000, "{name} is {bytes} bytes");
        let c = &config["config"];
        assert_eq!(c["User"], "65532:65532", "{name}: {config}");
        assert_eq!(c["Entrypoint"][0], format!("/{name}"), "{name}: {config}");
        for label in ["source", "version", "revision", "licenses"] {
            let value = c["Labels"][format!("org.opencontainers.image.{label}")]
                .as_str()
                .unwrap_or_default();
            assert!(
                !value.is_empty() && value != "unknown",
                "{name}: {label} {config}"
            );
        }
        assert_eq!(
            config["architecture"],
            attach_tests::images::build::oci_arch()
        );
    }
}

#[tokio::test]
async fn a_pod_runs_its_image_pulled_from_the_local_registry() {
    let (client_ns, _client) = client_pod().await;
    let client = common::world().client().await.unwrap();
    let pods = ready_pods(
        &client,
        &client_ns.name,
        "app=attach-test-client",
        1,
        Duration::from_secs(60),
    )
    .await;
    let status = pods[0].status.clone().unwrap();
    let container = &status.container_statuses.unwrap()[0];
    // The digest pushed to the local registry is the one running.
    let digest = images().model.rsplit('@').next().unwrap();
    assert!(
        container
            .image_id
            .starts_with("registry.attach.local/attach/")
            && container.image_id.ends_with(digest),
        "{container:?}"
    );
    assert!(!pod_ip(&pods[0]).is_empty());
}
