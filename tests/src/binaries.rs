//! The project's own binaries, built once per test process with the same
//! profile as the tests, so a test never runs a stale one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::HarnessError;

/// Builds `bin` of `package` (once per process) and returns its path.
pub fn build(package: &str, bin: &str) -> Result<PathBuf, HarnessError> {
    static BUILT: Mutex<Option<HashMap<String, Result<PathBuf, String>>>> = Mutex::new(None);
    let mut built = BUILT
        .lock()
        .map_err(|_| HarnessError::Other("build lock poisoned".into()))?;
    let cache = built.get_or_insert_with(HashMap::new);
    let result = cache
        .entry(bin.to_owned())
        .or_insert_with(|| cargo_build(package, bin))
        .clone();
    result.map_err(HarnessError::Other)
}

/// Features the tests build a package with: the gateway gets its test-only
/// quota clock (see `attach_sidecar::quota::clock`); release builds never
/// have it.
fn test_features(package: &str) -> &'static [&'static str] {
    match package {
        "attach-sidecar" => &["--features", "test-clock"],
        _ => &[],
    }
}

fn cargo_build(package: &str, bin: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .args(test_features(package))
        .current_dir(crate::source_tree::tests_dir())
        .status()
        .map_err(|e| format!("cargo build {bin}: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build {bin}: {status}"));
    }
    // This test binary is target/<profile>/deps/<name>; ours are in
    // target/<profile>/.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the target folder")?;
    let path = dir.join(bin);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} was not built", path.display()))
    }
}
