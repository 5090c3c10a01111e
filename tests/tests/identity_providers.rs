#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test
//! The identity-provider controllers, as the operator process, on the real
//! API server and Keycloak: status reports the discovered keys, an
//! unreachable IdP is `Ready=False` with a reason and a Warning Event, and a
//! fixed one recovers with a Normal Event.

mod common;

use std::time::Duration;

use attach_operator::crd::{ClusterIdentityProvider, IdentityProvider};
use attach_tests::keycloak::{OTHER_REALM, REALM};
use attach_tests::operator::OperatorProcess;
use kube::api::{Api, Patch, PatchParams, PostParams};

fn idp(name: &str, issuer: &str) -> IdentityProvider {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "IdentityProvider",
        "metadata": {"name": name},
        "spec": {"issuer": issuer, "insecure": true, "audiences": ["attach-gateway"], "preset": "keycloak"},
    }))
    .unwrap()
}

#[tokio::test]
async fn identity_providers_report_keys_failures_and_recovery() {
    let world = common::world();
    let kc = world.keycloak().unwrap();
    common::install_crds();
    let _operator =
        OperatorProcess::start(world, &format!("idp-{}", std::process::id()), "idp", &[])
            .await
            .unwrap();
    let ns = world.namespace("idp").await.unwrap();
    let client = world.client().await.unwrap();
    let idps: Api<IdentityProvider> = Api::namespaced(client.clone(), &ns);

    idps.create(&PostParams::default(), &idp("keycloak", &kc.issuer(REALM)))
        .await
        .unwrap();
    let ready = common::wait_ready(&idps, "keycloak", "True").await;
    let status = ready.status.unwrap();
    assert_eq!(
        status.jwks_uri.as_deref(),
        Some(kc.jwks_uri(REALM).as_str()),
        "discovered"
    );
    assert!(status.key_count.unwrap() >= 1);
    assert!(status.last_refresh.is_some());
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.conditions[0].reason, "KeysLoaded");

    // An IdP that answers nothing (a listener that hangs up on every
    // connection, rather than a port assumed closed): not ready, with a
    // reason a user can act on.
    let hang_up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_issuer = format!("http://{}/realms/none", hang_up.local_addr().unwrap());
    let _hanging_up = tokio::spawn(async move {
        while let Ok((conn, _)) = hang_up.accept().await {
            drop(conn);
        }
    });
    idps.create(&PostParams::default(), &idp("unreachable", &dead_issuer))
        .await
        .unwrap();
    let failed = common::wait_ready(&idps, "unreachable", "False").await;
    let condition = &failed.status.unwrap().conditions[0];
    assert_eq!(condition.reason, "DiscoveryFailed");
    assert!(
        condition.message.contains(&dead_issuer),
        "{}",
        condition.message
    );
    let mut events = Vec::new();
    for _ in 0..50 {
        events = common::events_for(&client, &ns, "unreachable").await;
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        events.contains(&("Warning".into(), "DiscoveryFailed".into())),
        "{events:?}"
    );

    // Fixed: it recovers, with a Normal event.
    let fix = serde_json::json!({"spec": {"issuer": kc.issuer(REALM)}});
    idps.patch("unreachable", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    let recovered = common::wait_ready(&idps, "unreachable", "True").await;
    assert_eq!(recovered.status.unwrap().observed_generation, Some(2));
    let mut events = Vec::new();
    for _ in 0..50 {
        events = common::events_for(&client, &ns, "unreachable").await;
        if events.iter().any(|(_, r)| r == "IdentityProviderReady") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        events.contains(&("Normal".into(), "IdentityProviderReady".into())),
        "{events:?}"
    );

    // The cluster-scoped kind, for the second realm.
    let cidps: Api<ClusterIdentityProvider> = Api::all(client.clone());
    let name = format!("other-{ns}");
    let cidp: ClusterIdentityProvider = serde_json::from_value(serde_json::json!({
        "apiVersion": "attach.dev/v1alpha1", "kind": "ClusterIdentityProvider",
        "metadata": {"name": name},
        "spec": {"issuer": kc.issuer(OTHER_REALM), "insecure": true, "audiences": ["attach-gateway"]},
    }))
    .unwrap();
    cidps.create(&PostParams::default(), &cidp).await.unwrap();
    let ready = common::wait_ready(&cidps, &name, "True").await;
    assert_eq!(
        ready.status.unwrap().jwks_uri.as_deref(),
        Some(kc.jwks_uri(OTHER_REALM).as_str())
    );
    cidps.delete(&name, &Default::default()).await.unwrap();
}
