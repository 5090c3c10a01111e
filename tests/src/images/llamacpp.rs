//! llama.cpp's OpenAI-compatible server as a model image
//! (`tests/images/llamacpp.Dockerfile`): the llama-cpp-python venv that
//! `tests/tools/engines.sh` built (llama.cpp compiled here with cmake), the
//! Python it was made with (interpreter, `libpython`, standard library), the
//! system libraries all of it links as `ldd` finds them, and the tiny GGUF
//! models under the file names `examples/llamacpp-team` serves.

use std::path::{Path, PathBuf};

use super::build::ImageBuild;
use crate::HarnessError;
use crate::engines::{Built, CHAT_MODEL, EMBED_MODEL};
use crate::source_tree::repo_root;

/// The image's name.
pub const LLAMACPP: &str = "attach-llamacpp";

/// The model files in the image's `/models`: `(file, the tiny model it is)`.
/// The names are those the example's server config (its ConfigMap) loads;
/// the large one is the small one again, under a name a caller allowed only
/// small models must not reach.
pub const MODEL_FILES: [(&str, &str); 3] = [
    ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", CHAT_MODEL),
    ("Llama-3.1-70B-Instruct-Q4_K_M.gguf", CHAT_MODEL),
    ("nomic-embed-text-v1.5.Q8_0.gguf", EMBED_MODEL),
];

/// The image build: its root file system is prepared under `dir`.
pub async fn image_build(dir: &Path) -> Result<ImageBuild, HarnessError> {
    let built = tokio::task::spawn_blocking(crate::engines::built)
        .await
        .map_err(|e| HarnessError::Other(format!("engines.sh: {e}")))??;
    let dir = dir.to_owned();
    let root = tokio::task::spawn_blocking(move || rootfs(&built, &dir))
        .await
        .map_err(|e| HarnessError::Other(format!("llama.cpp rootfs: {e}")))??;
    let version = crate::tools::Versions::pinned()?.llama_cpp_python;
    Ok(ImageBuild {
        name: LLAMACPP.to_owned(),
        tag: version.clone(),
        dockerfile: repo_root().join("tests/images/llamacpp.Dockerfile"),
        binaries: vec![(root, "rootfs".to_owned())],
        build_args: vec![("LLAMA_CPP_PYTHON_VERSION".to_owned(), version)],
    })
}

/// `dir/rootfs`: Python under `/usr/local` with the venv's packages (see
/// [`super::python`]), the models in `/models`, an empty `/tmp`.
fn rootfs(built: &Built, dir: &Path) -> Result<PathBuf, HarnessError> {
    let root = super::python::rootfs(&built.llamacpp_python, dir)?;
    for (file, model) in MODEL_FILES {
        let from = built.models.join(format!("{model}.gguf"));
        std::fs::copy(&from, root.join("models").join(file)).map_err(HarnessError::io(&from))?;
    }
    Ok(root)
}
