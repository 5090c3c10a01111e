//! The harness's error type.

use std::path::PathBuf;

/// Everything that can stop the test world from coming up.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A binary or download the harness needs is absent from the cache.
    #[error("{what} is missing at {path}: run `make tools` (tests/tools/build.sh) to build it")]
    Missing { what: String, path: PathBuf },

    /// A component did not become ready in time. `log` is the tail of its output.
    #[error("{component} was not ready after {seconds}s; last lines of {log_path}:\n{log}")]
    NotReady {
        component: String,
        seconds: u64,
        log_path: PathBuf,
        log: String,
    },

    /// A component exited while the harness still needed it.
    #[error("{component} exited early ({status}); last lines of {log_path}:\n{log}")]
    Exited {
        component: String,
        status: String,
        log_path: PathBuf,
        log: String,
    },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("certificate generation failed: {0}")]
    Pki(#[from] rcgen::Error),

    #[error("Kubernetes client error: {0}")]
    Kube(#[from] kube::Error),

    #[error("kubeconfig error: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),

    #[error("HTTP error talking to {what}: {source}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{what} answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },

    #[error("JSON error in {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{0}")]
    Other(String),
}

impl HarnessError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
