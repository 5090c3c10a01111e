//! CoreDNS on the bridge address, port 53, for the cluster's names only:
//! the `kubernetes` plugin answers `cluster.local` (and reverse lookups of
//! the cluster's ranges); every other name gets NXDOMAIN and nothing is
//! forwarded, so DNS never leaves the machine. Pods reach it through the
//! `kube-dns` Service (see `cluster.rs`).

use std::path::Path;
use std::time::Duration;

use super::{BRIDGE_IP, CLUSTER_DOMAIN};
use crate::HarnessError;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::tools::NodeTools;
use crate::wait::until_http_ok;

/// The Corefile.
pub fn corefile(kubeconfig: &Path, ready_port: u16) -> String {
    format!(
        r#"{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {BRIDGE_IP}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
    }}
    cache 5
}}

.:53 {{
    bind {BRIDGE_IP}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"#,
        kubeconfig = kubeconfig.display()
    )
}

/// The running CoreDNS.
#[derive(Debug)]
pub struct CoreDns {
    process: Supervised,
}

impl CoreDns {
    /// Starts CoreDNS and waits until its `kubernetes` plugin has synced.
    pub async fn start(
        tools: &NodeTools,
        dir: &Path,
        kubeconfig: &Path,
    ) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        let ready_port = free_port()?;
        let config = dir.join("Corefile");
        std::fs::write(&config, corefile(kubeconfig, ready_port))
            .map_err(HarnessError::io(&config))?;
        let mut cmd = process::command(&tools.coredns);
        cmd.arg("-conf").arg(&config);
        let mut process = Supervised::spawn("coredns", cmd, dir.join("coredns.log"))?;
        let probe = format!("http://127.0.0.1:{ready_port}/ready");
        until_http_ok(
            &mut process,
            &probe,
            Duration::from_secs(60),
            Duration::from_millis(250),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_cluster_names_and_forwards_nothing() {
        let file = corefile(Path::new("/n/coredns.kubeconfig"), 9);
        assert!(file.contains("kubernetes cluster.local"));
        assert!(!file.contains("forward"));
        assert!(file.contains("rcode NXDOMAIN"));
        assert_eq!(file.matches(&format!("bind {BRIDGE_IP}")).count(), 2);
    }
}
