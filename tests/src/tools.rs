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
    pub containerd: String,
    pub runc: String,
    pub cni_plugins: String,
    pub coredns: String,
    pub registry: String,
    pub buildkit: String,
    /// Prometheus's Go module version (`v0.3XX.Y` is release 3.XX.Y).
    pub prometheus: String,
    /// The OpenTelemetry Collector's (`go.opentelemetry.io/collector/otelcol`).
    pub otelcol: String,
    /// The Ollama module the real engine is built from.
    pub ollama: String,
    /// The llama-cpp-python release whose server the llama.cpp engine is.
    pub llama_cpp_python: String,
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
            containerd: get("CONTAINERD_VERSION")?,
            runc: get("RUNC_VERSION")?,
            cni_plugins: get("CNI_PLUGINS_VERSION")?,
            coredns: get("COREDNS_VERSION")?,
            registry: get("REGISTRY_VERSION")?,
            buildkit: get("BUILDKIT_VERSION")?,
            prometheus: get("PROMETHEUS_VERSION")?,
            otelcol: get("OTELCOL_VERSION")?,
            ollama: get("OLLAMA_VERSION")?,
            llama_cpp_python: get("LLAMA_CPP_PYTHON_VERSION")?,
        })
    }
}

/// Runs a build script of `tests/tools` (`script` is its path under `tests/`
/// of the clone under test) that prints where it put things as `KEY=path`
/// lines (a no-op when all of it is cached), and returns them.
pub fn script_paths(script: &str) -> Result<HashMap<String, PathBuf>, String> {
    let out = std::process::Command::new(crate::source_tree::tests_dir().join(script))
        .output()
        .map_err(|e| format!("{script}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(key, path)| (key.to_owned(), PathBuf::from(path)))
        .collect())
}

/// The key of the cached pause binary: `tests/tools/build-node.sh` names it
/// `pause-<first 12 hex digits of sha256(go.mod ++ main.go)>`, so a change
/// to its source rebuilds it.
pub fn pause_key() -> String {
    source_key(&[
        include_bytes!("../tools/pause/go.mod"),
        include_bytes!("../tools/pause/main.go"),
    ])
}

/// The first 12 hex digits of sha256 over `files` one after another: the
/// key `tests/tools` build scripts cache the project's own commands under
/// (`cat FILES | sha256sum | cut -c1-12`), so a change to their source
/// rebuilds them.
fn source_key(files: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file);
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    hex[..12].to_owned()
}

/// The key of the cached dashboard linter: `dashlint-<PROMETHEUS_VERSION>-<key>`.
pub fn dashlint_key() -> String {
    source_key(&[
        include_bytes!("../tools/prometheus/go.mod"),
        include_bytes!("../tools/prometheus/cmd/dashlint/main.go"),
    ])
}

/// The key of the cached collector: `otelcol-<OTELCOL_VERSION>-<key>`.
pub fn otelcol_key() -> String {
    source_key(&[
        include_bytes!("../tools/otelcol/go.mod"),
        include_bytes!("../tools/otelcol/main.go"),
    ])
}

/// The binaries of the real node, the image registry and the image builder,
/// from the same cache (built by `tests/tools/build-node.sh`).
#[derive(Debug, Clone)]
pub struct NodeTools {
    /// Holds `containerd`, `containerd-shim-runc-v2` and `ctr`.
    pub containerd_dir: PathBuf,
    pub runc: PathBuf,
    /// Holds `bridge`, `host-local`, `loopback` and `portmap`.
    pub cni_dir: PathBuf,
    pub kubelet: PathBuf,
    pub kube_proxy: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
    pub coredns: PathBuf,
    pub registry: PathBuf,
    /// Holds `buildkitd` and `buildctl`.
    pub buildkit_dir: PathBuf,
    /// The sandbox ("pause") binary.
    pub pause: PathBuf,
    /// The key the pause binary is cached under; also its image's tag.
    pub pause_key: String,
    pub iptables: PathBuf,
}

impl NodeTools {
    /// Finds every node binary, failing with the name of the first one missing.
    pub fn locate() -> Result<Self, HarnessError> {
        let versions = Versions::pinned()?;
        let bin = Tools::cache_dir().join("bin");
        let cached = |name: &str, version: &str| {
            existing(
                &format!("{name} {version}"),
                bin.join(format!("{name}-{version}")),
            )
        };
        let pause_key = pause_key();
        let containerd_dir = cached("containerd", &versions.containerd)?;
        let cni_dir = cached("cni-plugins", &versions.cni_plugins)?;
        let buildkit_dir = cached("buildkit", &versions.buildkit)?;
        for (dir, names) in [
            (
                &containerd_dir,
                &["containerd", "containerd-shim-runc-v2", "ctr"][..],
            ),
            (
                &cni_dir,
                &["bridge", "host-local", "loopback", "portmap"][..],
            ),
            (&buildkit_dir, &["buildkitd", "buildctl"][..]),
        ] {
            for name in names {
                existing(name, dir.join(name))?;
            }
        }
        Ok(Self {
            runc: cached("runc", &versions.runc)?,
            kubelet: cached("kubelet", &versions.kubernetes)?,
            kube_proxy: cached("kube-proxy", &versions.kubernetes)?,
            kube_scheduler: cached("kube-scheduler", &versions.kubernetes)?,
            kubectl: cached("kubectl", &versions.kubernetes)?,
            coredns: cached("coredns", &versions.coredns)?,
            registry: cached("registry", &versions.registry)?,
            pause: cached("pause", &pause_key)?,
            pause_key,
            containerd_dir,
            cni_dir,
            buildkit_dir,
            iptables: which("iptables")
                .or_else(|| Some(PathBuf::from("/usr/sbin/iptables")).filter(|p| p.exists()))
                .ok_or_else(|| HarnessError::Missing {
                    what: "iptables (Debian package iptables; run scripts/install-deps)".into(),
                    path: "$PATH".into(),
                })?,
        })
    }

    /// `buildctl`.
    pub fn buildctl(&self) -> PathBuf {
        self.buildkit_dir.join("buildctl")
    }

    /// `ctr`.
    pub fn ctr(&self) -> PathBuf {
        self.containerd_dir.join("ctr")
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

/// The cached `prometheus-<PROMETHEUS_VERSION>` (built by `tests/tools/build.sh`).
pub fn prometheus_binary() -> Result<PathBuf, HarnessError> {
    let versions = Versions::pinned()?;
    cached_binary("prometheus", &versions.prometheus)
}

/// The cached `promtool-<PROMETHEUS_VERSION>` (built by `tests/tools/build.sh`).
pub fn promtool_binary() -> Result<PathBuf, HarnessError> {
    let versions = Versions::pinned()?;
    cached_binary("promtool", &versions.prometheus)
}

/// The cached OpenTelemetry Collector of `tests/tools/otelcol` (the OTLP
/// receiver and the file exporter), built by `tests/tools/build.sh`.
pub fn otelcol_binary() -> Result<PathBuf, HarnessError> {
    let versions = Versions::pinned()?;
    cached_binary(
        "otelcol",
        &format!("{}-{}", versions.otelcol, otelcol_key()),
    )
}

/// The cached dashboard linter of `tests/tools/prometheus/cmd/dashlint`
/// (built by `tests/tools/build.sh` with Prometheus's PromQL parser).
pub fn dashlint_binary() -> Result<PathBuf, HarnessError> {
    let versions = Versions::pinned()?;
    cached_binary(
        "dashlint",
        &format!("{}-{}", versions.prometheus, dashlint_key()),
    )
}

/// `$ATTACH_CACHE/bin/<name>-<version>`, if it exists.
fn cached_binary(name: &str, version: &str) -> Result<PathBuf, HarnessError> {
    existing(
        &format!("{name} {version}"),
        Tools::cache_dir()
            .join("bin")
            .join(format!("{name}-{version}")),
    )
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
        assert!(v.containerd.starts_with("v2.4."), "{}", v.containerd);
        assert!(v.runc.starts_with("v1.5."), "{}", v.runc);
        assert!(v.cni_plugins.starts_with("v1.10."), "{}", v.cni_plugins);
        assert!(v.coredns.starts_with("v1.15."), "{}", v.coredns);
        assert!(v.registry.starts_with("v3.1."), "{}", v.registry);
        assert!(v.buildkit.starts_with("v0.34."), "{}", v.buildkit);
        assert!(v.prometheus.starts_with("v0.3"), "{}", v.prometheus);
        assert!(v.otelcol.starts_with("v0.1"), "{}", v.otelcol);
    }

    #[test]
    fn pause_key_matches_the_build_script() {
        // build-node.sh: `cat go.mod main.go | sha256sum | cut -c1-12`.
        let dir = crate::source_tree::tests_dir().join("tools/pause");
        let dir = dir.display();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cat {dir}/go.mod {dir}/main.go | sha256sum | cut -c1-12"
            ))
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pause_key());
    }

    #[test]
    fn own_command_keys_match_the_build_script() {
        // build.sh: `source_key FILES` is `cat FILES | sha256sum | cut -c1-12`.
        let tools = crate::source_tree::tests_dir().join("tools");
        let tools = tools.display();
        for (files, key) in [
            (
                "prometheus/go.mod prometheus/cmd/dashlint/main.go",
                dashlint_key(),
            ),
            ("otelcol/go.mod otelcol/main.go", otelcol_key()),
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "cd {tools} && cat {files} | sha256sum | cut -c1-12"
                ))
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), key, "{files}");
        }
    }
}
