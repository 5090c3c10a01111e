//! The tests' MCP server as an image (`tests/images/mcp-tools.Dockerfile`):
//! `tests/tools/mcp/server.py` (the official MCP Python SDK's `MCPServer`)
//! on the Python runtime of its venv (see [`super::python`]), listening
//! where `HOST` and `PORT` say.

use std::path::{Path, PathBuf};

use super::build::ImageBuild;
use crate::HarnessError;
use crate::source_tree::repo_root;

/// The image's name.
pub const MCP_TOOLS: &str = "attach-mcp-tools";

/// The image build: its root file system is prepared under `dir`.
pub async fn image_build(dir: &Path) -> Result<ImageBuild, HarnessError> {
    let built = tokio::task::spawn_blocking(crate::mcp::built)
        .await
        .map_err(|e| HarnessError::Other(format!("mcp build.sh: {e}")))??;
    let dir = dir.to_owned();
    let root = tokio::task::spawn_blocking(move || rootfs(&built, &dir))
        .await
        .map_err(|e| HarnessError::Other(format!("mcp-tools rootfs: {e}")))??;
    Ok(ImageBuild {
        name: MCP_TOOLS.to_owned(),
        tag: "test".to_owned(),
        dockerfile: repo_root().join("tests/images/mcp-tools.Dockerfile"),
        binaries: vec![(root, "rootfs".to_owned())],
        build_args: Vec::new(),
    })
}

/// `dir/rootfs`: the Python runtime with the MCP SDK, and `/app/server.py`.
fn rootfs(built: &crate::mcp::Built, dir: &Path) -> Result<PathBuf, HarnessError> {
    let root = super::python::rootfs(&built.python, dir)?;
    let app = root.join("app");
    std::fs::create_dir_all(&app).map_err(HarnessError::io(&app))?;
    std::fs::copy(&built.server, app.join("server.py")).map_err(HarnessError::io(&built.server))?;
    Ok(root)
}
