//! A Python runtime assembled from this machine's files, for the test
//! images whose server is a Python program (`FROM scratch`, nothing
//! pulled): the interpreter a venv was made with, its `libpython`, its
//! standard library (tests, GUI toolkits and installers left out), the
//! venv's packages as its site-packages, and every system library all of it
//! links, as `ldd` finds them. Images built on it set
//! `LD_LIBRARY_PATH=/usr/local/lib` and run `/usr/local/bin/python3`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::rootfs::{copy_linked_libraries, copy_tree, shared_objects};
use crate::HarnessError;

/// Where the image keeps Python: `bin/python3`, `lib/libpython*`,
/// `lib/python3.X` with the venv's packages in its `site-packages`.
const PREFIX: &str = "usr/local";

/// Parts of the standard library a model server never imports, left out
/// (relative to `lib/python3.X`): tests, GUI toolkits, installers, the
/// static library. `site-packages` is replaced by the venv's.
const STDLIB_LEFT_OUT: [&str; 9] = [
    "site-packages",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "unittest/test",
    "distutils/tests",
];

/// What of the venv only built it: installers, and the folders a CMake
/// build installs beside the packages (llama-cpp-python's `lib/`,
/// `include/`, `bin/`: copies of what its package loads from itself).
const VENV_LEFT_OUT: [&str; 7] = [
    "pip",
    "setuptools",
    "scikit_build_core",
    "_distutils_hack",
    "lib",
    "include",
    "bin",
];

/// What the venv's Python says about itself.
#[derive(Debug, Deserialize)]
struct PythonLayout {
    /// The interpreter itself (links resolved).
    exe: PathBuf,
    /// `sys.base_prefix`: the installation the venv was made from.
    base: PathBuf,
    /// `3.X`.
    version: String,
    /// The standard library, under `base`.
    stdlib: PathBuf,
    /// The venv's `site-packages`.
    purelib: PathBuf,
    /// The venv itself (`sys.prefix`).
    prefix: PathBuf,
}

const LAYOUT_SCRIPT: &str = r#"
import json, os, sys, sysconfig
print(json.dumps({
    "exe": os.path.realpath(sys.executable),
    "base": sys.base_prefix,
    "version": "%d.%d" % sys.version_info[:2],
    "stdlib": sysconfig.get_path("stdlib"),
    "purelib": sysconfig.get_path("purelib"),
    "prefix": sys.prefix,
}))
"#;

/// `dir/rootfs`, made afresh: the Python that `python` (a venv's
/// interpreter) runs on under `/usr/local`, the venv's packages as its
/// site-packages, the system libraries all of it links, an empty `/models`
/// and a `/tmp` anyone may write.
pub fn rootfs(python: &Path, dir: &Path) -> Result<PathBuf, HarnessError> {
    let layout = python_layout(python)?;
    let root = dir.join("rootfs");
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(HarnessError::io(&root))?;
    }
    let prefix = root.join(PREFIX);
    let lib = prefix.join("lib");
    for path in [
        prefix.join("bin"),
        lib.clone(),
        root.join("models"),
        root.join("tmp"),
    ] {
        std::fs::create_dir_all(&path).map_err(HarnessError::io(&path))?;
    }

    // The interpreter, and the libraries of its own installation
    // (libpython) in /usr/local/lib, where the image's LD_LIBRARY_PATH points.
    let python = format!("python{}", layout.version);
    let exe = prefix.join("bin").join(&python);
    std::fs::copy(&layout.exe, &exe).map_err(HarnessError::io(&layout.exe))?;
    std::os::unix::fs::symlink(&python, prefix.join("bin/python3"))
        .map_err(HarnessError::io(prefix.join("bin/python3")))?;
    for library in super::rootfs::linked_libraries(&layout.exe)? {
        if library.starts_with(&layout.base)
            && let Some(name) = library.file_name()
        {
            std::fs::copy(&library, lib.join(name)).map_err(HarnessError::io(&library))?;
        }
    }

    // The standard library, then the venv's packages as its site-packages.
    let stdlib = lib.join(&python);
    copy_tree(&layout.stdlib, &stdlib, &|p| {
        STDLIB_LEFT_OUT.iter().any(|s| p == Path::new(s))
            || p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("config-") || n.starts_with("_tkinter") || n.starts_with("_test")
            })
    })?;
    copy_tree(&layout.purelib, &stdlib.join("site-packages"), &|p| {
        p.components().next().is_some_and(|first| {
            let first = first.as_os_str().to_string_lossy();
            VENV_LEFT_OUT.iter().any(|s| {
                first == *s
                    || (first.starts_with(&format!("{s}-")) && first.ends_with(".dist-info"))
            }) || first == "distutils-precedence.pth"
        })
    })?;

    // Every library the interpreter and the extension modules link. Those
    // the image carries already (found through $ORIGIN, such as numpy's
    // bundled OpenBLAS and llama.cpp's ggml) are not copied again.
    let provided = [
        root.as_path(),
        layout.base.as_path(),
        layout.prefix.as_path(),
    ];
    let mut objects = shared_objects(&stdlib)?;
    objects.push(exe);
    for object in &objects {
        copy_linked_libraries(object, &root, &provided)?;
    }

    // Writable by the server's user, as /tmp is anywhere.
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .map_err(HarnessError::io(root.join("tmp")))?;
    Ok(root)
}

fn python_layout(python: &Path) -> Result<PythonLayout, HarnessError> {
    let out = std::process::Command::new(python)
        .args(["-c", LAYOUT_SCRIPT])
        .output()
        .map_err(|source| HarnessError::Spawn {
            program: python.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Other(format!(
            "{}: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| HarnessError::Other(format!("{}: its layout: {e}", python.display())))
}
