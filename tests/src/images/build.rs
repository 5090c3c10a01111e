//! The project's images, built with BuildKit from their Dockerfiles and
//! pushed to the local registry.
//!
//! Nothing is pulled from a public registry: the Rust binaries are built
//! here (static, glibc with `+crt-static`) and reach the Dockerfile through
//! its `binaries` build context (`BINARY_SOURCE=prebuilt`), the other path
//! each Dockerfile documents besides `FROM rust:...`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::ImagesInfo;
use crate::HarnessError;
use crate::source_tree::repo_root;

/// The gateway image (sidecar/Dockerfile).
pub const GATEWAY: &str = "attach-gateway";
/// The operator image (operator/Dockerfile).
pub const OPERATOR: &str = "attach-operator";
/// The tests' model stand-in, with the in-cluster test client beside it.
pub const MOCK_MODEL: &str = "attach-mock-model";
/// The node's sandbox image.
pub const PAUSE: &str = "pause";

/// One image to build: a Dockerfile and the files of its `binaries` context.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    /// The repository name under `attach/`.
    pub name: String,
    /// The tag to push (the reference pods use carries the digest too).
    pub tag: String,
    pub dockerfile: PathBuf,
    /// `(file or folder, name)`: copied into `<os>/<arch>/<name>` of the
    /// context.
    pub binaries: Vec<(PathBuf, String)>,
    /// `--build-arg`s (VERSION and REVISION are always set).
    pub build_args: Vec<(String, String)>,
}

/// An image in the registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuiltImage {
    pub name: String,
    pub tag: String,
    /// `sha256:...` of the manifest.
    pub digest: String,
    /// `<pull host>/attach/<name>:<tag>@<digest>`: what pod specs use.
    pub reference: String,
    /// `<pull host>/attach/<name>`.
    pub repository: String,
    /// Bytes a node downloads: the config and the compressed layers.
    pub compressed_bytes: u64,
}

/// `repository` and `tag` (digest included) of an image reference, as a
/// chart's `image.repository` and `image.tag` take them.
pub fn split_reference(reference: &str) -> (String, String) {
    // repo[:port]/path:tag@digest -> (repo[:port]/path, tag@digest)
    let (name, digest) = reference
        .split_once('@')
        .map_or((reference, None), |(n, d)| (n, Some(d)));
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], &name[slash + i + 1..]),
        None => (name, "latest"),
    };
    let tag = digest.map_or_else(|| tag.to_owned(), |d| format!("{tag}@{d}"));
    (repository.to_owned(), tag)
}

/// The Rust target of this machine (`<arch>-unknown-linux-gnu`).
pub fn host_target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// The OCI architecture name of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The workspace version and the git revision, for the OCI labels.
pub fn version_and_revision() -> (String, String) {
    let version = env!("CARGO_PKG_VERSION").to_owned();
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    (version, revision)
}

/// Builds `bins` (`(package, binary)`) in release mode as static binaries
/// for this machine; returns the folder holding them.
pub fn build_static_binaries(bins: &[(&str, &str)]) -> Result<PathBuf, HarnessError> {
    let target = host_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--target", &target])
        // With --target, these flags reach only the target's code, not build
        // scripts or proc macros (which must stay dynamic).
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(repo_root());
    for (package, bin) in bins {
        cmd.args(["-p", package, "--bin", bin]);
    }
    let status = cmd.status().map_err(|source| HarnessError::Spawn {
        program: "cargo build --release".into(),
        source,
    })?;
    if !status.success() {
        return Err(HarnessError::Other(format!(
            "cargo build --release --target {target}: {status}"
        )));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    Ok(target_dir.join(target).join("release"))
}

impl ImageBuild {
    /// An image of this project's Rust binaries `bins`, found in `dir`.
    pub fn rust(name: &str, dockerfile: &str, dir: &Path, bins: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            tag: env!("CARGO_PKG_VERSION").to_owned(),
            dockerfile: repo_root().join(dockerfile),
            binaries: bins
                .iter()
                .map(|b| (dir.join(b), (*b).to_owned()))
                .collect(),
            build_args: Vec::new(),
        }
    }

    /// Builds the image and pushes it to the registry of `images`.
    pub fn build_and_push(&self, images: &ImagesInfo) -> Result<BuiltImage, HarnessError> {
        let work = tempfile::Builder::new()
            .prefix("attach-image-")
            .tempdir()
            .map_err(HarnessError::io("tempdir"))?;
        let context = work.path().join("context");
        let binaries = work.path().join("binaries");
        let platform_dir = binaries.join("linux").join(oci_arch());
        for dir in [&context, &platform_dir] {
            std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        }
        for (file, name) in &self.binaries {
            copy_all(file, &platform_dir.join(name))?;
        }
        let (version, revision) = version_and_revision();
        let dockerfile_dir = self
            .dockerfile
            .parent()
            .ok_or_else(|| HarnessError::Other("a Dockerfile without a folder".into()))?;
        let dockerfile_name = self
            .dockerfile
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| HarnessError::Other("a Dockerfile without a name".into()))?;
        let push = format!("{}:{}", images.push_repository(&self.name), self.tag);
        let metadata = work.path().join("metadata.json");
        let mut cmd = Command::new(&images.buildctl);
        cmd.arg("--addr")
            .arg(&images.buildkit_addr)
            .args(["build", "--frontend", "dockerfile.v0"])
            .arg("--local")
            .arg(format!("context={}", context.display()))
            .arg("--local")
            .arg(format!("dockerfile={}", dockerfile_dir.display()))
            .arg("--local")
            .arg(format!("binaries={}", binaries.display()))
            .args(["--opt", &format!("filename={dockerfile_name}")])
            .args(["--opt", "context:binaries=local:binaries"])
            .args(["--opt", "build-arg:BINARY_SOURCE=prebuilt"])
            .args(["--opt", &format!("build-arg:VERSION={version}")])
            .args(["--opt", &format!("build-arg:REVISION={revision}")])
            .args(["--opt", &format!("platform=linux/{}", oci_arch())]);
        for (key, value) in &self.build_args {
            cmd.args(["--opt", &format!("build-arg:{key}={value}")]);
        }
        cmd.arg("--output")
            .arg(format!(
                "type=image,name={push},push=true,registry.insecure=true,oci-mediatypes=true"
            ))
            .arg("--metadata-file")
            .arg(&metadata)
            .arg("--progress=plain");
        let out = cmd.output().map_err(|source| HarnessError::Spawn {
            program: "buildctl".into(),
            source,
        })?;
        if !out.status.success() {
            return Err(HarnessError::Other(format!(
                "buildctl build of {}: {}\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let text = std::fs::read_to_string(&metadata).map_err(HarnessError::io(&metadata))?;
        let meta: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| HarnessError::Json {
                what: "buildctl metadata".into(),
                source,
            })?;
        let digest = meta["containerimage.digest"]
            .as_str()
            .ok_or_else(|| HarnessError::Other(format!("no digest in {text}")))?
            .to_owned();
        let compressed_bytes = manifest_size(images, &self.name, &digest)?;
        let repository = images.pull_repository(&self.name);
        Ok(BuiltImage {
            name: self.name.clone(),
            tag: self.tag.clone(),
            reference: format!("{repository}:{}@{digest}", self.tag),
            repository,
            digest,
            compressed_bytes,
        })
    }
}

/// Copies a file, or a folder with everything in it.
fn copy_all(from: &Path, to: &Path) -> Result<(), HarnessError> {
    let meta = std::fs::metadata(from).map_err(HarnessError::io(from))?;
    if !meta.is_dir() {
        std::fs::copy(from, to).map_err(HarnessError::io(from))?;
        return Ok(());
    }
    std::fs::create_dir_all(to).map_err(HarnessError::io(to))?;
    for entry in std::fs::read_dir(from).map_err(HarnessError::io(from))? {
        let entry = entry.map_err(HarnessError::io(from))?;
        copy_all(&entry.path(), &to.join(entry.file_name()))?;
    }
    Ok(())
}

/// The config and layer bytes a manifest in the registry names.
fn manifest_size(images: &ImagesInfo, name: &str, digest: &str) -> Result<u64, HarnessError> {
    let manifest = registry_get_json(
        images,
        &format!("/v2/attach/{name}/manifests/{digest}"),
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    let size = |v: &serde_json::Value| v["size"].as_u64().unwrap_or(0);
    Ok(size(&manifest["config"])
        + manifest["layers"]
            .as_array()
            .map_or(0, |layers| layers.iter().map(size).sum()))
}

/// `GET <registry><path>` with `accept`, as JSON. Blocking, because the
/// image build runs in plain threads and scripts.
pub fn registry_get_json(
    images: &ImagesInfo,
    path: &str,
    accept: &str,
) -> Result<serde_json::Value, HarnessError> {
    let url = format!("http://{}{path}", images.registry);
    let out = Command::new("curl")
        .args(["-sf", "-H", &format!("Accept: {accept}"), &url])
        .output()
        .map_err(|source| HarnessError::Spawn {
            program: "curl".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Other(format!("GET {url}: {}", out.status)));
    }
    serde_json::from_slice(&out.stdout).map_err(|source| HarnessError::Json { what: url, source })
}

/// The project's three images (gateway, operator, mock model): builds the
/// static binaries, then each image; returns them in that order.
pub fn build_project_images(images: &ImagesInfo) -> Result<Vec<BuiltImage>, HarnessError> {
    let dir = build_static_binaries(&[
        ("attach-sidecar", "attach-gateway"),
        ("attach-operator", "attach-operator"),
        ("attach-tests", "attach-mock-model"),
        ("attach-tests", "attach-pod-client"),
    ])?;
    [
        ImageBuild::rust(GATEWAY, "sidecar/Dockerfile", &dir, &["attach-gateway"]),
        ImageBuild::rust(OPERATOR, "operator/Dockerfile", &dir, &["attach-operator"]),
        ImageBuild::rust(
            MOCK_MODEL,
            "tests/images/mock-model.Dockerfile",
            &dir,
            &["attach-mock-model", "attach-pod-client"],
        ),
    ]
    .iter()
    .map(|image| image.build_and_push(images))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_for_a_chart() {
        assert_eq!(
            split_reference("registry.attach.local/attach/attach-operator:0.1.0@sha256:ab"),
            (
                "registry.attach.local/attach/attach-operator".into(),
                "0.1.0@sha256:ab".into()
            )
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/a/b:1"),
            ("127.0.0.1:5000/a/b".into(), "1".into())
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/a/b"),
            ("127.0.0.1:5000/a/b".into(), "latest".into())
        );
    }
}
