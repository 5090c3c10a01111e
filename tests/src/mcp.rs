//! The MCP test parts (`tests/tools/mcp/build.sh`): a Streamable HTTP MCP
//! server made with the official MCP Python SDK (`MCPServer`), and drivers
//! of the official Python and TypeScript SDK clients, which print a JSON
//! report of what each step got.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::HarnessError;
use crate::process::{self, Supervised};
use crate::wait::until_addr_file_serves;

/// Where `build.sh` put the SDKs and the scripts.
#[derive(Debug, Clone)]
pub struct Built {
    pub python: PathBuf,
    pub server: PathBuf,
    pub client_py: PathBuf,
    pub node_modules: PathBuf,
    pub client_ts: PathBuf,
}

/// Runs `tests/tools/mcp/build.sh` once per process (a no-op when cached).
pub fn built() -> Result<Built, HarnessError> {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = "tools/mcp/build.sh";
            let paths = crate::tools::script_paths(script)?;
            let get = |key: &str| {
                paths
                    .get(key)
                    .cloned()
                    .ok_or_else(|| format!("{script} printed no {key}"))
            };
            Ok(Built {
                python: get("MCP_PYTHON")?,
                server: get("MCP_SERVER")?,
                client_py: get("MCP_CLIENT_PY")?,
                node_modules: get("MCP_NODE_MODULES")?,
                client_ts: get("MCP_CLIENT_TS")?,
            })
        })
        .clone()
        .map_err(HarnessError::Other)
}

/// A running MCP server (`tests/tools/mcp/server.py`). Stopped on drop.
#[derive(Debug)]
pub struct McpServer {
    process: Supervised,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`; the MCP endpoint is `/mcp`.
    pub url: String,
}

impl McpServer {
    /// Starts the server on a port the kernel picks; `json`: POSTs are
    /// answered with JSON rather than SSE.
    pub async fn start(json: bool) -> Result<Self, HarnessError> {
        let built = tokio::task::spawn_blocking(built)
            .await
            .map_err(|e| HarnessError::Other(format!("mcp build.sh: {e}")))??;
        let dir = tempfile::tempdir().map_err(HarnessError::io("tempdir"))?;
        let addr_file = dir.path().join("addr");
        let mut cmd = process::command(&built.python);
        cmd.arg(&built.server)
            .args(["--host", "127.0.0.1", "--port", "0", "--addr-file"])
            .arg(&addr_file);
        if json {
            cmd.arg("--json");
        }
        let mut process = Supervised::spawn("mcp-server", cmd, dir.path().join("server.log"))?;
        let url = until_addr_file_serves(
            &mut process,
            &addr_file,
            "/healthz",
            Duration::from_secs(30),
            Duration::from_millis(50),
        )
        .await?;
        Ok(Self {
            process,
            _dir: dir,
            url,
        })
    }
}

impl McpServer {
    /// The end of the server's log, for a failing test's message.
    pub fn log(&self) -> String {
        process::log_tail(self.process.log_path(), 60)
    }
}

/// An official SDK client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sdk {
    /// The Python SDK; `mode` is `auto` (its default: protocol 2026-07-28
    /// where the server speaks it) or `legacy` (the initialize handshake).
    Python { mode: &'static str },
    /// The TypeScript SDK (the initialize handshake).
    TypeScript,
}

/// Runs `sdk`'s driver against `url` with `token` through `steps` (see
/// `tests/tools/mcp/client.py`) and returns its report.
pub async fn drive(
    sdk: Sdk,
    url: &str,
    token: &str,
    steps: &[serde_json::Value],
) -> Result<serde_json::Value, HarnessError> {
    let built = tokio::task::spawn_blocking(built)
        .await
        .map_err(|e| HarnessError::Other(format!("mcp build.sh: {e}")))??;
    let dir = tempfile::tempdir().map_err(HarnessError::io("tempdir"))?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).map_err(HarnessError::io(&token_file))?;
    let mut cmd = match sdk {
        Sdk::Python { mode } => {
            let mut cmd = tokio::process::Command::new(&built.python);
            cmd.arg(&built.client_py).arg(url).arg("--mode").arg(mode);
            cmd
        }
        Sdk::TypeScript => {
            let mut cmd = tokio::process::Command::new("node");
            cmd.arg(&built.client_ts)
                .arg(url)
                .env("NODE_PATH", &built.node_modules);
            cmd
        }
    };
    cmd.arg("--token-file")
        .arg(&token_file)
        .args(steps.iter().map(serde_json::Value::to_string))
        .kill_on_drop(true);
    let program = program_name(sdk);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .map_err(|_| HarnessError::Other(format!("{program} did not finish in 120 s")))?
        .map_err(|source| HarnessError::Spawn {
            program: program.into(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    last.and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            HarnessError::Other(format!(
                "{program} printed no report (status {}): {stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        })
}

fn program_name(sdk: Sdk) -> &'static str {
    match sdk {
        Sdk::Python { .. } => "the MCP Python SDK client",
        Sdk::TypeScript => "the MCP TypeScript SDK client",
    }
}
