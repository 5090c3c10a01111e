#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The operator in the cluster: `helm install` with the images built here,
//! pulled by containerd from the local registry; two replicas run as pods
//! with their ServiceAccount token (in-cluster config), non-root, on a
//! read-only root, without capabilities; the Lease names a pod; the API
//! server calls the webhook through its Service with the self-managed
//! certificate; and while the leader pod is deleted the webhook keeps
//! admitting pods and a live replica takes the lead.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use attach_operator::crd::{IdentityProvider, LLMBackend};
use attach_tests::keycloak::{AUDIENCE, REALM};
use attach_tests::node::inspect::container_pids;
use common::node::{Release, container_id, install_release};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

/// Pods the prober must have had admitted across a leader change before the
/// test says anything about it.
const ENOUGH_ATTEMPTS: usize = 20;

/// A namespace this release injects, with an IdentityProvider (the world's
/// Keycloak, which the operator pods reach on the bridge) and a Ready
/// backend selecting `app=model`.
async fn injected_namespace(release: &Release) -> common::node::TestNamespace {
    let ns = common::node::namespace("injected", &[]).await;
    release.cover(&ns.name);
    let client = common::world().client().await.unwrap();
    let kc = common::world().keycloak().unwrap();
    let idp: IdentityProvider = serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "IdentityProvider",
        "metadata": {"name": "keycloak"},
        "spec": {"issuer": kc.issuer(REALM), "insecure": true, "audiences": [AUDIENCE],
                 "preset": "keycloak", "algorithms": ["RS256"]},
    }))
    .unwrap();
    let idps: Api<IdentityProvider> = Api::namespaced(client.clone(), &ns.name);
    idps.create(&PostParams::default(), &idp).await.unwrap();
    let backend: LLMBackend = serde_json::from_value(json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend",
        "metadata": {"name": "model"},
        "spec": {"selector": {"matchLabels": {"app": "model"}}, "engine": "ollama", "port": 11434,
                 "identityProviderRefs": [{"name": "keycloak"}]},
    }))
    .unwrap();
    let backends: Api<LLMBackend> = Api::namespaced(client, &ns.name);
    backends
        .create(&PostParams::default(), &backend)
        .await
        .unwrap();
    common::wait_ready(&idps, "keycloak", "True").await;
    common::wait_ready(&backends, "model", "True").await;
    ns
}

fn model_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "model"}},
        "spec": {"containers": [{"name": "ollama", "image": common::node::images().model,
                                 "ports": [{"containerPort": 11434, "name": "http"}]}]},
    }))
    .unwrap()
}

/// Creates a model pod as a dry run (admission runs, nothing is stored);
/// `Ok(true)` when the webhook injected the gateway.
async fn admitted_and_injected(pods: &Api<Pod>, name: &str) -> Result<bool, kube::Error> {
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let pod = pods.create(&params, &model_pod(name)).await?;
    Ok(pod
        .spec
        .unwrap()
        .init_containers
        .unwrap_or_default()
        .iter()
        .any(|c| c.name == "attach-gateway"))
}

async fn lease_holder(release: &Release) -> Option<String> {
    let client = common::world().client().await.unwrap();
    Api::<Lease>::namespaced(client, &release.namespace.name)
        .get_opt(&format!("{}-operator", release.name))
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

#[tokio::test]
async fn the_operator_runs_in_the_cluster_and_its_webhook_survives_the_leader() {
    let world = common::world();
    let client = world.client().await.unwrap();
    let release = install_release(&[]).await;
    let pods = release.operator_pods(2).await;
    let names: Vec<String> = pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();

    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        // In-cluster config: the ServiceAccount's token, no kubeconfig.
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some(format!("{}-operator", release.name).as_str())
        );
        let container = &spec.containers[0];
        assert!(
            !container
                .env
                .iter()
                .flatten()
                .any(|e| e.name == "KUBECONFIG"),
            "{container:?}"
        );
        assert!(
            container
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount"),
            "{container:?}"
        );
        assert_eq!(
            container.image.as_deref(),
            Some(common::node::images().operator.as_str())
        );
        // Seen from the node: uid 65532, no capabilities, a read-only root.
        let pid = container_pids(&container_id(pod, "operator")).unwrap()[0];
        let (uid, caps, read_only) = common::node::process_identity(pid);
        assert_eq!(uid, "65532");
        assert_eq!(caps, "0000000000000000");
        assert!(read_only, "the operator's root filesystem is writable");
    }

    // The webhook is called through its Service, with the operator's CA.
    let mwc = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(&release.name)
        .await
        .unwrap();
    let webhook = &mwc.webhooks.unwrap()[0];
    assert!(webhook.client_config.url.is_none());
    assert_eq!(
        webhook.client_config.service.as_ref().unwrap().namespace,
        release.namespace.name
    );

    let leader = {
        let mut holder = None;
        for _ in 0..120 {
            holder = lease_holder(&release).await;
            if holder.as_ref().is_some_and(|h| names.contains(h)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        holder.unwrap_or_else(|| panic!("no operator pod leads: {names:?}"))
    };
    assert!(names.contains(&leader), "{leader} is not one of {names:?}");

    // Pods in a covered namespace get the gateway, through the Service.
    let ns = injected_namespace(&release).await;
    let model_pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    assert!(admitted_and_injected(&model_pods, "before").await.unwrap());

    // The leader goes; pods keep being admitted and injected meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let (attempts, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let prober = {
        let (stop, attempts, failures) = (stop.clone(), attempts.clone(), failures.clone());
        let model_pods = model_pods.clone();
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                match admitted_and_injected(&model_pods, &format!("during-{n}")).await {
                    Ok(true) => {}
                    outcome => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("{outcome:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            errors
        })
    };
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace.name);
    operator_pods
        .delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    // Another live replica takes the lead: the survivor, or the pod that
    // replaces the deleted one, whichever asks first.
    let deleted_at = std::time::Instant::now();
    let mut new_leader = None;
    for _ in 0..240 {
        new_leader = lease_holder(&release)
            .await
            .filter(|holder| *holder != leader);
        if new_leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let new_leader = new_leader.expect("no replica took the lead");
    eprintln!(
        "{new_leader} leads {:?} after the leader was deleted",
        deleted_at.elapsed()
    );
    // And the Deployment is whole again; keep probing until its new pod is Ready.
    let after = release.operator_pods(2).await;
    let live: Vec<String> = after
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert!(!live.contains(&leader), "{live:?}");
    assert!(
        live.contains(&new_leader),
        "{new_leader} is not a live replica: {live:?}"
    );
    // Probe on for a while after the change, and long enough to have
    // admitted a fair number of pods: a fast change must not leave the
    // count too small, and a prober stuck on a hanging admission still
    // falls short of it and fails below.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let enough_by = std::time::Instant::now() + Duration::from_secs(60);
    while attempts.load(Ordering::SeqCst) <= ENOUGH_ATTEMPTS
        && std::time::Instant::now() < enough_by
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let errors = prober.await.unwrap();
    let attempts = attempts.load(Ordering::SeqCst);
    eprintln!("{attempts} pods admitted while the leader was replaced");
    assert!(
        attempts > ENOUGH_ATTEMPTS,
        "too few attempts ({attempts}) to show anything"
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "refused or not injected: {errors:#?}"
    );
}
