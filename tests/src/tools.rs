//! The binaries the harness runs, found in the cache that
//! `tests/tools/build.sh` fills.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::HarnessError;

/// `tests/tools/versions.env`, the one place the versions are written.
const VERSIONS_ENV: &str = include_str!("../tools/versions.env");

/// The component versions from `versions.env`.
#[derive(Debug, Clone)]
pub struct Versions {
    pub etcd: String,
    pub kubernetes: String,
    pub helm: String,
    pub keycloak: String,
}

impl Versions {
    /// Parses `versions.env` (`KEY=value` lines, `#` comments).
    pub fn pinned() -> Result<Self, HarnessError> {
        let vars: HashMap<&str, &str> = VERSIONS_ENV
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect();
        let get = |key: &str| {
            vars.get(key).map(|v| (*v).to_owned()).ok_or_else(|| {
                HarnessError::Other(format!("tests/tools/versions.env has no {key}"))
            })
        };
        Ok(Self {
            etcd: get("ETCD_VERSION")?,
            kubernetes: get("KUBERNETES_VERSION")?,
            helm: get("HELM_VERSION")?,
            keycloak: get("KEYCLOAK_VERSION")?,
        })
    }
}

/// Paths of every binary the harness runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub versions: Versions,
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub helm: PathBuf,
    pub keycloak_home: PathBuf,
    pub java_home: PathBuf,
    pub redis_server: PathBuf,
    pub redis_cli: PathBuf,
}

impl Tools {
    /// The cache folder: `$ATTACH_CACHE`, or `$HOME/.cache/attach`.
    pub fn cache_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("ATTACH_CACHE") {
            return PathBuf::from(dir);
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
        PathBuf::from(home).join(".cache").join("attach")
    }

    /// Finds every tool, failing with the name of the first one missing.
    pub fn locate() -> Result<Self, HarnessError> {
        let versions = Versions::pinned()?;
        let cache = Self::cache_dir();
        let bin = cache.join("bin");
        let cached = |name: &str, version: &str| {
            existing(
                &format!("{name} {version}"),
                bin.join(format!("{name}-{version}")),
            )
        };
        let java_home_file = cache.join("java-home");
        let java_home = std::fs::read_to_string(&java_home_file)
            .map(|s| PathBuf::from(s.trim()))
            .map_err(|_| HarnessError::Missing {
                what: "the chosen JDK (java-home)".into(),
                path: java_home_file.clone(),
            })?;
        Ok(Self {
            etcd: cached("etcd", &versions.etcd)?,
            kube_apiserver: cached("kube-apiserver", &versions.kubernetes)?,
            kube_controller_manager: cached("kube-controller-manager", &versions.kubernetes)?,
            helm: cached("helm", &versions.helm)?,
            keycloak_home: existing(
                &format!("Keycloak {}", versions.keycloak),
                cache
                    .join("keycloak")
                    .join(format!("keycloak-{}", versions.keycloak)),
            )?,
            java_home: existing("a JDK", java_home.join("bin").join("java")).map(|_| java_home)?,
            redis_server: which("redis-server").ok_or_else(|| HarnessError::Missing {
                what: "redis-server (Debian package redis-server)".into(),
                path: "$PATH".into(),
            })?,
            redis_cli: which("redis-cli").ok_or_else(|| HarnessError::Missing {
                what: "redis-cli (Debian package redis-tools)".into(),
                path: "$PATH".into(),
            })?,
            versions,
        })
    }
}

fn existing(what: &str, path: PathBuf) -> Result<PathBuf, HarnessError> {
    if path.exists() {
        Ok(path)
    } else {
        Err(HarnessError::Missing {
            what: what.to_owned(),
            path,
        })
    }
}

/// Looks `name` up on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_env_pins_every_component() {
        let v = Versions::pinned().expect("versions.env parses");
        assert!(v.etcd.starts_with("v3.6."), "etcd {}", v.etcd);
        assert!(v.kubernetes.starts_with("v1.35."), "k8s {}", v.kubernetes);
        assert!(v.helm.starts_with("v3."), "helm {}", v.helm);
        assert!(v.keycloak.starts_with("26."), "keycloak {}", v.keycloak);
    }
}
