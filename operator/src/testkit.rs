//! Test support shared by the operator's unit tests.

use std::path::PathBuf;

/// This crate's folder in the clone under test: the run-time
/// `CARGO_MANIFEST_DIR` that cargo sets for the tests it runs, over the one
/// compiled in, which names the clone the binary was built in (a target
/// directory shared between clones can hand one clone another's build, and
/// its committed CRDs, goldens and examples would be the ones compared).
pub(crate) fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
