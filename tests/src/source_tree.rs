//! Where the clone under test is.
//!
//! A path compiled in with `env!("CARGO_MANIFEST_DIR")` names the clone the
//! binary was *built* in, and that need not be the clone being tested: the
//! target directory lives outside the clone and is shared between clones,
//! and cargo's freshness check ignores the workspace's absolute path, so a
//! clone whose files are older than another clone's build is handed that
//! build as it is. Its fixtures, chart and image sources would then be the
//! other clone's, silently. Cargo sets `CARGO_MANIFEST_DIR` for the test
//! binaries it runs, and the project's scripts set it for every binary they
//! run by hand, so the value at run time is the one to trust; the compiled-in
//! value is only the fallback for a binary started some other way.

use std::path::{Path, PathBuf};

/// The `tests/` folder of the clone under test.
pub fn tests_dir() -> PathBuf {
    tests_dir_from(std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from))
}

/// The root of the clone under test.
pub fn repo_root() -> PathBuf {
    let tests = tests_dir();
    tests
        .parent()
        .map_or_else(|| tests.join(".."), Path::to_owned)
}

fn tests_dir_from(at_run_time: Option<PathBuf>) -> PathBuf {
    at_run_time
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_named_at_run_time_wins_over_the_one_built_in() {
        assert_eq!(
            tests_dir_from(Some(PathBuf::from("/elsewhere/clone/tests"))),
            Path::new("/elsewhere/clone/tests")
        );
    }

    #[test]
    fn the_built_in_folder_is_the_fallback() {
        let built_in = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(tests_dir_from(None), built_in);
        assert_eq!(tests_dir_from(Some(PathBuf::new())), built_in);
    }
}
