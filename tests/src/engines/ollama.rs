//! The real Ollama server, with the tiny models created in it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{BIG_MODEL, Built, CHAT_MODEL, EMBED_MODEL, EngineInfo, EngineRoute};
use crate::HarnessError;
use crate::process::{self, Supervised};
use crate::wait::until_ready;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `ollama serve` under `dir` on a port the kernel picks, with model
/// pulls sent to `proxy`, and creates the tiny models in it.
pub(super) async fn start(
    built: &Built,
    dir: &Path,
    proxy: &str,
) -> Result<(Supervised, EngineInfo), HarnessError> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(HarnessError::io(&bin))?;
    // Run through a link in the state folder, so that its command line names
    // the world (the janitor and the orphan check look for that). The model
    // runners it forks name their model, which lives there too.
    let ollama = bin.join("ollama");
    if !ollama.exists() {
        std::os::unix::fs::symlink(&built.ollama, &ollama).map_err(HarnessError::io(&ollama))?;
    }
    let mut cmd = process::command(&ollama);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir)
        .env("OLLAMA_HOST", "127.0.0.1:0")
        .env("OLLAMA_MODELS", dir.join("models"))
        .env("OLLAMA_KEEP_ALIVE", "1h")
        .env("OLLAMA_MAX_LOADED_MODELS", "2")
        .env("OLLAMA_CONTEXT_LENGTH", "2048")
        .env("HTTPS_PROXY", proxy)
        .env("HTTP_PROXY", proxy);
    let log_path = dir.join("ollama.log");
    let mut process = Supervised::spawn("ollama", cmd, &log_path)?;
    let http = reqwest::Client::new();
    let mut url = String::new();
    until_ready(
        &mut process,
        READY_TIMEOUT,
        Duration::from_millis(100),
        async || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let Some(addr) = listening_address(&log) else {
                return false;
            };
            url = format!("http://{addr}");
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await?;
    let routes = gin_routes(&std::fs::read_to_string(&log_path).unwrap_or_default());
    if routes.is_empty() {
        return Err(HarnessError::Other(format!(
            "ollama listed no routes in {}",
            log_path.display()
        )));
    }
    let models = [CHAT_MODEL, BIG_MODEL, EMBED_MODEL];
    for (model, from) in models.iter().zip([CHAT_MODEL, CHAT_MODEL, EMBED_MODEL]) {
        let modelfile = built.models.join(format!("Modelfile.{from}"));
        create(&ollama, &url, model, &modelfile, dir).await?;
    }
    let info = EngineInfo {
        url,
        models: models.map(str::to_owned).to_vec(),
        routes,
    };
    Ok((process, info))
}

/// `ollama create <model> -f <modelfile>` against the server at `url`.
pub(crate) async fn create(
    ollama: &Path,
    url: &str,
    model: &str,
    modelfile: &Path,
    dir: &Path,
) -> Result<(), HarnessError> {
    let mut cmd = Command::new(ollama);
    // Its `FROM ./<file>.gguf` is read from the folder of the models.
    if let Some(models) = modelfile.parent() {
        cmd.current_dir(models);
    }
    cmd.arg("create")
        .arg(model)
        .arg("-f")
        .arg(modelfile)
        .env("HOME", dir)
        .env("OLLAMA_HOST", url);
    let what = format!("ollama create {model}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| HarnessError::Other(format!("{what}: {e}")))?
        .map_err(|source| HarnessError::Spawn {
            program: what.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Other(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// The address in Ollama's `Listening on 127.0.0.1:PORT (version ...)`.
fn listening_address(log: &str) -> Option<&str> {
    log.lines().find_map(|line| {
        let rest = &line[line.find("Listening on ")? + "Listening on ".len()..];
        rest.split_whitespace().next()
    })
}

/// The routes gin printed as Ollama registered them:
/// `[GIN-debug] POST   /api/pull   --> github.com/...PullHandler (5 handlers)`.
fn gin_routes(log: &str) -> Vec<EngineRoute> {
    let mut routes: Vec<EngineRoute> = log
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("[GIN-debug] ")?;
            let (route, _) = rest.split_once("-->")?;
            let mut parts = route.split_whitespace();
            let method = parts.next()?;
            let path = parts.next()?;
            Some(EngineRoute {
                method: method.to_owned(),
                path: path.to_owned(),
            })
        })
        .collect();
    routes.sort();
    routes.dedup();
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_routes_and_the_address_ollama_logs() {
        let log = "[GIN-debug] [WARNING] Running in \"debug\" mode.\n\
            [GIN-debug] HEAD   /                         --> github.com/ollama/ollama/server.(*Server).GenerateRoutes.func1 (5 handlers)\n\
            [GIN-debug] POST   /api/blobs/:digest        --> github.com/ollama/ollama/server.(*Server).CreateBlobHandler-fm (5 handlers)\n\
            time=2026-12-01T21:40:00Z level=INFO source=routes.go:1718 msg=\"Listening on 127.0.0.1:41234 (version 0.17.4)\"\n";
        assert_eq!(listening_address(log), Some("127.0.0.1:41234"));
        assert_eq!(
            gin_routes(log),
            vec![
                EngineRoute {
                    method: "HEAD".into(),
                    path: "/".into()
                },
                EngineRoute {
                    method: "POST".into(),
                    path: "/api/blobs/:digest".into()
                },
            ]
        );
        assert_eq!(listening_address("msg=starting"), None);
    }
}
