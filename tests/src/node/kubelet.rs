//! The kubelet: registers the node, runs its pods through containerd.
//! Authenticated by a client certificate (`system:node:<name>` in
//! `system:nodes`, so the Node authorizer scopes it); serves its API (logs,
//! exec) on the bridge address with a certificate the API server checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

use super::{BRIDGE_IP, CGROUP_ROOT, CLUSTER_DOMAIN, DNS_SERVICE_IP, NODE_NAME};
use crate::HarnessError;
use crate::pki::KeyPairFiles;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::tools::NodeTools;
use crate::wait::until_ready;

/// Files and ports of the kubelet's configuration.
#[derive(Debug, Clone)]
pub struct KubeletSetup {
    pub dir: PathBuf,
    pub client_ca: PathBuf,
    pub serving: KeyPairFiles,
    pub containerd_socket: PathBuf,
    pub port: u16,
    pub healthz_port: u16,
}

impl KubeletSetup {
    /// Where the pods' logs go (not /var/log/pods).
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }
}

/// The KubeletConfiguration (JSON is YAML). What this machine needs: cgroup
/// v1 (`failCgroupV1: false`) with the cgroupfs driver, the pods' cgroups
/// under [`CGROUP_ROOT`] (named for the node, created by it), no swap check.
/// `syncFrequency` is 5 s (default 1 min), so ConfigMap changes reach pods
/// within seconds; eviction thresholds are low because the machine is shared.
pub fn config_json(setup: &KubeletSetup) -> serde_json::Value {
    serde_json::json!({
        "kind": "KubeletConfiguration",
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "address": BRIDGE_IP.to_string(),
        "port": setup.port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": setup.healthz_port,
        "tlsCertFile": setup.serving.cert,
        "tlsPrivateKeyFile": setup.serving.key,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": setup.client_ca},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": format!("unix://{}", setup.containerd_socket.display()),
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": format!("/{CGROUP_ROOT}"),
        "failCgroupV1": false,
        "failSwapOn": false,
        "clusterDNS": [DNS_SERVICE_IP.to_string()],
        "clusterDomain": CLUSTER_DOMAIN,
        // Pods get cluster DNS only, never the host's resolvers.
        "resolvConf": "",
        "podLogsDir": setup.pod_logs_dir(),
        "volumePluginDir": setup.dir.join("volume-plugins"),
        "syncFrequency": "5s",
        "serializeImagePulls": false,
        "shutdownGracePeriod": "0s",
        "shutdownGracePeriodCriticalPods": "0s",
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "maxPods": 60,
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
    })
}

/// The running kubelet.
#[derive(Debug)]
pub struct Kubelet {
    process: Supervised,
    pub setup: KubeletSetup,
}

impl Kubelet {
    /// Starts the kubelet with `kubeconfig` (its client certificate) and
    /// waits until the API server shows the node Ready.
    pub async fn start(
        tools: &NodeTools,
        setup: KubeletSetup,
        kubeconfig: &Path,
        admin: &kube::Client,
    ) -> Result<Self, HarnessError> {
        let dir = &setup.dir;
        for d in [dir.clone(), setup.pod_logs_dir(), dir.join("root")] {
            std::fs::create_dir_all(&d).map_err(HarnessError::io(&d))?;
        }
        let config = dir.join("config.json");
        let text = serde_json::to_string_pretty(&config_json(&setup)).map_err(|source| {
            HarnessError::Json {
                what: "kubelet config".into(),
                source,
            }
        })?;
        std::fs::write(&config, text).map_err(HarnessError::io(&config))?;
        let mut cmd = process::command(&tools.kubelet);
        cmd.arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--root-dir={}", dir.join("root").display()))
            .arg(format!("--cert-dir={}", dir.join("pki").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={BRIDGE_IP}"))
            .arg("--v=1");
        let mut process = Supervised::spawn("kubelet", cmd, dir.join("kubelet.log"))?;
        let nodes: Api<Node> = Api::all(admin.clone());
        until_ready(
            &mut process,
            Duration::from_secs(90),
            Duration::from_millis(250),
            async || {
                nodes
                    .get_opt(NODE_NAME)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|node| node_is_ready(&node))
            },
        )
        .await?;
        Ok(Self { process, setup })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn stop(&mut self) {
        self.process.stop(process::DEFAULT_GRACE);
    }
}

/// Whether the node's `Ready` condition is `True`.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Allocates the kubelet's ports.
pub fn ports() -> Result<(u16, u16), HarnessError> {
    Ok((free_port()?, free_port()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fits_this_machine_and_keeps_dns_in_the_cluster() {
        let setup = KubeletSetup {
            dir: "/n/kubelet".into(),
            client_ca: "/n/ca.crt".into(),
            serving: KeyPairFiles {
                cert: "/n/k.crt".into(),
                key: "/n/k.key".into(),
            },
            containerd_socket: "/run/attach-node/containerd.sock".into(),
            port: 1,
            healthz_port: 2,
        };
        let c = config_json(&setup);
        assert_eq!(c["failCgroupV1"], false);
        assert_eq!(c["cgroupDriver"], "cgroupfs");
        assert_eq!(c["cgroupRoot"], format!("/{CGROUP_ROOT}"));
        assert_eq!(c["resolvConf"], "");
        assert_eq!(c["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(c["authorization"]["mode"], "Webhook");
        assert_eq!(c["readOnlyPort"], 0);
        assert_eq!(c["podLogsDir"], "/n/kubelet/pod-logs");
    }
}
