//! kube-proxy in iptables mode: Services for the node's pods and the host.
//! It leaves the machine's conntrack limits and `route_localnet` alone, and
//! opens NodePorts on the bridge address only.

use std::path::Path;
use std::time::Duration;

use super::{BRIDGE_IP, NODE_NAME, POD_CIDR};
use crate::HarnessError;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::tools::NodeTools;
use crate::wait::until_http_ok;

/// The KubeProxyConfiguration (JSON is YAML).
pub fn config_json(kubeconfig: &Path, healthz_port: u16, metrics_port: u16) -> serde_json::Value {
    serde_json::json!({
        "kind": "KubeProxyConfiguration",
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "clientConnection": {"kubeconfig": kubeconfig},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": BRIDGE_IP.to_string(),
        "clusterCIDR": POD_CIDR,
        "detectLocalMode": "ClusterCIDR",
        "healthzBindAddress": format!("127.0.0.1:{healthz_port}"),
        "metricsBindAddress": format!("127.0.0.1:{metrics_port}"),
        "nodePortAddresses": [format!("{BRIDGE_IP}/32")],
        // 0: leave the machine's conntrack settings as they are.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {
            "localhostNodePorts": false,
            "masqueradeAll": false,
            "syncPeriod": "10s",
            "minSyncPeriod": "0s",
        },
    })
}

/// The running kube-proxy.
#[derive(Debug)]
pub struct KubeProxy {
    process: Supervised,
}

impl KubeProxy {
    /// Starts kube-proxy and waits until its rules are synced (`/healthz`).
    pub async fn start(
        tools: &NodeTools,
        dir: &Path,
        kubeconfig: &Path,
    ) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        let healthz = free_port()?;
        let config = dir.join("config.json");
        let text = serde_json::to_string_pretty(&config_json(kubeconfig, healthz, free_port()?))
            .map_err(|source| HarnessError::Json {
                what: "kube-proxy config".into(),
                source,
            })?;
        std::fs::write(&config, text).map_err(HarnessError::io(&config))?;
        let mut cmd = process::command(&tools.kube_proxy);
        cmd.arg(format!("--config={}", config.display()))
            .arg("--v=1");
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{path}:/usr/sbin:/sbin"));
        let mut process = Supervised::spawn("kube-proxy", cmd, dir.join("kube-proxy.log"))?;
        let probe = format!("http://127.0.0.1:{healthz}/healthz");
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
    fn leaves_machine_settings_alone() {
        let c = config_json(Path::new("/n/kp.kubeconfig"), 1, 2);
        assert_eq!(c["conntrack"]["maxPerCore"], 0);
        assert_eq!(c["iptables"]["localhostNodePorts"], false);
        assert_eq!(c["nodePortAddresses"][0], format!("{BRIDGE_IP}/32"));
        assert_eq!(c["healthzBindAddress"], "127.0.0.1:1");
    }
}
