//! llama.cpp's OpenAI-compatible server (llama-cpp-python), serving the
//! tiny GGUF models from one process: the model field picks one.

use std::path::Path;
use std::time::Duration;

use super::{BIG_MODEL, Built, CHAT_MODEL, EMBED_MODEL, EngineInfo, parse_route_lines};
use crate::HarnessError;
use crate::process::{self, Supervised};
use crate::wait::until_addr_file_serves;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Starts the server under `dir` on a port the kernel picks
/// (`tests/tools/llamacpp/serve.py` binds it and writes it down).
pub(super) async fn start(
    built: &Built,
    dir: &Path,
) -> Result<(Supervised, EngineInfo), HarnessError> {
    std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
    let model = |name: &str, file: &str, embedding: bool| {
        serde_json::json!({
            "model": built.models.join(format!("{file}.gguf")),
            "model_alias": name,
            "n_ctx": 2048,
            "n_threads": 1,
            "embedding": embedding,
            "verbose": false,
        })
    };
    let config = serde_json::json!({
        // By default a new request cuts the stream being served (one at a
        // time): wait instead, as a server people rely on would.
        "interrupt_requests": false,
        "models": [
            model(CHAT_MODEL, CHAT_MODEL, false),
            model(BIG_MODEL, CHAT_MODEL, false),
            model(EMBED_MODEL, EMBED_MODEL, true),
        ],
    });
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).map_err(HarnessError::io(&config_path))?;
    let addr_file = dir.join("addr");
    let routes_file = dir.join("routes");
    let mut cmd = process::command(&built.llamacpp_python);
    cmd.arg(&built.llamacpp_server)
        .arg("--config")
        .arg(&config_path)
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--routes-file")
        .arg(&routes_file);
    let mut process = Supervised::spawn("llama.cpp", cmd, dir.join("llamacpp.log"))?;
    let url = until_addr_file_serves(
        &mut process,
        &addr_file,
        "/v1/models",
        READY_TIMEOUT,
        Duration::from_millis(100),
    )
    .await?;
    let routes = parse_route_lines(&std::fs::read_to_string(&routes_file).unwrap_or_default());
    let info = EngineInfo {
        url,
        models: [CHAT_MODEL, BIG_MODEL, EMBED_MODEL]
            .map(str::to_owned)
            .to_vec(),
        routes,
    };
    Ok((process, info))
}
