//! Machine-wide locks for what only one world per machine may run: the node
//! (its bridge, iptables chains and cgroups have fixed names) and the image
//! services (their data folders are shared through the cache).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::HarnessError;

/// Where the lock files live.
const LOCK_DIR: &str = "/run/lock";

/// An exclusive lock, held until dropped (or the process dies).
#[derive(Debug)]
pub struct MachineLock {
    _file: Flock<File>,
    pub path: PathBuf,
}

impl MachineLock {
    /// Takes the lock `attach-<name>.lock`, recording `owner` (a world's state
    /// folder) in it; fails at once, naming the holder, if another world has it.
    pub fn acquire(name: &str, owner: &Path) -> Result<Self, HarnessError> {
        let path = lock_path(name);
        let mut locked = match try_lock(&path)? {
            Ok(locked) => locked,
            Err(mut file) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(HarnessError::Other(format!(
                    "another world already runs the {name} on this machine (state folder {}); \
                     share it (ATTACH_WORLD=<its world.json>) or stop it first",
                    holder.trim()
                )));
            }
        };
        locked.set_len(0).map_err(HarnessError::io(&path))?;
        locked.rewind().map_err(HarnessError::io(&path))?;
        writeln!(locked, "{}", owner.display()).map_err(HarnessError::io(&path))?;
        Ok(Self {
            _file: locked,
            path,
        })
    }
}

/// The file of the machine-wide lock `name`: `attach-<name>.lock` in
/// `/run/lock` (or the temporary folder where there is none).
pub fn lock_path(name: &str) -> PathBuf {
    let dir = if Path::new(LOCK_DIR).is_dir() {
        PathBuf::from(LOCK_DIR)
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("attach-{name}.lock"))
}

/// Takes the exclusive lock on `path` without waiting: the held lock
/// (released when dropped or when the process dies), or the file when
/// another process holds it.
pub fn try_lock(path: &Path) -> Result<Result<Flock<File>, File>, HarnessError> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(HarnessError::io(path))?;
    Ok(Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(file, _)| file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name() {
        let name = format!("lock-test-{}", rand::random::<u32>());
        let first = MachineLock::acquire(&name, Path::new("/tmp/world-one")).unwrap();
        let err = MachineLock::acquire(&name, Path::new("/tmp/world-two")).unwrap_err();
        assert!(err.to_string().contains("/tmp/world-one"), "{err}");
        let path = first.path.clone();
        drop(first);
        let again = MachineLock::acquire(&name, Path::new("/tmp/world-two")).unwrap();
        drop(again);
        let _ = std::fs::remove_file(path);
    }
}
