//! The real engines the conformance tests put behind the gateway: Ollama
//! (built from its Go module with cgo), llama.cpp's OpenAI-compatible server
//! (llama-cpp-python) and vLLM on CPU, serving tiny random-weight models made
//! on this machine (`tests/tools/models`). `tests/tools/engines.sh` builds
//! them into `$ATTACH_CACHE`; the harness starts them as the `engines`
//! component of the world.
//!
//! Each engine lists the routes it registered when it started
//! ([`EngineInfo::routes`]), read from the running server itself (Ollama's
//! router log, the Python apps' route tables), so that a test can fail on a
//! route nobody has classed.

pub mod clients;
mod llamacpp;
pub(crate) mod ollama;
mod refusing_proxy;
mod vllm;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::HarnessError;
use crate::process::Supervised;

pub use refusing_proxy::RefusingProxy;

/// One route a running engine registered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EngineRoute {
    /// `GET`, `POST`, ... (`*` for a mounted app that takes any method).
    pub method: String,
    /// As the server writes it, parameters included (`/api/blobs/:digest`,
    /// `/v1/responses/{response_id}`).
    pub path: String,
}

/// How to reach one running engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineInfo {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The names it serves, as clients write them.
    pub models: Vec<String>,
    /// Every route it registered at start.
    pub routes: Vec<EngineRoute>,
}

/// How to reach every engine of the world.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnginesInfo {
    /// Serves [`CHAT_MODEL`], [`BIG_MODEL`] and [`EMBED_MODEL`].
    pub ollama: EngineInfo,
    /// Serves [`CHAT_MODEL`], [`BIG_MODEL`] and [`EMBED_MODEL`].
    pub llamacpp: EngineInfo,
    /// Serves [`CHAT_MODEL`] (its default) and [`BIG_MODEL`] (generation).
    pub vllm: EngineInfo,
    /// Serves [`EMBED_MODEL`] (a second instance, in pooling mode).
    pub vllm_embed: EngineInfo,
}

/// The tiny chat model's name on every engine.
pub const CHAT_MODEL: &str = "tiny";
/// The tiny embedding model's name on every engine.
pub const EMBED_MODEL: &str = "tiny-embed";
/// The chat model again under another name, standing for the big model a
/// caller allowed only [`CHAT_MODEL`] must not reach (on vLLM, a second
/// served name of the one model).
pub const BIG_MODEL: &str = "big";

/// Where `tests/tools/engines.sh` put the engines, the models and the
/// client SDKs.
#[derive(Debug, Clone)]
pub struct Built {
    pub ollama: PathBuf,
    pub models: PathBuf,
    pub llamacpp_python: PathBuf,
    pub llamacpp_server: PathBuf,
    pub vllm_python: PathBuf,
    pub vllm_server: PathBuf,
    pub clients_python: PathBuf,
    pub clients_driver: PathBuf,
}

/// Runs `tests/tools/engines.sh` once per process (a no-op when everything
/// is cached) and reads what it printed.
pub fn built() -> Result<Built, HarnessError> {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = "tools/engines.sh";
            let paths = crate::tools::script_paths(script)?;
            let get = |key: &str| {
                paths
                    .get(key)
                    .cloned()
                    .ok_or_else(|| format!("{script} printed no {key}"))
            };
            Ok(Built {
                ollama: get("OLLAMA")?,
                models: get("MODELS")?,
                llamacpp_python: get("LLAMACPP_PYTHON")?,
                llamacpp_server: get("LLAMACPP_SERVER")?,
                vllm_python: get("VLLM_PYTHON")?,
                vllm_server: get("VLLM_SERVER")?,
                clients_python: get("CLIENTS_PYTHON")?,
                clients_driver: get("CLIENTS_DRIVER")?,
            })
        })
        .clone()
        .map_err(HarnessError::Other)
}

/// The running engines. Dropping them stops them.
#[derive(Debug)]
pub struct Engines {
    processes: Vec<Supervised>,
    _proxy: RefusingProxy,
    pub info: EnginesInfo,
}

impl Engines {
    /// Starts every engine under `dir`, all at once (vLLM's start, about 20 s
    /// each, is the slow part).
    pub async fn start(dir: &Path) -> Result<Self, HarnessError> {
        let built = tokio::task::spawn_blocking(built)
            .await
            .map_err(|e| HarnessError::Other(format!("engines.sh: {e}")))??;
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        // Pulls go to a proxy that closes every connection: nothing leaves
        // the machine, and a pull fails at once.
        let proxy = RefusingProxy::start()?;
        let proxy_url = proxy.url();
        let dirs = ["ollama", "llamacpp", "vllm", "vllm-embed"].map(|d| dir.join(d));
        let (ollama, llamacpp, vllm, vllm_embed) = tokio::join!(
            ollama::start(&built, &dirs[0], &proxy_url),
            llamacpp::start(&built, &dirs[1]),
            vllm::start(&built, &dirs[2], vllm::Runner::Generate),
            vllm::start(&built, &dirs[3], vllm::Runner::Embed),
        );
        let (ollama, llamacpp, vllm, vllm_embed) = (ollama?, llamacpp?, vllm?, vllm_embed?);
        Ok(Self {
            info: EnginesInfo {
                ollama: ollama.1,
                llamacpp: llamacpp.1,
                vllm: vllm.1,
                vllm_embed: vllm_embed.1,
            },
            processes: vec![ollama.0, llamacpp.0, vllm.0, vllm_embed.0],
            _proxy: proxy,
        })
    }

    /// `component -> pid` of every engine process.
    pub fn pids(&self) -> impl Iterator<Item = (String, u32)> + '_ {
        self.processes
            .iter()
            .filter_map(|p| Some((p.name().to_owned(), p.pid()?)))
    }

    /// Stops every engine.
    pub fn stop(&mut self) {
        for process in &mut self.processes {
            process.stop(crate::process::DEFAULT_GRACE);
        }
    }
}

/// Parses `METHODS PATH` lines (methods comma-separated) into routes, one
/// per method.
pub(crate) fn parse_route_lines(text: &str) -> Vec<EngineRoute> {
    let mut routes: Vec<EngineRoute> = text
        .lines()
        .filter_map(|line| line.trim().split_once(' '))
        .flat_map(|(methods, path)| {
            methods.split(',').map(move |m| EngineRoute {
                method: m.to_owned(),
                path: path.trim().to_owned(),
            })
        })
        .collect();
    routes.sort();
    routes.dedup();
    routes
}
