//! The local OCI registry: `distribution`'s `registry serve`, plain HTTP on
//! a loopback port, storing blobs in the cache.

use std::path::Path;
use std::time::Duration;

use crate::HarnessError;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::tools::NodeTools;
use crate::wait::until_http_ok;

/// The running registry.
#[derive(Debug)]
pub struct Registry {
    process: Supervised,
    /// `127.0.0.1:<port>`.
    pub address: String,
}

impl Registry {
    /// Starts a registry whose config and log live in `dir` and whose blobs
    /// live in `storage`.
    pub async fn start(
        tools: &NodeTools,
        dir: &Path,
        storage: &Path,
    ) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        std::fs::create_dir_all(storage).map_err(HarnessError::io(storage))?;
        let address = format!("127.0.0.1:{}", free_port()?);
        let config = dir.join("config.yml");
        let text =
            serde_json::to_string_pretty(&config_json(&address, storage)).map_err(|source| {
                HarnessError::Json {
                    what: "registry config".into(),
                    source,
                }
            })?;
        std::fs::write(&config, text).map_err(HarnessError::io(&config))?;
        let mut cmd = process::command(&tools.registry);
        cmd.arg("serve").arg(&config);
        let mut process = Supervised::spawn("registry", cmd, dir.join("registry.log"))?;
        let probe = format!("http://{address}/v2/");
        until_http_ok(
            &mut process,
            &probe,
            Duration::from_secs(30),
            Duration::from_millis(100),
        )
        .await?;
        Ok(Self { process, address })
    }

    pub fn pid(&self) -> Option<(String, u32)> {
        self.process.pid().map(|p| ("registry".to_owned(), p))
    }

    pub fn stop(&mut self) {
        self.process.stop(process::DEFAULT_GRACE);
    }
}

/// The registry's configuration (JSON is YAML): loopback only, no access
/// log, deletes allowed (so a cache can be pruned).
fn config_json(address: &str, storage: &Path) -> serde_json::Value {
    serde_json::json!({
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": true}},
        "storage": {
            "filesystem": {"rootdirectory": storage},
            "delete": {"enabled": true},
        },
        "http": {"addr": address},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_on_loopback_from_the_cache() {
        let config = config_json("127.0.0.1:5000", Path::new("/cache/registry"));
        assert_eq!(config["http"]["addr"], "127.0.0.1:5000");
        assert_eq!(
            config["storage"]["filesystem"]["rootdirectory"],
            "/cache/registry"
        );
    }
}
