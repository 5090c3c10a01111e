//! The real Ollama as a model image (`tests/images/ollama.Dockerfile`): the
//! binary `tests/tools/engines.sh` built from Ollama's Go module, the C and
//! C++ runtime libraries it links (copied from this machine, as `ldd` names
//! them), and a model store made by that same binary: `ollama create` of
//! the tiny models, under the names the examples use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::build::ImageBuild;
use super::rootfs::copy_linked_libraries;
use crate::HarnessError;
use crate::engines::{CHAT_MODEL, EMBED_MODEL, RefusingProxy};
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::source_tree::repo_root;
use crate::wait::until_http_ok;

/// The image's name.
pub const OLLAMA: &str = "attach-ollama";

/// The models in the image's store: `(name, the tiny model it is)`. The
/// big one is the small one again, under the name a caller allowed only
/// small models must not reach.
pub const MODELS: [(&str, &str); 3] = [
    ("llama3.2:1b", CHAT_MODEL),
    ("llama3.1:70b", CHAT_MODEL),
    ("nomic-embed-text", EMBED_MODEL),
];

/// How long `ollama serve` gets to answer while the store is made.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The image build: its root file system is prepared under `dir`.
pub async fn image_build(dir: &Path) -> Result<ImageBuild, HarnessError> {
    let built = tokio::task::spawn_blocking(crate::engines::built)
        .await
        .map_err(|e| HarnessError::Other(format!("engines.sh: {e}")))??;
    let root = rootfs(&built, dir).await?;
    let version = crate::tools::Versions::pinned()?.ollama;
    Ok(ImageBuild {
        name: OLLAMA.to_owned(),
        tag: version.trim_start_matches('v').to_owned(),
        dockerfile: repo_root().join("tests/images/ollama.Dockerfile"),
        binaries: vec![(root, "rootfs".to_owned())],
        build_args: vec![("OLLAMA_VERSION".to_owned(), version)],
    })
}

/// `dir/rootfs`: `/bin/ollama`, its libraries where the dynamic linker
/// looks for them, the store in `/models`, and an empty `/home/ollama` and
/// `/tmp`.
async fn rootfs(built: &crate::engines::Built, dir: &Path) -> Result<PathBuf, HarnessError> {
    let root = dir.join("rootfs");
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(HarnessError::io(&root))?;
    }
    for sub in ["bin", "models", "home/ollama", "tmp"] {
        let path = root.join(sub);
        std::fs::create_dir_all(&path).map_err(HarnessError::io(&path))?;
    }
    let binary = root.join("bin/ollama");
    std::fs::copy(&built.ollama, &binary).map_err(HarnessError::io(&built.ollama))?;
    copy_linked_libraries(&built.ollama, &root, &[])?;
    make_store(built, &root.join("models"), dir).await?;
    Ok(root)
}

/// Runs `ollama serve` on the store `models` and creates [`MODELS`] in it.
async fn make_store(
    built: &crate::engines::Built,
    models: &Path,
    dir: &Path,
) -> Result<(), HarnessError> {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).map_err(HarnessError::io(&home))?;
    // Nothing is pulled: a pull would go to a proxy that closes at once.
    let proxy = RefusingProxy::start()?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = process::command(&built.ollama);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &home)
        .env("OLLAMA_HOST", &addr)
        .env("OLLAMA_MODELS", models)
        .env("HTTPS_PROXY", proxy.url())
        .env("HTTP_PROXY", proxy.url());
    let mut server = Supervised::spawn("ollama-store", cmd, dir.join("ollama-store.log"))?;
    let url = format!("http://{addr}");
    until_http_ok(&mut server, &url, READY_TIMEOUT, Duration::from_millis(100)).await?;
    for (name, from) in MODELS {
        let modelfile = built.models.join(format!("Modelfile.{from}"));
        crate::engines::ollama::create(&built.ollama, &url, name, &modelfile, &home).await?;
    }
    server.stop(process::DEFAULT_GRACE);
    Ok(())
}
