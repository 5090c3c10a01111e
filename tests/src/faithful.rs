//! Test upstreams that read requests with the engines' own parsers, so a
//! test can put the gateway in front of them and compare what the gateway
//! judged with what the engine would have run:
//!
//! - **ollama-faithful** (`tests/tools/ollama-faithful`, Go): Ollama 0.17's
//!   routes, request types, OpenAI/Anthropic middleware, `encoding/json` via
//!   gin, and its model name parser;
//! - **vllm-faithful** (`tests/tools/vllm-faithful`, Python): vLLM 0.32's
//!   FastAPI routes with `json.loads` and pydantic lax models, and its
//!   default-model rule.
//!
//! Both answer with a verdict in `X-Verdict-*` headers (see [`Verdict`]).
//! `tests/tools/test-upstreams.sh` builds them into `$ATTACH_CACHE` (once
//! per version and source); the harness runs it on first use.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;

use crate::HarnessError;
use crate::process::{self, Supervised};
use crate::wait::until_addr_file_serves;

/// Where `test-upstreams.sh` put the upstreams.
#[derive(Debug, Clone)]
struct Built {
    ollama: PathBuf,
    python: PathBuf,
    server: PathBuf,
}

fn built() -> Result<Built, HarnessError> {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = "tools/test-upstreams.sh";
            let paths = crate::tools::script_paths(script)?;
            let get = |key: &str| {
                paths
                    .get(key)
                    .cloned()
                    .ok_or_else(|| format!("{script} printed no {key}"))
            };
            Ok(Built {
                ollama: get("OLLAMA_FAITHFUL")?,
                python: get("VLLM_FAITHFUL_PYTHON")?,
                server: get("VLLM_FAITHFUL_SERVER")?,
            })
        })
        .clone()
        .map_err(HarnessError::Other)
}

/// A running faithful upstream. Stopped on drop.
#[derive(Debug)]
pub struct FaithfulUpstream {
    process: Supervised,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl FaithfulUpstream {
    /// Ollama's parsers, with `models` installed (any spelling Ollama
    /// accepts).
    pub async fn ollama(models: &[&str]) -> Result<Self, HarnessError> {
        let built = built()?;
        let dir = new_dir()?;
        let mut cmd = process::command(&built.ollama);
        cmd.arg("-addr-file")
            .arg(dir.path().join("addr"))
            .arg("-models")
            .arg(models.join(","));
        Self::start("ollama-faithful", cmd, dir, "/api/version").await
    }

    /// vLLM's parsers, serving `models[0]` (the default) and `models[1..]`
    /// as LoRA adapters.
    pub async fn vllm(models: &[&str]) -> Result<Self, HarnessError> {
        let built = built()?;
        let dir = new_dir()?;
        let mut cmd = process::command(&built.python);
        cmd.arg(&built.server)
            .arg("--addr-file")
            .arg(dir.path().join("addr"))
            .arg("--models")
            .arg(models.join(","));
        Self::start("vllm-faithful", cmd, dir, "/health").await
    }

    async fn start(
        name: &str,
        cmd: Command,
        dir: tempfile::TempDir,
        ready_path: &str,
    ) -> Result<Self, HarnessError> {
        let mut process = Supervised::spawn(name, cmd, dir.path().join("upstream.log"))?;
        let url = until_addr_file_serves(
            &mut process,
            &dir.path().join("addr"),
            ready_path,
            Duration::from_secs(60),
            Duration::from_millis(50),
        )
        .await?;
        Ok(Self {
            process,
            _dir: dir,
            url,
        })
    }

    /// The upstream's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }
}

fn new_dir() -> Result<tempfile::TempDir, HarnessError> {
    tempfile::Builder::new()
        .prefix("attach-faithful-")
        .tempdir()
        .map_err(HarnessError::io("tempdir"))
}

/// What a faithful upstream made of a request, from its `X-Verdict-*`
/// response headers. `route` is `None` when the request never reached it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The route that handled it.
    pub route: Option<String>,
    /// The model it resolved (empty when none).
    pub model: String,
    /// Ollama: the name its parser made of the request's model, installed
    /// or not (`invalid` when it refused it).
    pub parsed: Option<String>,
    /// vLLM: the request's `model` as pydantic read it, when it named one
    /// that is not served.
    pub requested: Option<String>,
    /// `stream` as the engine read it.
    pub stream: Option<String>,
    /// Ollama: `options.num_predict` as the handler read it.
    pub num_predict: Option<String>,
    /// vLLM: the output bound as vLLM reads it.
    pub max_tokens: Option<String>,
    /// The request headers the upstream received, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// vLLM-faithful: identity and forwarding headers as a WSGI server
    /// names them (`HTTP_X_ATTACH_USER`).
    pub wsgi: Vec<(String, String)>,
}

impl Verdict {
    /// Reads the verdict from an answer's headers.
    pub fn of(headers: &HeaderMap) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let decoded = |name: &str| -> Option<serde_json::Value> {
            let raw = STANDARD.decode(text(name)?).ok()?;
            serde_json::from_slice(&raw).ok()
        };
        let mut received = Vec::new();
        match decoded("x-verdict-headers") {
            // Go: {"Name": ["v", ...]}
            Some(serde_json::Value::Object(map)) => {
                for (name, values) in map {
                    for v in values.as_array().into_iter().flatten() {
                        received.push((
                            name.to_ascii_lowercase(),
                            v.as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                }
            }
            // Python: [["name", "v"], ...]
            Some(serde_json::Value::Array(pairs)) => {
                for pair in pairs {
                    if let [k, v] = pair.as_array().map(Vec::as_slice).unwrap_or_default() {
                        received.push((
                            k.as_str().unwrap_or_default().to_ascii_lowercase(),
                            v.as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                }
            }
            _ => {}
        }
        let wsgi = match decoded("x-verdict-wsgi") {
            Some(serde_json::Value::Object(map)) => map
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            route: text("x-verdict-route"),
            model: text("x-verdict-model").unwrap_or_default(),
            parsed: text("x-verdict-parsed"),
            requested: text("x-verdict-requested"),
            stream: text("x-verdict-stream"),
            num_predict: text("x-verdict-num-predict").filter(|s| !s.is_empty()),
            max_tokens: text("x-verdict-max-tokens").filter(|s| !s.is_empty()),
            headers: received,
            wsgi,
        }
    }

    /// The values of a received header (by lower-case name).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}
