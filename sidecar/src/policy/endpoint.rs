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

/// Where an endpoint's model is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// The endpoint names no model.
    None,
    /// The answer is a model list, trimmed to the models the caller may use.
    List,
    /// The JSON body's `model` (Ollama: any spelling Go's decoder matches;
    /// OpenAI engines: exactly `model`, and the declared default model when
    /// it is absent, null or empty).
    Body,
    /// Ollama's `/api/show`: `model`, else `name`.
    BodyOrName,
    /// The last path segment (`GET /v1/models/{model}`).
    PathSegment,
}

/// Which fields of the body change metering, and how they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyShape {
    /// No metering fields.
    Other,
    /// Ollama `/api/chat`, `/api/generate`: `stream` (default true),
    /// `options.num_predict`.
    OllamaGenerate,
    /// OpenAI chat completions: `stream`, `stream_options`, `max_tokens`,
    /// `max_completion_tokens`.
    OpenAiChat,
    /// OpenAI completions: `stream`, `stream_options`, `max_tokens`.
    OpenAiCompletion,
    /// OpenAI responses: `stream`, `max_output_tokens`.
    OpenAiResponses,
    /// Anthropic messages: `stream`, `max_tokens`.
    AnthropicMessages,
}

/// What a request asks the model server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub class: EndpointClass,
    pub model: ModelSource,
    pub shape: BodyShape,
    /// The path to forward: the table's spelling of a known endpoint (so
    /// `/API/Chat` reaches the model as the `/api/chat` it was judged as),
    /// the normalised path otherwise.
    pub path: String,
}

/// Methods a route answers: `GET` also covers `HEAD`.
#[derive(Debug, Clone, Copy)]
enum Methods {
    Any,
    Get,
    Post,
    GetPost,
}

impl Methods {
    fn allows(self, method: &http::Method) -> bool {
        use http::Method as M;
        let get = *method == M::GET || *method == M::HEAD;
        match self {
            Self::Any => true,
            Self::Get => get,
            Self::Post => *method == M::POST,
            Self::GetPost => get || *method == M::POST,
        }
    }
}

/// One row of an engine's endpoint table. In `path`, `{}` is one segment
/// and a trailing `/**` any number of them (at least one).
#[derive(Debug, Clone, Copy)]
struct Route {
    methods: Methods,
    path: &'static str,
    class: EndpointClass,
    model: ModelSource,
    shape: BodyShape,
}

const fn route(
    methods: Methods,
    path: &'static str,
    class: EndpointClass,
    model: ModelSource,
    shape: BodyShape,
) -> Route {
    Route {
        methods,
        path,
        class,
        model,
        shape,
    }
}

const fn read(methods: Methods, path: &'static str, model: ModelSource) -> Route {
    route(methods, path, EndpointClass::Read, model, BodyShape::Other)
}

const fn admin(path: &'static str) -> Route {
    route(
        Methods::Any,
        path,
        EndpointClass::Admin,
        ModelSource::None,
        BodyShape::Other,
    )
}

const fn infer(path: &'static str, shape: BodyShape) -> Route {
    route(
        Methods::Post,
        path,
        EndpointClass::Inference,
        ModelSource::Body,
        shape,
    )
}

use BodyShape as S;
use Methods as M;
use ModelSource as Src;

/// Ollama 0.17 (`server/routes.go`, `GenerateRoutes`). Every route it
/// registers is here.
const OLLAMA: &[Route] = &[
    read(M::Get, "/", Src::None),
    read(M::Get, "/api/version", Src::None),
    read(M::Get, "/api/status", Src::None),
    read(M::Get, "/api/tags", Src::List),
    read(M::Get, "/api/ps", Src::List),
    // Judged like inference: the body's model must be one the caller may use.
    route(
        M::Post,
        "/api/show",
        EndpointClass::Read,
        Src::BodyOrName,
        S::Other,
    ),
    infer("/api/chat", S::OllamaGenerate),
    infer("/api/generate", S::OllamaGenerate),
    infer("/api/embed", S::Other),
    infer("/api/embeddings", S::Other),
    infer("/v1/chat/completions", S::OpenAiChat),
    infer("/v1/completions", S::OpenAiCompletion),
    infer("/v1/embeddings", S::Other),
    infer("/v1/responses", S::OpenAiResponses),
    infer("/v1/images/generations", S::Other),
    infer("/v1/images/edits", S::Other),
    infer("/v1/messages", S::AnthropicMessages),
    read(M::Get, "/v1/models", Src::List),
    read(M::Get, "/v1/models/{}", Src::PathSegment),
    admin("/api/pull"),
    admin("/api/push"),
    admin("/api/create"),
    admin("/api/copy"),
    admin("/api/delete"),
    admin("/api/blobs/**"),
    // Aliases make one name run another model: only admins may see or
    // change them.
    admin("/api/experimental/aliases"),
    // The server's own ollama.com account.
    admin("/api/me"),
    admin("/api/signout"),
    admin("/api/user/keys/**"),
];

/// vLLM 0.3x's OpenAI-compatible server (`vllm/entrypoints`): every route
/// it can register. Inference routes read `model` from the body; absent,
/// null or empty means the served model.
const VLLM: &[Route] = &[
    read(M::Get, "/health", Src::None),
    read(M::GetPost, "/ping", Src::None),
    read(M::Get, "/version", Src::None),
    read(M::Get, "/load", Src::None),
    read(M::Get, "/is_sleeping", Src::None),
    read(M::Get, "/is_paused", Src::None),
    read(M::Get, "/v1/models", Src::List),
    infer("/v1/chat/completions", S::OpenAiChat),
    infer("/v1/chat/completions/batch", S::Other),
    infer("/v1/completions", S::OpenAiCompletion),
    infer("/v1/embeddings", S::Other),
    infer("/v1/responses", S::OpenAiResponses),
    infer("/v1/messages", S::AnthropicMessages),
    infer("/v1/messages/count_tokens", S::Other),
    // Structured decisions and generative scoring (0.32): the served model
    // answers, as for chat.
    infer("/v1/systemone", S::Other),
    infer("/generative_scoring", S::Other),
    infer("/v2/embed", S::Other),
    infer("/pooling", S::Other),
    infer("/classify", S::Other),
    infer("/score", S::Other),
    infer("/v1/score", S::Other),
    infer("/rerank", S::Other),
    infer("/v1/rerank", S::Other),
    infer("/v2/rerank", S::Other),
    infer("/tokenize", S::Other),
    infer("/detokenize", S::Other),
    // SageMaker: the body's type picks the task; its `model` picks the model.
    infer("/invocations", S::Other),
    infer("/cohere/v2/chat", S::Other),
    infer("/inference/v1/generate", S::Other),
    infer("/v1/chat/completions/render", S::Other),
    infer("/v1/completions/render", S::Other),
    infer("/v1/messages/render", S::Other),
    infer("/v1/responses/render", S::Other),
    infer("/v1/chat/completions/derender", S::Other),
    infer("/v1/completions/derender", S::Other),
    // Stored responses and cancellation act on other callers' requests.
    admin("/v1/responses/{}"),
    admin("/v1/responses/{}/cancel"),
    admin("/v1/load_lora_adapter"),
    admin("/v1/unload_lora_adapter"),
    admin("/start_profile"),
    admin("/stop_profile"),
    admin("/reset_prefix_cache"),
    admin("/reset_mm_cache"),
    admin("/reset_encoder_cache"),
    admin("/collective_rpc"),
    admin("/sleep"),
    admin("/wake_up"),
    admin("/release_kv_cache_memory"),
    admin("/pause"),
    admin("/resume"),
    admin("/abort_requests"),
    admin("/inference/v1/abort_requests"),
    admin("/init_weight_transfer_engine"),
    admin("/shutdown_weight_transfer_engine"),
    admin("/start_weight_update"),
    admin("/start_draft_weight_update"),
    admin("/update_weights"),
    admin("/finish_weight_update"),
    admin("/update_weight_version"),
    admin("/weight_checker"),
    admin("/scale_elastic_ep"),
    admin("/is_scaling_elastic_ep"),
    admin("/fault_tolerance/apply"),
    admin("/fault_tolerance/status"),
    // These describe the served model (its name, config, tokenizer).
    admin("/server_info"),
    admin("/tokenizer_info"),
    admin("/weight_info"),
    admin("/get_world_size"),
    admin("/kv_event_sources"),
    admin("/metrics"),
    admin("/docs"),
    admin("/openapi.json"),
];

/// Any other OpenAI-compatible server: the common OpenAI routes only.
const OPENAI: &[Route] = &[
    read(M::Get, "/health", Src::None),
    read(M::Get, "/v1/models", Src::List),
    infer("/v1/chat/completions", S::OpenAiChat),
    infer("/v1/completions", S::OpenAiCompletion),
    infer("/v1/embeddings", S::Other),
    infer("/v1/responses", S::OpenAiResponses),
    infer("/v1/messages", S::AnthropicMessages),
];

/// Whether a normalised path matches a route's pattern.
fn path_matches(pattern: &str, path: &str) -> bool {
    if !pattern.contains(['{', '*']) {
        // Most routes: one comparison, and most fail on the length.
        return pattern.len() == path.len() && pattern.eq_ignore_ascii_case(path);
    }
    let mut want = pattern.split('/').skip(1);
    let mut have = path.split('/').skip(1);
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            (Some("**"), Some(first)) => {
                return !first.is_empty() && have.all(|s| !s.is_empty());
            }
            (Some("{}"), Some(h)) if !h.is_empty() => {}
            (Some(w), Some(h)) if w != "{}" && w != "**" && w.eq_ignore_ascii_case(h) => {}
            _ => return false,
        }
    }
}

/// A matching path in the table's spelling: literal segments as the table
/// writes them, parameters as they came (a `**`, always the pattern's last
/// segment, and every segment after it included).
fn spelled(pattern: &str, path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut want = pattern.split('/').skip(1);
    for h in path.split('/').skip(1) {
        out.push('/');
        match want.next() {
            Some(w) if w != "{}" && w != "**" => out.push_str(w),
            _ => out.push_str(h),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The endpoint `method` on a normalised `path` is for `engine`. Paths in
/// no table are [`EndpointClass::Unknown`]; so are known paths with a method
/// their server does not route (admin paths excepted: any method is admin).
pub fn classify(engine: crate::canonical::Engine, method: &http::Method, path: &str) -> Endpoint {
    use crate::canonical::Engine;
    let table = match engine {
        Engine::Ollama => OLLAMA,
        Engine::Vllm => VLLM,
        Engine::Openai => OPENAI,
        // An MCP server's one endpoint is judged by its messages
        // (`crate::mcp`), not by this table.
        Engine::Mcp => &[],
    };
    for r in table {
        if path_matches(r.path, path) && r.methods.allows(method) {
            return Endpoint {
                class: r.class,
                model: r.model,
                shape: r.shape,
                path: spelled(r.path, path),
            };
        }
    }
    Endpoint {
        class: EndpointClass::Unknown,
        model: ModelSource::None,
        shape: BodyShape::Other,
        path: path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::canonical::Engine;

    /// The class an audit line names is spelled as rules write it.
    #[test]
    fn class_names_are_the_config_spelling() {
        for class in [
            EndpointClass::Inference,
            EndpointClass::Read,
            EndpointClass::Admin,
            EndpointClass::Unknown,
        ] {
            assert_eq!(
                serde_json::to_value(class).unwrap(),
                serde_json::Value::from(class.as_str())
            );
            let parsed: EndpointClass = serde_json::from_value(class.as_str().into()).unwrap();
            assert_eq!(parsed, class);
        }
    }

    fn endpoint(engine: Engine, method: Method, raw: &str) -> Endpoint {
        classify(engine, &method, &normalize_path(raw).unwrap())
    }

    fn class(method: Method, raw: &str) -> EndpointClass {
        endpoint(Engine::Ollama, method, raw).class
    }

    /// `{}` is one segment and `/**` one or more, never empty ones, even
    /// on a path that did not come through `normalize_path`.
    #[test]
    fn placeholders_match_only_non_empty_segments() {
        for (pattern, path, want) in [
            ("/v1/models/{}", "/v1/models/llama", true),
            ("/v1/models/{}", "/v1/models/", false),
            ("/v1/models/{}", "/v1/models/a/b", false),
            ("/api/user/keys/**", "/api/user/keys/a", true),
            ("/api/user/keys/**", "/api/user/keys/a/b", true),
            ("/api/user/keys/**", "/api/user/keys", false),
            ("/api/user/keys/**", "/api/user/keys/", false),
            ("/api/user/keys/**", "/api/user/keys//a", false),
            ("/api/user/keys/**", "/api/user/keys/a//b", false),
            ("/api/user/keys/**", "/api/user/keys/a/", false),
        ] {
            assert_eq!(path_matches(pattern, path), want, "{pattern} {path}");
        }
    }

    /// The forwarded path of a `/**` route: the table's literal segments,
    /// then the rest as it came; `**` ends every pattern that has it.
    #[test]
    fn a_trailing_double_star_keeps_the_rest_as_it_came() {
        let e = endpoint(Engine::Ollama, Method::DELETE, "/API/User/Keys/AbC/dEf");
        assert_eq!(e.class, EndpointClass::Admin);
        assert_eq!(e.path, "/api/user/keys/AbC/dEf");
        for table in [OLLAMA, VLLM, OPENAI] {
            for r in table {
                if let Some(i) = r.path.find("**") {
                    assert_eq!(i + 2, r.path.len(), "{}", r.path);
                }
            }
        }
    }

    /// vLLM's `/ping` answers GET, HEAD and POST (the SageMaker health
    /// check); other methods are no route of it.
    #[test]
    fn a_get_post_route_is_read_for_get_head_and_post_only() {
        for (method, want) in [
            (Method::GET, EndpointClass::Read),
            (Method::HEAD, EndpointClass::Read),
            (Method::POST, EndpointClass::Read),
            (Method::PUT, EndpointClass::Unknown),
            (Method::DELETE, EndpointClass::Unknown),
        ] {
            assert_eq!(
                endpoint(Engine::Vllm, method.clone(), "/ping").class,
                want,
                "{method}"
            );
        }
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
            // Forwarded in the table's spelling.
            assert_eq!(
                endpoint(Engine::Ollama, Method::POST, raw).path,
                "/api/pull"
            );
        }
        for raw in [
            "/api/delete",
            "/API/DELETE/",
            "/api/blobs/sha256:abc",
            "/api/experimental/aliases",
            "/api/user/keys/abc",
        ] {
            assert_eq!(class(Method::DELETE, raw), EndpointClass::Admin, "{raw}");
        }
        assert_eq!(
            endpoint(Engine::Vllm, Method::POST, "/v1/load_lora_adapter").class,
            EndpointClass::Admin
        );
    }

    #[test]
    fn paths_that_climb_above_the_root_or_hide_controls_are_refused() {
        assert_eq!(normalize_path("/../api/pull"), Err(PathError::AboveRoot));
        assert_eq!(normalize_path("/api/../../x"), Err(PathError::AboveRoot));
        assert_eq!(normalize_path("/api/pull%00"), Err(PathError::Control));
        assert_eq!(normalize_path("/api/%ff"), Err(PathError::NotUtf8));
    }

    #[test]
    fn ollama_endpoints_fall_in_their_classes_with_their_model_source() {
        use EndpointClass::*;
        use ModelSource as Src;
        let table = [
            (Method::POST, "/api/chat", Inference, Src::Body),
            (Method::POST, "/api/generate", Inference, Src::Body),
            (Method::POST, "/api/embed", Inference, Src::Body),
            (Method::POST, "/api/embeddings", Inference, Src::Body),
            (Method::POST, "/v1/chat/completions", Inference, Src::Body),
            (Method::POST, "/v1/completions", Inference, Src::Body),
            (Method::POST, "/v1/embeddings", Inference, Src::Body),
            (Method::POST, "/v1/responses", Inference, Src::Body),
            (Method::POST, "/v1/messages", Inference, Src::Body),
            (Method::POST, "/v1/images/generations", Inference, Src::Body),
            (Method::POST, "/api/show", Read, Src::BodyOrName),
            (Method::GET, "/api/tags", Read, Src::List),
            (Method::HEAD, "/api/tags", Read, Src::List),
            (Method::GET, "/api/ps", Read, Src::List),
            (Method::GET, "/v1/models", Read, Src::List),
            (Method::GET, "/v1/models/tinyllama", Read, Src::PathSegment),
            (Method::GET, "/api/version", Read, Src::None),
            (Method::GET, "/", Read, Src::None),
            (Method::GET, "/api/experimental/aliases", Admin, Src::None),
            (Method::POST, "/api/me", Admin, Src::None),
            (Method::POST, "/api/signout", Admin, Src::None),
            (Method::GET, "/api/chat", Unknown, Src::None),
            (Method::POST, "/api/tags", Unknown, Src::None),
            (Method::GET, "/debug/pprof", Unknown, Src::None),
            (Method::POST, "/api/experimental/other", Unknown, Src::None),
            (Method::GET, "/v1/models/a/b", Unknown, Src::None),
            // vLLM's routes are not Ollama's.
            (Method::POST, "/tokenize", Unknown, Src::None),
            (Method::POST, "/invocations", Unknown, Src::None),
        ];
        for (method, path, class, model) in table {
            let e = endpoint(Engine::Ollama, method.clone(), path);
            assert_eq!((e.class, e.model), (class, model), "{method} {path}");
        }
    }

    #[test]
    fn vllm_endpoints_fall_in_their_classes() {
        use EndpointClass::*;
        let table = [
            (Method::POST, "/v1/chat/completions", Inference),
            (Method::POST, "/v1/messages", Inference),
            (Method::POST, "/invocations", Inference),
            (Method::POST, "/tokenize", Inference),
            (Method::POST, "/v2/rerank", Inference),
            (Method::POST, "/pause", Admin),
            (Method::POST, "/update_weights", Admin),
            (Method::GET, "/server_info", Admin),
            (Method::GET, "/metrics", Admin),
            (Method::GET, "/v1/responses/resp_1", Admin),
            (Method::GET, "/v1/models", Read),
            (Method::GET, "/health", Read),
            // No such route in vLLM: not a way to probe for a model.
            (Method::GET, "/v1/models/tiny", Unknown),
            (Method::POST, "/v1/audio/transcriptions", Unknown),
            (Method::POST, "/api/chat", Unknown),
        ];
        for (method, path, class) in table {
            assert_eq!(
                endpoint(Engine::Vllm, method.clone(), path).class,
                class,
                "{method} {path}"
            );
        }
        assert_eq!(
            endpoint(Engine::Openai, Method::POST, "/pause").class,
            Unknown
        );
    }

    #[test]
    fn the_forwarded_path_is_re_encoded() {
        assert_eq!(normalize_path("/a%20b/c").unwrap(), "/a%20b/c");
        assert_eq!(normalize_path("/a%3Fb").unwrap(), "/a%3Fb");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("").unwrap(), "/");
        assert_eq!(
            endpoint(Engine::Ollama, Method::GET, "/V1/Models/TinyLlama").path,
            "/v1/models/TinyLlama"
        );
    }
}
