//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager, with the flags envtest uses. There is no
//! scheduler and no kubelet, so pods stay Pending.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::HarnessError;
use crate::pki::ControlPlanePki;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::tools::Tools;
use crate::wait::until_ready;

/// How long each process gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The running control plane. Dropping it stops all three processes.
#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order: the controller manager first, etcd last.
    controller_manager: Supervised,
    apiserver: Supervised,
    etcd: Supervised,
    /// The admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager under `dir` and
    /// waits until the API server is ready and the controller manager works.
    pub async fn start(tools: &Tools, dir: &Path) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        let pki = ControlPlanePki::write(&dir.join("pki"))?;

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
        let server = format!("https://127.0.0.1:{api_port}");
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
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg("--authorization-mode=RBAC")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
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
        let mut apiserver =
            Supervised::spawn("kube-apiserver", api_cmd, dir.join("kube-apiserver.log"))?;

        let kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &pki)?;
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

/// Writes an admin kubeconfig (JSON, which every YAML reader accepts).
fn write_kubeconfig(path: &Path, server: &str, pki: &ControlPlanePki) -> Result<(), HarnessError> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(HarnessError::io(p));
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "attach-test",
            "cluster": {
                "server": server,
                "certificate-authority-data": STANDARD.encode(read(&pki.ca_cert)?),
            },
        }],
        "users": [{
            "name": "attach-test-admin",
            "user": {
                "client-certificate-data": STANDARD.encode(read(&pki.admin_cert)?),
                "client-key-data": STANDARD.encode(read(&pki.admin_key)?),
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
