//! The controllers.

pub mod identity_provider;

use std::sync::Arc;

use futures::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::runtime::events::Recorder;
use kube::runtime::{Controller, watcher};

use crate::crd::{ClusterIdentityProvider, IdentityProvider};
use identity_provider::{Context, error_policy, reconcile, reporter};

/// Runs every controller until `shutdown` resolves.
pub async fn run(client: Client, shutdown: impl std::future::Future<Output = ()>) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        http: attach_sidecar::idp_client::IdpClient::new(),
        recorder: Recorder::new(client.clone(), reporter()),
    });
    let idps = Controller::new(
        Api::<IdentityProvider>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        reconcile::<IdentityProvider>,
        error_policy::<IdentityProvider>,
        ctx.clone(),
    )
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "identity provider controller");
        }
    });
    let cluster_idps = Controller::new(
        Api::<ClusterIdentityProvider>::all(client),
        watcher::Config::default(),
    )
    .run(
        reconcile::<ClusterIdentityProvider>,
        error_policy::<ClusterIdentityProvider>,
        ctx,
    )
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "cluster identity provider controller");
        }
    });
    tokio::select! {
        () = idps => {}
        () = cluster_idps => {}
        () = shutdown => tracing::info!("shutting down"),
    }
}
