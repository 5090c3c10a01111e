//! A real node in the test world: containerd, runc and CNI on a bridge,
//! the kubelet, kube-proxy, kube-scheduler and CoreDNS, all built from their
//! Go modules. Pods really run: native sidecars, probes, volumes, Services.
//!
//! Its bridge, cgroups, iptables chains and kernel settings are
//! machine-wide, so there is one node per machine (a lock), shared by every
//! test of the world that runs it; each test takes its own namespace.
//! Everything it creates carries its names, so that [`janitor`] can take it
//! down to nothing, even after the supervisor was killed.

pub mod cluster;
pub mod containerd;
pub mod coredns;
pub mod inspect;
pub mod janitor;
pub mod kube_proxy;
pub mod kubelet;
pub mod network;
pub mod scheduler;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::HarnessError;
use crate::control_plane::{ApiServing, ControlPlane, write_kubeconfig};
use crate::images::ImagesInfo;
use crate::images::build::{ImageBuild, PAUSE};
use crate::machine_lock::MachineLock;
use crate::pki::{ClientIdentity, PkiOptions};
use crate::source_tree::repo_root;
use crate::tools::NodeTools;

/// The bridge pods attach to; its address is the pods' gateway, and the
/// address the API server, Keycloak, Redis and CoreDNS serve pods on.
pub const BRIDGE: &str = "attach-br0";
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
pub const POD_CIDR: &str = "10.231.0.0/24";
pub const POD_PREFIX: u8 = 24;
pub const SERVICE_CIDR: &str = "10.232.0.0/24";
/// The `kubernetes` Service's address (first of the service range).
pub const API_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 1);
/// The `kube-dns` Service's address.
pub const DNS_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 232, 0, 10);
pub const CLUSTER_DOMAIN: &str = "cluster.local";
pub const NODE_NAME: &str = "attach-node";
/// The cgroup (in every hierarchy) holding the pods' cgroups.
pub const CGROUP_ROOT: &str = "attach-node";
/// The chain (table `mangle`) keeping forwarding on the bridge.
pub const FORWARD_CHAIN: &str = "ATTACH-NODE-FORWARD";
/// Sockets (short paths: a unix socket path holds at most 107 bytes).
pub const RUN_DIR: &str = "/run/attach-node";
/// The CNI network's name.
pub const CNI_NETWORK: &str = "attach-node";

/// How tests reach the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub bridge: String,
    pub bridge_ip: Ipv4Addr,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub dns_service_ip: Ipv4Addr,
    /// The CRI socket, for `ctr --address`.
    pub containerd_socket: PathBuf,
    /// `ctr`, for looking at containers from the host.
    pub ctr: PathBuf,
    /// The node's state folder.
    pub dir: PathBuf,
}

/// How the control plane serves when a node joins: on the bridge, with the
/// bridge address and the `kubernetes` Service's IP in its certificate, and
/// client certificates for the node's components.
pub fn api_serving() -> ApiServing {
    ApiServing {
        address: BRIDGE_IP.into(),
        service_cidr: SERVICE_CIDR.into(),
        pki: PkiOptions {
            serving_sans: vec![BRIDGE_IP.to_string(), API_SERVICE_IP.to_string()],
            clients: vec![
                ClientIdentity::new(
                    "kubelet",
                    &format!("system:node:{NODE_NAME}"),
                    &["system:nodes"],
                ),
                ClientIdentity::new("kube-proxy", "system:kube-proxy", &[]),
                ClientIdentity::new("kube-scheduler", "system:kube-scheduler", &[]),
                ClientIdentity::new("coredns", cluster::COREDNS_USER, &[]),
                ClientIdentity::new("kubelet-client", cluster::APISERVER_KUBELET_USER, &[]),
            ],
            kubelet_sans: vec![BRIDGE_IP.to_string(), NODE_NAME.to_owned()],
        },
        node: true,
    }
}

/// The machine side of a node, before its processes: the lock, the
/// network. Dropping it sweeps everything the node may have left.
#[derive(Debug)]
pub struct NodePrep {
    dir: PathBuf,
    iptables: PathBuf,
    network: Option<network::NodeNetwork>,
    swept: bool,
    _lock: MachineLock,
}

impl NodePrep {
    /// Takes the machine's node lock, clears what a killed node left, and
    /// sets up the network.
    pub fn prepare(tools: &NodeTools, dir: &Path) -> Result<Self, HarnessError> {
        let lock = MachineLock::acquire("node", dir)?;
        // Nobody holds the lock: anything left is a dead node's.
        let leftovers = janitor::leftovers(&[]);
        if !leftovers.is_empty() {
            eprintln!(
                "[harness] clearing what a previous node left: {:?}",
                leftovers
            );
            for problem in janitor::sweep(None, &tools.iptables) {
                eprintln!("[harness] {problem}");
            }
        }
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        let network = network::NodeNetwork::create(dir, &tools.iptables)?;
        Ok(Self {
            dir: dir.to_owned(),
            iptables: tools.iptables.clone(),
            network: Some(network),
            swept: false,
            _lock: lock,
        })
    }

    fn sweep(&mut self) {
        if self.swept {
            return;
        }
        self.swept = true;
        // The janitor takes the network down and restores the sysctls.
        if let Some(network) = self.network.take() {
            network.disarm();
        }
        for problem in janitor::sweep(Some(&self.dir), &self.iptables) {
            eprintln!("[harness] node teardown: {problem}");
        }
    }
}

impl Drop for NodePrep {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// The running node. Stopping it (or dropping it) deletes its pods, stops
/// its processes and sweeps the machine.
#[derive(Debug)]
pub struct Node {
    coredns: Option<coredns::CoreDns>,
    kube_proxy: Option<kube_proxy::KubeProxy>,
    scheduler: Option<scheduler::Scheduler>,
    kubelet: Option<kubelet::Kubelet>,
    containerd: Option<containerd::Containerd>,
    admin_kubeconfig: PathBuf,
    kubectl: PathBuf,
    ctr: PathBuf,
    pub info: NodeInfo,
    prep: NodePrep,
}

impl Node {
    /// Starts the node's processes against `control_plane` (started with
    /// [`api_serving`]), its images from `images`.
    pub async fn start(
        prep: NodePrep,
        tools: &NodeTools,
        control_plane: &ControlPlane,
        images: &ImagesInfo,
    ) -> Result<Self, HarnessError> {
        let dir = prep.dir.clone();
        let admin = crate::control_plane::client_for(&control_plane.kubeconfig).await?;
        cluster::apply(&admin).await?;

        let kubeconfig = |name: &str| -> Result<PathBuf, HarnessError> {
            let files = control_plane
                .pki
                .clients
                .get(name)
                .ok_or_else(|| HarnessError::Other(format!("no {name} client certificate")))?;
            let path = dir.join(format!("{name}.kubeconfig"));
            write_kubeconfig(
                &path,
                &control_plane.server,
                &control_plane.pki.ca_cert,
                files,
            )?;
            Ok(path)
        };

        // The sandbox image, built here and served by the local registry.
        let pause = ImageBuild {
            name: PAUSE.into(),
            tag: tools.pause_key.clone(),
            dockerfile: repo_root().join("tests/images/pause.Dockerfile"),
            binaries: vec![(tools.pause.clone(), "pause".into())],
            build_args: Vec::new(),
        };
        let images_for_build = images.clone();
        let pause_image =
            tokio::task::spawn_blocking(move || pause.build_and_push(&images_for_build))
                .await
                .map_err(|e| HarnessError::Other(format!("pause image build: {e}")))??;
        let sandbox = format!("{}:{}", pause_image.repository, pause_image.tag);

        let containerd = containerd::Containerd::start(
            tools,
            &dir.join("containerd"),
            &sandbox,
            &images.registry,
        )
        .await?;

        let serving = control_plane
            .pki
            .kubelet_serving
            .clone()
            .ok_or_else(|| HarnessError::Other("no kubelet serving certificate".into()))?;
        let (port, healthz_port) = kubelet::ports()?;
        let setup = kubelet::KubeletSetup {
            dir: dir.join("kubelet"),
            client_ca: control_plane.pki.ca_cert.clone(),
            serving,
            containerd_socket: containerd.paths.socket.clone(),
            port,
            healthz_port,
        };
        prepare_cgroup_root()?;
        let kubelet_kubeconfig = kubeconfig("kubelet")?;
        let proxy_kubeconfig = kubeconfig("kube-proxy")?;
        let scheduler_kubeconfig = kubeconfig("kube-scheduler")?;
        let coredns_kubeconfig = kubeconfig("coredns")?;
        let (proxy_dir, scheduler_dir, coredns_dir) = (
            dir.join("kube-proxy"),
            dir.join("kube-scheduler"),
            dir.join("coredns"),
        );
        let (kubelet, kube_proxy, scheduler, coredns) = tokio::join!(
            kubelet::Kubelet::start(tools, setup, &kubelet_kubeconfig, &admin),
            kube_proxy::KubeProxy::start(tools, &proxy_dir, &proxy_kubeconfig),
            scheduler::Scheduler::start(tools, &scheduler_dir, &scheduler_kubeconfig, &admin),
            coredns::CoreDns::start(tools, &coredns_dir, &coredns_kubeconfig),
        );
        let info = NodeInfo {
            name: NODE_NAME.into(),
            bridge: BRIDGE.into(),
            bridge_ip: BRIDGE_IP,
            pod_cidr: POD_CIDR.into(),
            service_cidr: SERVICE_CIDR.into(),
            dns_service_ip: DNS_SERVICE_IP,
            containerd_socket: containerd.paths.socket.clone(),
            ctr: tools.ctr(),
            dir: dir.clone(),
        };
        // Built before the results are checked, so that whatever started is
        // stopped by Drop if another part failed.
        let mut node = Self {
            coredns: None,
            kube_proxy: None,
            scheduler: None,
            kubelet: None,
            containerd: Some(containerd),
            admin_kubeconfig: control_plane.kubeconfig.clone(),
            kubectl: tools.kubectl.clone(),
            ctr: tools.ctr(),
            info,
            prep,
        };
        let mut first_error = None;
        match kubelet {
            Ok(k) => node.kubelet = Some(k),
            Err(e) => first_error = first_error.or(Some(e)),
        }
        match kube_proxy {
            Ok(k) => node.kube_proxy = Some(k),
            Err(e) => first_error = first_error.or(Some(e)),
        }
        match scheduler {
            Ok(s) => node.scheduler = Some(s),
            Err(e) => first_error = first_error.or(Some(e)),
        }
        match coredns {
            Ok(c) => node.coredns = Some(c),
            Err(e) => first_error = first_error.or(Some(e)),
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(node),
        }
    }

    /// `(component, pid)` of every node process.
    pub fn pids(&self) -> Vec<(String, u32)> {
        [
            ("containerd", self.containerd.as_ref().and_then(|p| p.pid())),
            ("kubelet", self.kubelet.as_ref().and_then(|p| p.pid())),
            ("kube-proxy", self.kube_proxy.as_ref().and_then(|p| p.pid())),
            (
                "kube-scheduler",
                self.scheduler.as_ref().and_then(|p| p.pid()),
            ),
            ("coredns", self.coredns.as_ref().and_then(|p| p.pid())),
        ]
        .into_iter()
        .filter_map(|(name, pid)| pid.map(|pid| (name.to_owned(), pid)))
        .collect()
    }

    /// Deletes every pod through the kubelet (so that their networks and
    /// mounts are torn down properly), stops the node's processes, then
    /// sweeps the machine. Bounded: a pod that does not stop in time is
    /// killed by the sweep.
    pub fn stop(&mut self) {
        let started = Instant::now();
        // No new pod reaches the kubelet: controllers recreate deleted
        // pods, but nothing schedules them any more.
        if let Some(mut scheduler) = self.scheduler.take() {
            scheduler.stop();
        }
        if self.kubelet.is_some() && self.containerd.is_some() {
            let deleted = Command::new(&self.kubectl)
                .arg("--kubeconfig")
                .arg(&self.admin_kubeconfig)
                .args([
                    "delete",
                    "pods",
                    "--all",
                    "--all-namespaces",
                    "--grace-period=2",
                    "--wait=false",
                ])
                .output();
            if let Ok(out) = deleted
                && !out.status.success()
            {
                eprintln!(
                    "[harness] deleting the node's pods: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline && self.running_tasks() > 0 {
                std::thread::sleep(Duration::from_millis(250));
            }
            let left = self.running_tasks();
            if left > 0 {
                eprintln!("[harness] {left} containers still running after 40s; killing them");
            }
        }
        if let Some(mut p) = self.coredns.take() {
            p.stop();
        }
        if let Some(mut p) = self.kube_proxy.take() {
            p.stop();
        }
        if let Some(mut p) = self.kubelet.take() {
            p.stop();
        }
        if let Some(mut p) = self.containerd.take() {
            p.stop();
        }
        self.prep.sweep();
        eprintln!(
            "[harness] node stopped in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }

    /// Containers (sandboxes included) containerd still runs.
    fn running_tasks(&self) -> usize {
        Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.info.containerd_socket)
            .args(["--namespace", "k8s.io", "tasks", "list", "--quiet"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map_or(0, |o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .count()
            })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.containerd.is_some() || self.kubelet.is_some() {
            self.stop();
        }
    }
}

/// Creates the pods' cgroup root (the kubelet wants it to exist): in every
/// v1 hierarchy, with the cpuset's CPUs and memory nodes copied from the
/// root so that children can hold tasks; on a cgroup v2 machine, in the
/// unified tree, with the controllers the kubelet uses delegated to it.
fn prepare_cgroup_root() -> Result<(), HarnessError> {
    let fs = std::path::Path::new("/sys/fs/cgroup");
    if fs.join("cgroup.controllers").exists() {
        let ours = fs.join(CGROUP_ROOT);
        std::fs::create_dir_all(&ours).map_err(HarnessError::io(&ours))?;
        let control = ours.join("cgroup.subtree_control");
        for controller in ["cpuset", "cpu", "io", "memory", "hugetlb", "pids"] {
            // A controller the kernel lacks is simply not delegated.
            let _ = std::fs::write(&control, format!("+{controller}"));
        }
        return Ok(());
    }
    let Ok(hierarchies) = std::fs::read_dir(fs) else {
        return Err(HarnessError::Other("no /sys/fs/cgroup".into()));
    };
    for hierarchy in hierarchies.filter_map(Result::ok) {
        let root = hierarchy.path();
        // Only v1 hierarchies (the v2 part of a hybrid layout gives no
        // controllers; the kubelet makes its folders there itself).
        if !root.join("tasks").exists() {
            continue;
        }
        let ours = root.join(CGROUP_ROOT);
        std::fs::create_dir_all(&ours).map_err(HarnessError::io(&ours))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(root.join(file)) {
                let target = ours.join(file);
                let current = std::fs::read_to_string(&target).unwrap_or_default();
                if current.trim().is_empty() {
                    std::fs::write(&target, value.trim()).map_err(HarnessError::io(&target))?;
                }
            }
        }
    }
    Ok(())
}
