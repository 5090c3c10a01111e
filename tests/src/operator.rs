//! Runs the real `attach-operator` binary as a process against the world's
//! API server, with its metrics and health endpoints on a free port.

use std::path::PathBuf;
use std::time::Duration;

use crate::HarnessError;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::wait::until_http_ok;
use crate::world::World;

/// Builds (once per test process) and returns the operator binary.
pub fn binary() -> Result<PathBuf, HarnessError> {
    crate::binaries::build("attach-operator", "attach-operator")
}

/// A running operator. Stopped on drop.
#[derive(Debug)]
pub struct OperatorProcess {
    process: Supervised,
    _dir: tempfile::TempDir,
    log: PathBuf,
    /// `http://127.0.0.1:<metrics port>`.
    pub admin_url: String,
}

impl OperatorProcess {
    /// Starts an operator that takes part in the election on `lease` (a
    /// Lease in the `default` namespace), with `extra_args`; waits until
    /// `/readyz` answers (connected, not necessarily leading).
    pub async fn start(
        world: &World,
        lease: &str,
        identity: &str,
        extra_args: &[&str],
    ) -> Result<Self, HarnessError> {
        let mut args = vec!["--lease-name", lease, "--identity", identity];
        args.extend_from_slice(extra_args);
        Self::start_with_kubeconfig(&world.control_plane()?.kubeconfig, &args).await
    }

    /// Starts an operator with `kubeconfig` (e.g. one that impersonates a
    /// service account) and `extra_args`.
    pub async fn start_with_kubeconfig(
        kubeconfig: &std::path::Path,
        extra_args: &[&str],
    ) -> Result<Self, HarnessError> {
        let port = free_port()?;
        let dir = tempfile::Builder::new()
            .prefix("attach-operator-")
            .tempdir()
            .map_err(HarnessError::io("tempdir"))?;
        let log = dir.path().join("operator.log");
        let mut cmd = process::command(binary()?);
        cmd.env("KUBECONFIG", kubeconfig)
            .args([
                "--log-format",
                "text",
                "--log-level",
                "attach_operator=debug,info",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
        // The webhook only where a test asks for it (it needs a port and a
        // MutatingWebhookConfiguration of its own).
        if !extra_args.contains(&"--webhook") {
            cmd.args(["--webhook", "false"]);
        }
        cmd.args(extra_args);
        let mut process = Supervised::spawn("attach-operator", cmd, log.clone())?;
        let admin_url = format!("http://127.0.0.1:{port}");
        let probe = format!("{admin_url}/readyz");
        until_http_ok(
            &mut process,
            &probe,
            Duration::from_secs(30),
            Duration::from_millis(50),
        )
        .await?;
        Ok(Self {
            process,
            _dir: dir,
            log,
            admin_url,
        })
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> Result<String, HarnessError> {
        let url = format!("{}/metrics", self.admin_url);
        reqwest::get(&url)
            .await
            .map_err(|source| HarnessError::Http {
                what: url.clone(),
                source,
            })?
            .text()
            .await
            .map_err(|source| HarnessError::Http { what: url, source })
    }

    /// Everything the operator logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Fails if the process exited.
    pub fn check_running(&mut self) -> Result<(), HarnessError> {
        self.process.check_running()
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit.
    pub fn stop(&mut self, grace: Duration) {
        self.process.stop(grace);
    }
}
