//! Building and serving container images: a local OCI registry
//! (`distribution`) and BuildKit (`buildkitd`), both built from their Go
//! modules, and the image builds of this project (`build`).
//!
//! Their data lives in the cache ($ATTACH_CACHE/registry, /buildkit), so a
//! warm machine pushes only what changed. A machine-wide lock keeps a second
//! world from serving the same folders.

pub mod build;
pub mod buildkit;
pub mod llamacpp;
pub mod mcp_tools;
pub mod ollama;
pub mod python;
pub mod registry;
pub mod rootfs;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::HarnessError;
use crate::machine_lock::MachineLock;
use crate::tools::{NodeTools, Tools};

/// The name pods pull this registry's images by: containerd maps it to the
/// registry's loopback address (its `hosts.toml`), so image references do not
/// change with the registry's port.
pub const PULL_HOST: &str = "registry.attach.local";

/// The repository folder of every image this project builds.
pub const NAMESPACE: &str = "attach";

/// How to reach the registry and the builder of a running world.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImagesInfo {
    /// `127.0.0.1:<port>`: where images are pushed (plain HTTP).
    pub registry: String,
    /// The registry's name in pod specs ([`PULL_HOST`]).
    pub pull_host: String,
    /// `unix://<socket>` of buildkitd, for `buildctl --addr`.
    pub buildkit_addr: String,
    /// `buildctl`.
    pub buildctl: PathBuf,
}

impl ImagesInfo {
    /// `<pull host>/attach/<name>`: how a pod names the image `name`.
    pub fn pull_repository(&self, name: &str) -> String {
        format!("{}/{NAMESPACE}/{name}", self.pull_host)
    }

    /// `<registry>/attach/<name>`: where `name` is pushed.
    pub fn push_repository(&self, name: &str) -> String {
        format!("{}/{NAMESPACE}/{name}", self.registry)
    }
}

/// The running registry and builder. Dropping it stops both.
#[derive(Debug)]
pub struct ImageServices {
    // Field order is drop order; the lock goes last.
    buildkit: buildkit::Buildkitd,
    registry: registry::Registry,
    pub info: ImagesInfo,
    _lock: MachineLock,
}

impl ImageServices {
    /// Starts the registry and buildkitd under `dir`, with their data in the cache.
    pub async fn start(tools: &NodeTools, dir: &Path) -> Result<Self, HarnessError> {
        let lock = MachineLock::acquire("images", dir)?;
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        let cache = Tools::cache_dir();
        let registry =
            registry::Registry::start(tools, &dir.join("registry"), &cache.join("registry"))
                .await?;
        let buildkit = buildkit::Buildkitd::start(
            tools,
            &dir.join("buildkit"),
            &cache.join("buildkit"),
            &registry.address,
        )
        .await?;
        let info = ImagesInfo {
            registry: registry.address.clone(),
            pull_host: PULL_HOST.into(),
            buildkit_addr: buildkit.address.clone(),
            buildctl: tools.buildctl(),
        };
        Ok(Self {
            buildkit,
            registry,
            info,
            _lock: lock,
        })
    }

    /// `(component, pid)` of both processes.
    pub fn pids(&self) -> Vec<(String, u32)> {
        [self.registry.pid(), self.buildkit.pid()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Stops buildkitd, then the registry.
    pub fn stop(&mut self) {
        self.buildkit.stop();
        self.registry.stop();
    }
}
