//! kube-scheduler, as `system:kube-scheduler`, no HTTPS endpoint of its
//! own; ready once it holds its Lease.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use crate::HarnessError;
use crate::process::{self, Supervised};
use crate::tools::NodeTools;
use crate::wait::until_ready;

/// The running scheduler.
#[derive(Debug)]
pub struct Scheduler {
    process: Supervised,
}

impl Scheduler {
    /// Starts the scheduler and waits until it leads (the `kube-scheduler`
    /// Lease in kube-system names it).
    pub async fn start(
        tools: &NodeTools,
        dir: &Path,
        kubeconfig: &Path,
        admin: &kube::Client,
    ) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        let mut cmd = process::command(&tools.kube_scheduler);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--secure-port=0")
            .arg("--leader-elect=true")
            .arg("--leader-elect-lease-duration=5s")
            .arg("--leader-elect-renew-deadline=3s")
            .arg("--leader-elect-retry-period=1s")
            .arg("--v=1");
        let mut process = Supervised::spawn("kube-scheduler", cmd, dir.join("kube-scheduler.log"))?;
        let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-system");
        until_ready(
            &mut process,
            Duration::from_secs(60),
            Duration::from_millis(250),
            async || {
                leases
                    .get_opt("kube-scheduler")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity)
                    .is_some_and(|h| !h.is_empty())
            },
        )
        .await?;
        Ok(Self { process })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn stop(&mut self) {
        self.process.stop(process::DEFAULT_GRACE);
    }
}
