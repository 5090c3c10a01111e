//! Leader election on a `coordination.k8s.io` Lease: only the holder runs
//! the controllers, so two replicas are safe. A replica that loses the lease
//! stops (and is restarted), as client-go controllers do; one that shuts down
//! releases it, so a standby takes over without waiting for it to expire.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How to take part in the election.
#[derive(Debug, Clone)]
pub struct Election {
    pub lease_name: String,
    pub namespace: String,
    /// This replica's name, unique among replicas (the pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
}

/// A replica's place in the election.
pub struct Candidate {
    leading: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Candidate {
    /// Joins the election; the lease is tried and renewed in the background.
    pub async fn join(client: Client, election: &Election) -> Result<Self, LeaseManagerError> {
        let duration = election.lease_duration.as_secs().max(2);
        let manager = LeaseManagerBuilder::new(client, &election.lease_name)
            .with_namespace(&election.namespace)
            .with_identity(&election.identity)
            .with_duration(duration)
            // Renew when a third of the lease is left.
            .with_grace((duration / 3).max(1))
            .with_field_manager(format!("attach-operator/{}", election.identity))
            .build()
            .await?;
        let (leading, task) = manager.watch().await;
        Ok(Self { leading, task })
    }

    /// Resolves once this replica leads; `false` if the election stopped.
    pub async fn leading(&mut self) -> bool {
        self.leading.wait_for(|l| *l).await.is_ok()
    }

    /// Resolves when this replica stops leading.
    pub async fn lost(&mut self) {
        let _ = self.leading.wait_for(|l| !*l).await;
    }

    /// Leaves the election, releasing the lease if held.
    pub async fn resign(self) {
        drop(self.leading);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("leader lease released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the leader lease failed"),
            Err(e) => tracing::warn!(error = %e, "the lease task failed"),
        }
    }
}
