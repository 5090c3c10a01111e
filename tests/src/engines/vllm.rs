//! vLLM's OpenAI-compatible server on CPU, serving the tiny Hugging Face
//! model: one instance generates, a second one (pooling) embeds.

use std::path::Path;
use std::time::Duration;

use super::{BIG_MODEL, Built, CHAT_MODEL, EMBED_MODEL, EngineInfo, parse_route_lines};
use crate::HarnessError;
use crate::process::{self, Supervised};
use crate::wait::until_addr_file_serves;

/// vLLM imports torch and profiles the model before it serves: about 20 s
/// alone, more when the world's other components start beside it.
const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// What an instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Runner {
    /// Chat, completions, responses, messages.
    Generate,
    /// Embeddings (`--runner pooling --convert embed`).
    Embed,
}

/// Starts one vLLM instance under `dir` on a port the kernel picks
/// (`tests/tools/vllm/serve.py` binds it and writes it down).
pub(super) async fn start(
    built: &Built,
    dir: &Path,
    runner: Runner,
) -> Result<(Supervised, EngineInfo), HarnessError> {
    std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
    // The first served name is the default (a request naming no model).
    let names: &[&str] = match runner {
        Runner::Generate => &[CHAT_MODEL, BIG_MODEL],
        Runner::Embed => &[EMBED_MODEL],
    };
    let addr_file = dir.join("addr");
    let routes_file = dir.join("routes");
    let mut cmd = process::command(&built.vllm_python);
    cmd.arg(&built.vllm_server)
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--routes-file")
        .arg(&routes_file)
        .arg("--")
        .arg("--model")
        .arg(built.models.join("hf"))
        .arg("--served-model-name")
        .args(names)
        // The CPU platform is detected (`--device` is refused). Eager mode,
        // one process and a small KV cache: a start in about 30 s, about
        // 2 GB of memory, instead of 90 % of the machine's.
        .args(["--enforce-eager", "--distributed-executor-backend", "uni"])
        .args(["--kv-cache-memory-bytes", "64M"])
        .env("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        .env("HF_HUB_OFFLINE", "1")
        .env("VLLM_NO_USAGE_STATS", "1")
        .env("DO_NOT_TRACK", "1")
        .env("HOME", dir);
    if runner == Runner::Embed {
        cmd.args(["--runner", "pooling", "--convert", "embed"]);
    }
    let component = match runner {
        Runner::Generate => "vllm",
        Runner::Embed => "vllm-embed",
    };
    let mut process = Supervised::spawn(component, cmd, dir.join("vllm.log"))?;
    let url = until_addr_file_serves(
        &mut process,
        &addr_file,
        "/health",
        READY_TIMEOUT,
        Duration::from_millis(250),
    )
    .await?;
    let routes = parse_route_lines(&std::fs::read_to_string(&routes_file).unwrap_or_default());
    let info = EngineInfo {
        url,
        models: names.iter().map(|n| (*n).to_owned()).collect(),
        routes,
    };
    Ok((process, info))
}
