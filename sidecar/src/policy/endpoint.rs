//! What an HTTP request asks the model server to do.
//!
//! Paths are normalised before they are classified, and the normalised path
//! is what the model receives, so the class the policy judged is the class
//! the model executes: `/api/../api/pull`, `//api/pull`, `/api/%70ull`,
//! `/api/pull/` and `/API/PULL` are all the admin endpoint `/api/pull`.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};

/// A class of endpoints that rules grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointClass {
    /// Chat, generate, completions, embeddings.
    Inference,
    /// Listing and describing models, versions.
    Read,
    /// Pulling, pushing, creating, deleting, copying models; LoRA (un)loading.
    Admin,
    /// Anything not in the tables below.
    Unknown,
}

impl EndpointClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inference => "inference",
            Self::Read => "read",
            Self::Admin => "admin",
            Self::Unknown => "unknown",
        }
    }
}

/// Why a path could not be normalised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path is not valid UTF-8 once decoded")]
    NotUtf8,
    #[error("the path holds a control character")]
    Control,
}

/// Characters re-encoded when the normalised path is forwarded.
const PATH_UNSAFE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Decodes percent-escapes once, resolves `.` and `..`, collapses repeated
/// slashes and drops a trailing slash. Case is kept (classification ignores
/// it); the result is re-encoded for forwarding.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| PathError::NotUtf8)?;
    if decoded.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    let mut segments: Vec<&str> = Vec::new();
    // A decoded backslash is a separator too, for servers that treat it so.
    for segment in decoded.split(['/', '\\']) {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(raw.len());
    for segment in &segments {
        out.push('/');
        out.extend(utf8_percent_encode(segment, PATH_UNSAFE));
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The class of `method` on a normalised `path`, for Ollama and
/// OpenAI-compatible servers (vLLM, Ollama's `/v1`).
pub fn classify(method: &http::Method, path: &str) -> EndpointClass {
    use http::Method;
    let lower = path.to_ascii_lowercase();
    let p = lower.as_str();
    let post = *method == Method::POST;
    let get = *method == Method::GET || *method == Method::HEAD;
    match p {
        "/api/chat" | "/api/generate" | "/api/embed" | "/api/embeddings" if post => {
            EndpointClass::Inference
        }
        "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/embeddings"
        | "/v1/responses"
        | "/v1/rerank"
        | "/v1/score"
        | "/rerank"
        | "/score"
        | "/pooling"
        | "/tokenize"
        | "/detokenize"
            if post =>
        {
            EndpointClass::Inference
        }
        "/api/tags" | "/api/version" | "/api/ps" | "/v1/models" | "/version" if get => {
            EndpointClass::Read
        }
        "/api/show" if post => EndpointClass::Read,
        "/api/pull"
        | "/api/push"
        | "/api/create"
        | "/api/copy"
        | "/api/delete"
        | "/v1/load_lora_adapter"
        | "/v1/unload_lora_adapter"
        | "/sleep"
        | "/wake_up"
        | "/reset_prefix_cache"
        | "/start_profile"
        | "/stop_profile" => EndpointClass::Admin,
        _ if p.starts_with("/api/blobs/") || p == "/api/blobs" => EndpointClass::Admin,
        _ if get && p.starts_with("/v1/models/") => EndpointClass::Read,
        _ => EndpointClass::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    fn class(method: Method, raw: &str) -> EndpointClass {
        classify(&method, &normalize_path(raw).unwrap())
    }

    #[test]
    fn disguised_admin_paths_are_still_admin() {
        for raw in [
            "/api/pull",
            "/api/../api/pull",
            "/api/./pull",
            "//api/pull",
            "/api//pull",
            "/api/pull/",
            "/api/pull//",
            "/API/PULL",
            "/Api/Pull",
            "/api/%70ull",
            "/api%2Fpull",
            "/%61%70%69/pull",
            "/api/chat/../pull",
            "/v1/../api/pull",
            "/api\\pull",
            "/api/%2e%2e/api/pull",
        ] {
            assert_eq!(class(Method::POST, raw), EndpointClass::Admin, "{raw}");
            assert_eq!(
                normalize_path(raw).unwrap().to_ascii_lowercase(),
                "/api/pull",
                "{raw}"
            );
        }
        for raw in [
            "/api/delete",
            "/API/DELETE/",
            "/api/blobs/sha256:abc",
            "/v1/load_lora_adapter",
        ] {
            assert_eq!(class(Method::DELETE, raw), EndpointClass::Admin, "{raw}");
        }
    }

    #[test]
    fn paths_that_climb_above_the_root_or_hide_controls_are_refused() {
        assert_eq!(normalize_path("/../api/pull"), Err(PathError::AboveRoot));
        assert_eq!(normalize_path("/api/../../x"), Err(PathError::AboveRoot));
        assert_eq!(normalize_path("/api/pull%00"), Err(PathError::Control));
        assert_eq!(normalize_path("/api/%ff"), Err(PathError::NotUtf8));
    }

    #[test]
    fn endpoints_fall_in_their_classes() {
        assert_eq!(class(Method::POST, "/api/chat"), EndpointClass::Inference);
        assert_eq!(
            class(Method::POST, "/api/generate"),
            EndpointClass::Inference
        );
        assert_eq!(class(Method::POST, "/api/embed"), EndpointClass::Inference);
        assert_eq!(
            class(Method::POST, "/v1/chat/completions"),
            EndpointClass::Inference
        );
        assert_eq!(
            class(Method::POST, "/v1/embeddings"),
            EndpointClass::Inference
        );
        assert_eq!(class(Method::GET, "/api/tags"), EndpointClass::Read);
        assert_eq!(class(Method::POST, "/api/show"), EndpointClass::Read);
        assert_eq!(class(Method::GET, "/v1/models"), EndpointClass::Read);
        assert_eq!(class(Method::GET, "/api/version"), EndpointClass::Read);
        assert_eq!(class(Method::GET, "/api/chat"), EndpointClass::Unknown);
        assert_eq!(class(Method::POST, "/api/tags"), EndpointClass::Unknown);
        assert_eq!(class(Method::GET, "/debug/pprof"), EndpointClass::Unknown);
    }

    #[test]
    fn the_forwarded_path_is_re_encoded() {
        assert_eq!(normalize_path("/a%20b/c").unwrap(), "/a%20b/c");
        assert_eq!(normalize_path("/a%3Fb").unwrap(), "/a%3Fb");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("").unwrap(), "/");
    }
}
