//! BuildKit's daemon with its OCI worker (runc), on a unix socket in the
//! world's state folder, its build cache in the cache folder. The local
//! registry is declared plain HTTP to it.

use std::path::Path;
use std::time::Duration;

use crate::HarnessError;
use crate::process::{self, Supervised};
use crate::tools::NodeTools;
use crate::wait::until_ready;

/// The running buildkitd.
#[derive(Debug)]
pub struct Buildkitd {
    process: Supervised,
    /// `unix://<socket>`.
    pub address: String,
}

impl Buildkitd {
    /// Starts buildkitd with its config, socket and log in `dir` and its
    /// build cache in `root`; `registry` (`host:port`) is spoken to over HTTP.
    pub async fn start(
        tools: &NodeTools,
        dir: &Path,
        root: &Path,
        registry: &str,
    ) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        std::fs::create_dir_all(root).map_err(HarnessError::io(root))?;
        let address = format!("unix://{}", dir.join("buildkitd.sock").display());
        let config = dir.join("buildkitd.toml");
        std::fs::write(&config, config_toml(&address, root, dir, tools, registry))
            .map_err(HarnessError::io(&config))?;
        let mut cmd = process::command(tools.buildkit_dir.join("buildkitd"));
        cmd.arg("--config").arg(&config);
        let mut process = Supervised::spawn("buildkitd", cmd, dir.join("buildkitd.log"))?;
        let buildctl = tools.buildctl();
        until_ready(
            &mut process,
            Duration::from_secs(60),
            Duration::from_millis(200),
            async || {
                tokio::process::Command::new(&buildctl)
                    .arg("--addr")
                    .arg(&address)
                    .arg("debug")
                    .arg("workers")
                    .output()
                    .await
                    .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
            },
        )
        .await?;
        Ok(Self { process, address })
    }

    pub fn pid(&self) -> Option<(String, u32)> {
        self.process.pid().map(|p| ("buildkitd".to_owned(), p))
    }

    pub fn stop(&mut self) {
        self.process.stop(process::DEFAULT_GRACE);
    }
}

/// buildkitd's config: the OCI worker only, a bounded cache, the local
/// registry over plain HTTP, every socket in the state folder.
fn config_toml(
    address: &str,
    root: &Path,
    dir: &Path,
    tools: &NodeTools,
    registry: &str,
) -> String {
    format!(
        r#"root = "{root}"

[grpc]
  address = ["{address}"]

[otel]
  socketPath = "{otel}"

[worker.oci]
  enabled = true
  binary = "{runc}"
  gc = true
  gckeepstorage = "4GB"

[worker.containerd]
  enabled = false

[registry."{registry}"]
  http = true
  insecure = true
"#,
        root = root.display(),
        otel = dir.join("otel-grpc.sock").display(),
        runc = tools.runc.display(),
    )
}
