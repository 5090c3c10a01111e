//! containerd with its CRI plugin, runc and the CNI plugins: the node's
//! container runtime. Everything it writes is under the node's state folder
//! or [`RUN_DIR`] (sockets must have short paths); images come from the
//! local registry, which pods name [`PULL_HOST`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BRIDGE, BRIDGE_IP, CNI_NETWORK, POD_CIDR, RUN_DIR};
use crate::HarnessError;
use crate::images::PULL_HOST;
use crate::process::{self, Supervised};
use crate::tools::NodeTools;
use crate::wait::until_ready;

/// The CRI socket.
pub fn socket() -> PathBuf {
    Path::new(RUN_DIR).join("containerd.sock")
}

/// The paths containerd's config names.
#[derive(Debug, Clone)]
pub struct ContainerdPaths {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub shim_sockets: PathBuf,
    pub runc_root: PathBuf,
    pub opt: PathBuf,
    pub hosts_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub runc: PathBuf,
}

impl ContainerdPaths {
    pub fn new(dir: &Path, tools: &NodeTools) -> Self {
        Self {
            root: dir.join("root"),
            state: dir.join("state"),
            socket: socket(),
            shim_sockets: Path::new(RUN_DIR).join("s"),
            runc_root: Path::new(RUN_DIR).join("runc"),
            opt: dir.join("opt"),
            hosts_dir: dir.join("certs.d"),
            cni_conf_dir: dir.join("net.d"),
            cni_bin_dir: tools.cni_dir.clone(),
            runc: tools.runc.clone(),
        }
    }
}

/// containerd's config (version 4, containerd 2.4). What this machine needs
/// (see DESIGN "A real node"): cgroupfs (`SystemdCgroup = false`), and
/// `restrict_oom_score_adj`, because root lacks CAP_SYS_RESOURCE here and
/// runc would fail to lower a sandbox's OOM score. NRI (a machine-wide
/// socket) is off; nothing is read from /etc/containerd.
pub fn config_toml(paths: &ContainerdPaths, sandbox_image: &str) -> String {
    let p = |path: &Path| path.display().to_string();
    format!(
        r#"version = 4
root = "{root}"
state = "{state}"
imports = []
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[plugins]
  [plugins."io.containerd.server.v1.grpc"]
    address = "{socket}"

  [plugins."io.containerd.server.v1.ttrpc"]
    address = "{socket}.ttrpc"

  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "{sandbox_image}"
    [plugins."io.containerd.cri.v1.images".registry]
      config_path = "{hosts}"

  [plugins."io.containerd.cri.v1.runtime"]
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_selinux = false
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["{cni_bin}"]
      conf_dir = "{cni_conf}"
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          Root = "{runc_root}"
          SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

  [plugins."io.containerd.transfer.v1.local"]
    config_path = "{hosts}"

  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"

  [plugins."io.containerd.shim.v1.manager"]
    socket_dir = "{shim_sockets}"
"#,
        root = p(&paths.root),
        state = p(&paths.state),
        socket = p(&paths.socket),
        hosts = p(&paths.hosts_dir),
        cni_bin = p(&paths.cni_bin_dir),
        cni_conf = p(&paths.cni_conf_dir),
        runc = p(&paths.runc),
        runc_root = p(&paths.runc_root),
        opt = p(&paths.opt),
        shim_sockets = p(&paths.shim_sockets),
    )
}

/// `hosts.toml` mapping [`PULL_HOST`] onto the local registry (plain HTTP).
pub fn registry_hosts_toml(registry: &str) -> String {
    format!(
        r#"server = "http://{registry}"

[host."http://{registry}"]
  capabilities = ["pull", "resolve"]
"#
    )
}

/// The pod network: the bridge plugin on [`BRIDGE`] (the node made it, with
/// the gateway address), no masquerading, host-local addresses from the pod
/// range kept in the state folder, and portmap for hostPorts.
pub fn cni_conflist(ipam_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_IP.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// The running containerd.
#[derive(Debug)]
pub struct Containerd {
    process: Supervised,
    pub paths: ContainerdPaths,
}

impl Containerd {
    /// Writes the configs under `dir` and starts containerd; waits until its
    /// socket answers.
    pub async fn start(
        tools: &NodeTools,
        dir: &Path,
        sandbox_image: &str,
        registry: &str,
    ) -> Result<Self, HarnessError> {
        let paths = ContainerdPaths::new(dir, tools);
        for d in [
            dir,
            &paths.root,
            &paths.state,
            &paths.cni_conf_dir,
            Path::new(RUN_DIR),
        ] {
            std::fs::create_dir_all(d).map_err(HarnessError::io(d))?;
        }
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(&paths, sandbox_image))
            .map_err(HarnessError::io(&config))?;
        let hosts = paths.hosts_dir.join(PULL_HOST);
        std::fs::create_dir_all(&hosts).map_err(HarnessError::io(&hosts))?;
        let hosts = hosts.join("hosts.toml");
        std::fs::write(&hosts, registry_hosts_toml(registry)).map_err(HarnessError::io(&hosts))?;
        let conflist = paths
            .cni_conf_dir
            .join(format!("10-{CNI_NETWORK}.conflist"));
        let text =
            serde_json::to_string_pretty(&cni_conflist(&dir.join("ipam"))).map_err(|source| {
                HarnessError::Json {
                    what: "CNI config".into(),
                    source,
                }
            })?;
        std::fs::write(&conflist, text).map_err(HarnessError::io(&conflist))?;

        let mut cmd = process::command(tools.containerd_dir.join("containerd"));
        cmd.arg("--config").arg(&config).arg("--log-level=warn");
        // The shim is found next to containerd, iptables (portmap) on PATH.
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env(
            "PATH",
            format!("{}:{path}:/usr/sbin:/sbin", tools.containerd_dir.display()),
        );
        let mut process = Supervised::spawn("containerd", cmd, dir.join("containerd.log"))?;
        let ctr = tools.ctr();
        let socket = paths.socket.clone();
        until_ready(
            &mut process,
            Duration::from_secs(30),
            Duration::from_millis(100),
            async || {
                tokio::process::Command::new(&ctr)
                    .arg("--address")
                    .arg(&socket)
                    .arg("version")
                    .output()
                    .await
                    .is_ok_and(|o| o.status.success())
            },
        )
        .await?;
        Ok(Self { process, paths })
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

    fn paths() -> ContainerdPaths {
        ContainerdPaths {
            root: "/n/root".into(),
            state: "/n/state".into(),
            socket: "/run/attach-node/containerd.sock".into(),
            shim_sockets: "/run/attach-node/s".into(),
            runc_root: "/run/attach-node/runc".into(),
            opt: "/n/opt".into(),
            hosts_dir: "/n/certs.d".into(),
            cni_conf_dir: "/n/net.d".into(),
            cni_bin_dir: "/cache/cni".into(),
            runc: "/cache/runc".into(),
        }
    }

    #[test]
    fn config_is_version_4_with_this_machines_settings() {
        let toml = config_toml(&paths(), "registry.attach.local/attach/pause:abc");
        assert!(toml.starts_with("version = 4\n"));
        for needle in [
            "restrict_oom_score_adj = true",
            "SystemdCgroup = false",
            "sandbox = \"registry.attach.local/attach/pause:abc\"",
            "imports = []",
            "io.containerd.nri.v1.nri",
            "socket_dir = \"/run/attach-node/s\"",
            "address = \"/run/attach-node/containerd.sock\"",
            "BinaryName = \"/cache/runc\"",
        ] {
            assert!(toml.contains(needle), "{needle} missing from\n{toml}");
        }
        // Nothing outside the state folders.
        for line in toml.lines().filter(|l| l.contains("= \"/")) {
            let path = line.split('"').nth(1).unwrap();
            assert!(
                ["/n/", "/run/attach-node/", "/cache/"]
                    .iter()
                    .any(|p| path.starts_with(p)),
                "{line}"
            );
        }
    }

    #[test]
    fn pods_are_not_masqueraded() {
        let conf = cni_conflist(Path::new("/n/ipam"));
        assert_eq!(conf["plugins"][0]["ipMasq"], false);
        assert_eq!(conf["plugins"][0]["bridge"], BRIDGE);
        assert_eq!(conf["plugins"][0]["ipam"]["dataDir"], "/n/ipam");
    }
}
