//! A real Kubernetes control plane: etcd, kube-apiserver and
//! kube-controller-manager, with the flags envtest uses. On its own it serves
//! on loopback and has no scheduler and no kubelet, so pods stay Pending;
//! with a node ([`ApiServing::for_node`]) it serves on the node's bridge, where
//! pods reach it, and authorizes kubelets with the Node authorizer.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::HarnessError;
use crate::pki::{ControlPlanePki, KeyPairFiles, PkiOptions};
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::tools::Tools;
use crate::wait::until_ready;

/// How long each process gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how the API server serves.
#[derive(Debug, Clone)]
pub struct ApiServing {
    /// The address it binds and advertises.
    pub address: IpAddr,
    /// `--service-cluster-ip-range`.
    pub service_cidr: String,
    /// Certificates to issue besides the control plane's own.
    pub pki: PkiOptions,
    /// A node joins: Node authorizer, NodeRestriction, and the kubelet
    /// client certificate (the `kubelet-client` entry of `pki.clients`).
    pub node: bool,
}

impl Default for ApiServing {
    /// Loopback only, no node.
    fn default() -> Self {
        Self {
            address: IpAddr::from([127, 0, 0, 1]),
            service_cidr: "10.0.0.0/24".into(),
            pki: PkiOptions::default(),
            node: false,
        }
    }
}

/// The running control plane. Dropping it stops all three processes.
#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order: the controller manager first, etcd last.
    controller_manager: Supervised,
    apiserver: Supervised,
    etcd: Supervised,
    /// The admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://<address>:<port>`.
    pub server: String,
    /// Every certificate and key of this control plane.
    pub pki: ControlPlanePki,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager under `dir` and
    /// waits until the API server is ready and the controller manager works.
    pub async fn start(tools: &Tools, dir: &Path) -> Result<Self, HarnessError> {
        Self::start_serving(tools, dir, &ApiServing::default()).await
    }

    /// [`ControlPlane::start`], serving as `serving` says.
    pub async fn start_serving(
        tools: &Tools,
        dir: &Path,
        serving: &ApiServing,
    ) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        let pki = ControlPlanePki::write_with(&dir.join("pki"), &serving.pki)?;

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd_cmd = process::command(&tools.etcd);
        etcd_cmd
            .arg("--name=attach-test")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=attach-test=http://127.0.0.1:{etcd_peer_port}"
            ))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        let mut etcd = Supervised::spawn("etcd", etcd_cmd, dir.join("etcd.log"))?;

        let api_port = free_port()?;
        let server = format!("https://{}:{api_port}", serving.address);
        let mut api_cmd = process::command(&tools.kube_apiserver);
        api_cmd
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!(
                "--cert-dir={}",
                dir.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--bind-address={}", serving.address))
            .arg(format!("--advertise-address={}", serving.address))
            .arg(format!(
                "--service-cluster-ip-range={}",
                serving.service_cidr
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                pki.service_account_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.service_account_key.display()
            ))
            .arg("--allow-privileged=true")
            .arg("--v=1");
        if serving.node {
            let kubelet_client = pki.clients.get("kubelet-client").ok_or_else(|| {
                HarnessError::Other("a node needs the kubelet-client certificate".into())
            })?;
            api_cmd
                .arg("--authorization-mode=Node,RBAC")
                .arg("--enable-admission-plugins=NodeRestriction")
                // The node's name is not in any DNS: reach it by its address.
                .arg("--kubelet-preferred-address-types=InternalIP")
                .arg(format!(
                    "--kubelet-certificate-authority={}",
                    pki.ca_cert.display()
                ))
                .arg(format!(
                    "--kubelet-client-certificate={}",
                    kubelet_client.cert.display()
                ))
                .arg(format!(
                    "--kubelet-client-key={}",
                    kubelet_client.key.display()
                ));
        } else {
            api_cmd.arg("--authorization-mode=RBAC");
        }
        let mut apiserver =
            Supervised::spawn("kube-apiserver", api_cmd, dir.join("kube-apiserver.log"))?;

        let kubeconfig = dir.join("admin.kubeconfig");
        let admin = KeyPairFiles {
            cert: pki.admin_cert.clone(),
            key: pki.admin_key.clone(),
        };
        write_kubeconfig(&kubeconfig, &server, &pki.ca_cert, &admin)?;
        let client = client_for(&kubeconfig).await?;

        until_ready(
            &mut apiserver,
            READY_TIMEOUT,
            Duration::from_millis(200),
            async || {
                let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
                    return false;
                };
                client.request_text(request).await.is_ok_and(|r| r == "ok")
            },
        )
        .await?;
        etcd.check_running()?;

        let mut kcm_cmd = process::command(&tools.kube_controller_manager);
        kcm_cmd
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.service_account_key.display()
            ))
            .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
            .arg("--controllers=*")
            .arg("--v=1");
        let mut controller_manager = Supervised::spawn(
            "kube-controller-manager",
            kcm_cmd,
            dir.join("kube-controller-manager.log"),
        )?;

        // The service-account controller creating `default` in `default` is
        // the first sign that the controller manager is doing its work.
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        until_ready(
            &mut controller_manager,
            READY_TIMEOUT,
            Duration::from_millis(200),
            async || matches!(sa.get_opt("default").await, Ok(Some(_))),
        )
        .await?;

        Ok(Self {
            controller_manager,
            apiserver,
            etcd,
            kubeconfig,
            server,
            pki,
        })
    }

    /// `(component, pid)` for every process, for the orphan check.
    pub fn pids(&self) -> Vec<(String, u32)> {
        [&self.etcd, &self.apiserver, &self.controller_manager]
            .into_iter()
            .filter_map(|p| p.pid().map(|pid| (p.name().to_owned(), pid)))
            .collect()
    }

    /// Stops all three processes, the controller manager first.
    pub fn stop(&mut self) {
        self.controller_manager.stop(process::DEFAULT_GRACE);
        self.apiserver.stop(process::DEFAULT_GRACE);
        self.etcd.stop(process::DEFAULT_GRACE);
    }
}

/// Writes a kubeconfig for the client certificate `user` (JSON, which every
/// YAML reader accepts).
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_cert: &Path,
    user: &KeyPairFiles,
) -> Result<(), HarnessError> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(HarnessError::io(p));
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "attach-test",
            "cluster": {
                "server": server,
                "certificate-authority-data": STANDARD.encode(read(&ca_cert.to_owned())?),
            },
        }],
        "users": [{
            "name": "attach-test-admin",
            "user": {
                "client-certificate-data": STANDARD.encode(read(&user.cert)?),
                "client-key-data": STANDARD.encode(read(&user.key)?),
            },
        }],
        "contexts": [{
            "name": "attach-test",
            "context": {"cluster": "attach-test", "user": "attach-test-admin"},
        }],
        "current-context": "attach-test",
    });
    let text = serde_json::to_string_pretty(&config).map_err(|source| HarnessError::Json {
        what: "kubeconfig".into(),
        source,
    })?;
    std::fs::write(path, text).map_err(HarnessError::io(path))
}

/// A client for the cluster that `kubeconfig` points at.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client, HarnessError> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}
