//! Root file systems assembled from this machine's files, for the model
//! images that carry a program built here (`FROM scratch`, nothing pulled):
//! the shared libraries a program links, as `ldd` finds them, and folders
//! copied whole.

use std::path::{Path, PathBuf};

use crate::HarnessError;

/// Copies every shared library `binary` links (the dynamic linker included)
/// into `root`, each at the path it has here, unless it lies under one of
/// `provided`: folders that the image carries anyway (a Python prefix, a
/// package's own bundled libraries), found there through the binary's
/// `$ORIGIN` run path. Returns how many it copied.
pub fn copy_linked_libraries(
    binary: &Path,
    root: &Path,
    provided: &[&Path],
) -> Result<usize, HarnessError> {
    let mut copied = 0;
    for library in linked_libraries(binary)? {
        if provided.iter().any(|dir| library.starts_with(dir)) {
            continue;
        }
        // The file itself, at the path the binary names (not a link).
        let to = root.join(library.strip_prefix("/").unwrap_or(&library));
        if to.exists() {
            continue;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(HarnessError::io(parent))?;
        }
        std::fs::copy(&library, &to).map_err(HarnessError::io(&library))?;
        copied += 1;
    }
    Ok(copied)
}

/// Copies the folder `from` to `to`, files and folders, leaving out every
/// entry whose path relative to `from` `skip` names. Links are copied as
/// the files they point to. Returns the bytes copied.
pub fn copy_tree(
    from: &Path,
    to: &Path,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<u64, HarnessError> {
    fn walk(
        base: &Path,
        dir: &Path,
        to: &Path,
        skip: &dyn Fn(&Path) -> bool,
        bytes: &mut u64,
    ) -> Result<(), HarnessError> {
        std::fs::create_dir_all(to).map_err(HarnessError::io(to))?;
        for entry in std::fs::read_dir(dir).map_err(HarnessError::io(dir))? {
            let entry = entry.map_err(HarnessError::io(dir))?;
            let path = entry.path();
            let relative = path.strip_prefix(base).unwrap_or(&path);
            if skip(relative) {
                continue;
            }
            let target = to.join(entry.file_name());
            // Follows links: a linked folder is copied as a folder.
            let meta = std::fs::metadata(&path).map_err(HarnessError::io(&path))?;
            if meta.is_dir() {
                walk(base, &path, &target, skip, bytes)?;
            } else {
                *bytes += std::fs::copy(&path, &target).map_err(HarnessError::io(&path))?;
            }
        }
        Ok(())
    }
    let mut bytes = 0;
    walk(from, from, to, skip, &mut bytes)?;
    Ok(bytes)
}

/// Every ELF shared object (`*.so`, `*.so.N`) under `dir`.
pub fn shared_objects(dir: &Path) -> Result<Vec<PathBuf>, HarnessError> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(HarnessError::io(&dir))? {
            let path = entry.map_err(HarnessError::io(&dir))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if is_shared_object_name(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_shared_object_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".so") || n.contains(".so."))
}

/// The shared libraries `binary` links, with the dynamic linker, as `ldd`
/// lists them (the kernel's vDSO left out).
pub fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>, HarnessError> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| HarnessError::Spawn {
            program: "ldd".into(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A shared object that links nothing: ldd says so and exits 1.
    if stdout.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(HarnessError::Other(format!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_ldd(&stdout)
        .map_err(|missing| HarnessError::Other(format!("{}: {missing}", binary.display())))
}

/// The absolute paths in `ldd` output: `name => /path (0x...)` and the
/// linker's own `/path (0x...)`. A library `ldd` did not find is an error:
/// the image would not start.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.ends_with("not found") {
            return Err(format!("a linked library is missing: {line}"));
        }
        let path = line
            .split_once("=>")
            .map_or(line, |(_, right)| right.trim());
        if let Some(path) = path.split_whitespace().next()
            && path.starts_with('/')
        {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_each_library_and_the_linker() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            Ok([
                "/lib/x86_64-linux-gnu/libstdc++.so.6",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
            .to_vec())
        );
        let missing = format!("{text}\tlibmissing.so => not found\n");
        assert!(parse_ldd(&missing).is_err_and(|e| e.contains("libmissing.so")));
    }

    #[test]
    fn a_tree_is_copied_without_what_is_skipped_and_its_libraries_found() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        for file in ["a/keep.py", "a/lib.so", "a/lib.so.1", "test/x.py", "b.py"] {
            let path = from.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, file).unwrap();
        }
        let to = dir.path().join("to");
        let bytes = copy_tree(&from, &to, &|p| p.starts_with("test")).unwrap();
        assert_eq!(
            bytes,
            ["a/keep.py", "a/lib.so", "a/lib.so.1", "b.py"]
                .map(str::len)
                .iter()
                .sum::<usize>() as u64
        );
        assert!(to.join("a/keep.py").is_file());
        assert!(!to.join("test").exists());
        assert_eq!(
            shared_objects(&to).unwrap(),
            [to.join("a/lib.so"), to.join("a/lib.so.1")]
        );
    }
}
