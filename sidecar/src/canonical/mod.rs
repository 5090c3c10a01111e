//! One canonical request: the gateway parses a request body once, refuses
//! what the engine behind it could read differently, judges the parsed
//! value, and forwards the canonical serialisation of exactly that value.
//!
//! For every endpoint whose decision reads the body:
//!
//! 1. the body is strict JSON ([`json`]) and its top level an object;
//! 2. for Ollama, no two keys of one struct-level object may fold to the
//!    same field under Go's rules ([`go_fold`]);
//! 3. the model is read where the engine reads it (Ollama: `model` in any
//!    case, and `name` on `/api/show`; OpenAI engines: `model` only, else the
//!    declared default model) and put in its canonical form
//!    ([`model_name`]);
//! 4. the fields that change metering (`stream`, `stream_options`,
//!    `max_tokens`, `max_completion_tokens`, `max_output_tokens`,
//!    `options.num_predict`) are read with the engine's coercions
//!    ([`coerce`]) and rewritten as the JSON type the gateway decided on;
//! 5. a streamed OpenAI request that did not ask for usage gets
//!    `stream_options.include_usage` (the answer's meter removes the extra
//!    event again);
//! 6. the value is serialised once: no insignificant white space, keys
//!    decoded and in their order, string values with their checked escapes
//!    (which every JSON parser decodes alike), numbers with their exact
//!    text, and every field the gateway does not understand kept as it was.

pub mod coerce;
pub mod go_fold;
pub mod json;
pub mod model_name;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use self::coerce::{Decoder, Refused};
use self::json::{JsonError, Object, Value};
pub use self::model_name::{ModelName, ModelPattern, NameError, canonical_name};
use crate::policy::endpoint::{BodyShape, Endpoint, ModelSource};

/// The model server behind the gateway: how it reads bodies, model names
/// and which endpoints it has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Ollama (0.17): Go's decoder, Ollama's name grammar.
    #[default]
    Ollama,
    /// vLLM's OpenAI-compatible server (0.3x): Python's `json`, pydantic
    /// models, exact model names, a default model.
    Vllm,
    /// Any other OpenAI-compatible server: read as vLLM is, with only the
    /// common OpenAI endpoints known.
    Openai,
    /// An MCP server (Streamable HTTP): JSON-RPC bodies, judged by the tool,
    /// resource or prompt a message names (see [`crate::mcp`]). Its
    /// "models" are those targets: `tool:<name>`, `resource:<uri>`,
    /// `prompt:<name>`.
    Mcp,
}

impl Engine {
    fn decoder(self) -> Decoder {
        match self {
            Self::Ollama => Decoder::Go,
            Self::Vllm | Self::Openai | Self::Mcp => Decoder::Pydantic,
        }
    }
}

/// The label metrics and per-model quota keys use for a model the backend
/// does not serve (see [`JudgedModel::label`]).
pub const UNLISTED_MODEL: &str = "(unlisted)";

/// The model a request was judged for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgedModel {
    /// Its canonical name: what the policy, the audit line and the model saw.
    pub name: ModelName,
    /// Whether the backend serves it (declared, or in the engine's list).
    pub served: bool,
}

impl JudgedModel {
    /// The name for metric labels and per-model quota keys: the canonical
    /// name when the backend serves the model, else [`UNLISTED_MODEL`], so
    /// caller-chosen names cannot grow either without bound.
    pub fn label(&self) -> &str {
        if self.served {
            self.name.as_str()
        } else {
            UNLISTED_MODEL
        }
    }
}

/// The metering facts of a request, as the engine will read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metering {
    /// Whether the answer streams.
    pub stream: bool,
    /// The most output tokens the request allows (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`, `options.num_predict`),
    /// or `None` for the engine's default.
    pub max_output_tokens: Option<u64>,
    /// Whether a streamed OpenAI answer will carry usage (asked for by the
    /// client, or added by the gateway).
    pub include_usage: bool,
}

/// A request body as judged, ready to forward.
#[derive(Debug, Clone)]
pub struct CanonicalBody {
    /// The canonical serialisation: what the model receives.
    pub bytes: Bytes,
    /// The parsed value the decision was made on (model name canonical,
    /// metering fields as decided).
    pub value: Value,
    /// The model the body names (or the declared default), canonical.
    pub model: Option<ModelName>,
    /// Metering fields.
    pub metering: Metering,
    /// The gateway added `stream_options.include_usage`: the answer's usage
    /// event is removed before the client sees it.
    pub usage_added: bool,
}

/// Why a body was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("the keys {first:?} and {second:?} are the same field to the model server")]
    KeyCollision { first: String, second: String },
    #[error("the body's Content-Encoding {0:?} is not accepted: send it uncompressed")]
    ContentEncoding(String),
    #[error("{field} must be {expected}")]
    BadField {
        field: &'static str,
        expected: &'static str,
    },
    #[error(transparent)]
    Name(#[from] NameError),
    /// No model is named and the engine has no declared default: the
    /// request is denied (403 `missing_model`), not malformed.
    #[error("the request names no model")]
    MissingModel,
}

impl BodyError {
    /// The short code for the JSON error body and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Json(JsonError::InvalidUtf8) => "invalid_utf8",
            Self::Json(JsonError::DuplicateKey(_)) => "duplicate_key",
            Self::Json(JsonError::TooDeep) => "too_deep",
            Self::Json(JsonError::TrailingData(_)) => "trailing_data",
            Self::Json(JsonError::LoneSurrogate(_) | JsonError::Syntax(_)) => "invalid_json",
            Self::Json(JsonError::KeyCollision { .. }) => "key_collision",
            Self::NotAnObject => "not_an_object",
            Self::KeyCollision { .. } => "key_collision",
            Self::ContentEncoding(_) => "content_encoding",
            Self::BadField { .. } => "bad_field",
            Self::Name(NameError::TooLong) => "model_name_too_long",
            Self::Name(NameError::Invalid { .. }) => "invalid_model_name",
            Self::MissingModel => "missing_model",
        }
    }
}

/// What canonicalisation needs to know besides the body.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub engine: Engine,
    pub endpoint: &'a Endpoint,
    /// The model an OpenAI engine serves when a request names none.
    pub default_model: Option<&'a ModelName>,
}

/// Refuses a `Content-Encoding` other than `identity` (the gateway does not
/// decode bodies, and Ollama's `/v1/responses` would decode zstd).
pub fn check_content_encoding(value: Option<&[u8]>) -> Result<(), BodyError> {
    match value {
        None => Ok(()),
        Some(v) if v.trim_ascii().eq_ignore_ascii_case(b"identity") => Ok(()),
        Some(v) => Err(BodyError::ContentEncoding(
            String::from_utf8_lossy(v).chars().take(32).collect(),
        )),
    }
}

/// Parses, checks and canonicalises a request body.
pub fn canonicalize(context: Context<'_>, body: &Bytes) -> Result<CanonicalBody, BodyError> {
    let engine = context.engine;
    let rules: Option<&dyn json::KeyRules> = match engine {
        Engine::Ollama => Some(&go_fold::GoFold),
        // MCP bodies are JSON-RPC, read by `crate::mcp::message` (with Go's
        // folding), never here.
        Engine::Vllm | Engine::Openai | Engine::Mcp => None,
    };
    let mut value = json::parse_with(body, rules).map_err(|e| match e {
        JsonError::KeyCollision { first, second } => BodyError::KeyCollision { first, second },
        e => BodyError::Json(e),
    })?;
    let object = value.as_object_mut().ok_or(BodyError::NotAnObject)?;
    let model = match context.endpoint.model {
        ModelSource::Body => Some(body_model(context, object, false)?),
        ModelSource::BodyOrName => Some(body_model(context, object, true)?),
        _ => None,
    };
    let (metering, usage_added) = metering(engine, context.endpoint.shape, object)?;
    let mut bytes = Vec::with_capacity(body.len());
    value.write_to(&mut bytes);
    Ok(CanonicalBody {
        bytes: Bytes::from(bytes),
        value,
        model,
        metering,
        usage_added,
    })
}

/// Where `field` is in `object`, as the engine matches keys.
fn find(engine: Engine, object: &Object, field: &str) -> Option<usize> {
    match engine {
        Engine::Ollama => object.position(|k| go_fold::matches(k, field)),
        Engine::Vllm | Engine::Openai | Engine::Mcp => object.position(|k| k == field),
    }
}

/// Renames the member at `index` to exactly `field` and sets its value
/// (leaving a member that already is so untouched).
fn set_at(object: &mut Object, index: usize, field: &'static str, value: Value) {
    if let Some(slot) = object.at_mut(index) {
        if !slot.0.is(field) {
            slot.0 = json::Str::from_static(field);
        }
        if slot.1 != value {
            slot.1 = value;
        }
    }
}

/// A model name field as the engine decodes it, canonical: `Ok(None)` when
/// absent, null or empty (Go leaves a string field empty for null).
fn model_field(
    engine: Engine,
    object: &Object,
    field: &'static str,
) -> Result<Option<ModelName>, BodyError> {
    let Some(index) = find(engine, object, field) else {
        return Ok(None);
    };
    match object.at(index).map(|(_, v)| v) {
        Some(Value::String(s)) => {
            let raw = s.as_str();
            if raw.is_empty() {
                Ok(None)
            } else {
                Ok(Some(canonical_name(engine, &raw)?))
            }
        }
        Some(Value::Null) | None => Ok(None),
        Some(_) => Err(BodyError::BadField {
            field,
            expected: "a string",
        }),
    }
}

fn body_model(
    context: Context<'_>,
    object: &mut Object,
    or_name: bool,
) -> Result<ModelName, BodyError> {
    let engine = context.engine;
    let named = match model_field(engine, object, "model")? {
        Some(found) => Some(found),
        // Ollama's /api/show reads `cmp.Or(model, name)`. Nothing else reads
        // `name`, and OpenAI engines never do.
        None if or_name && engine == Engine::Ollama => model_field(engine, object, "name")?,
        None => None,
    };
    let name = match (named, context.default_model) {
        (Some(name), _) => name,
        (None, Some(default)) if engine != Engine::Ollama => default.clone(),
        (None, _) => return Err(BodyError::MissingModel),
    };
    let value = || Value::String(json::Str::from(name.as_str()));
    match find(engine, object, "model") {
        Some(index) => {
            let unchanged = object.at(index).is_some_and(|(k, v)| {
                k.is("model") && v.as_str().is_some_and(|s| s == name.as_str())
            });
            if !unchanged {
                set_at(object, index, "model", value());
            }
        }
        None => object.insert_static("model", value()),
    }
    if or_name
        && engine == Engine::Ollama
        && let Some(index) = find(engine, object, "name")
    {
        // The judged name is in `model` now; a second spelling in `name`
        // would only invite a second reading.
        object.remove_at(index);
    }
    Ok(name)
}

/// Reads (and rewrites) a boolean field; `default` when absent or null.
fn bool_field(
    engine: Engine,
    object: &mut Object,
    field: &'static str,
    default: bool,
) -> Result<bool, BodyError> {
    let Some(index) = find(engine, object, field) else {
        return Ok(default);
    };
    let Some((_, value)) = object.at(index) else {
        return Ok(default);
    };
    match coerce::boolean(engine.decoder(), value) {
        Ok(Some(b)) => {
            set_at(object, index, field, Value::Bool(b));
            Ok(b)
        }
        Ok(None) => Ok(default),
        Err(Refused) => Err(BodyError::BadField {
            field,
            expected: "a boolean",
        }),
    }
}

/// Reads (and rewrites) an integer field.
fn int_field(
    engine: Engine,
    object: &mut Object,
    field: &'static str,
) -> Result<Option<i128>, BodyError> {
    let Some(index) = find(engine, object, field) else {
        return Ok(None);
    };
    let Some((_, value)) = object.at(index) else {
        return Ok(None);
    };
    match coerce::integer(engine.decoder(), value) {
        Ok(Some(n)) => {
            set_at(object, index, field, coerce::number_of(n));
            Ok(Some(n))
        }
        Ok(None) => Ok(None),
        Err(Refused) => Err(BodyError::BadField {
            field,
            expected: "an integer",
        }),
    }
}

fn metering(
    engine: Engine,
    shape: BodyShape,
    object: &mut Object,
) -> Result<(Metering, bool), BodyError> {
    let mut m = Metering::default();
    let mut usage_added = false;
    match shape {
        BodyShape::Other => {}
        BodyShape::OllamaGenerate => {
            // `stream *bool`: absent or null streams.
            m.stream = bool_field(engine, object, "stream", true)?;
            if let Some(slot) = find(engine, object, "options").and_then(|i| object.at_mut(i)) {
                if !slot.0.is("options") {
                    slot.0 = json::Str::from_static("options");
                }
                match &mut slot.1 {
                    Value::Object(options) => {
                        // A map: Ollama reads its keys exactly.
                        if let Some(n) = options.get_mut("num_predict") {
                            let decided = coerce::ollama_option_int(n).map_err(|Refused| {
                                BodyError::BadField {
                                    field: "options.num_predict",
                                    expected: "a number in the int64 range",
                                }
                            })?;
                            if let Some(d) = decided {
                                let number = coerce::number_of(d);
                                if *n != number {
                                    *n = number;
                                }
                            }
                            m.max_output_tokens = coerce::token_bound(decided);
                        }
                    }
                    Value::Null => {}
                    _ => {
                        return Err(BodyError::BadField {
                            field: "options",
                            expected: "an object",
                        });
                    }
                }
            }
        }
        BodyShape::OpenAiChat | BodyShape::OpenAiCompletion => {
            m.stream = bool_field(engine, object, "stream", false)?;
            let max_tokens = int_field(engine, object, "max_tokens")?;
            // vLLM prefers max_completion_tokens; Ollama ignores it.
            let max_completion = if shape == BodyShape::OpenAiChat && engine != Engine::Ollama {
                int_field(engine, object, "max_completion_tokens")?
            } else {
                None
            };
            m.max_output_tokens = coerce::token_bound(max_completion.or(max_tokens));
            m.include_usage = stream_options(engine, object)?;
            if m.stream && !m.include_usage {
                request_usage(engine, object);
                m.include_usage = true;
                usage_added = true;
            }
        }
        BodyShape::OpenAiResponses => {
            m.stream = bool_field(engine, object, "stream", false)?;
            m.max_output_tokens =
                coerce::token_bound(int_field(engine, object, "max_output_tokens")?);
        }
        BodyShape::AnthropicMessages => {
            m.stream = bool_field(engine, object, "stream", false)?;
            m.max_output_tokens = coerce::token_bound(int_field(engine, object, "max_tokens")?);
        }
    }
    Ok((m, usage_added))
}

/// `stream_options.include_usage` as decided (rewritten in place).
fn stream_options(engine: Engine, object: &mut Object) -> Result<bool, BodyError> {
    let Some(index) = find(engine, object, "stream_options") else {
        return Ok(false);
    };
    let Some(slot) = object.at_mut(index) else {
        return Ok(false);
    };
    if !slot.0.is("stream_options") {
        slot.0 = json::Str::from_static("stream_options");
    }
    match &mut slot.1 {
        Value::Null => Ok(false),
        Value::Object(options) => {
            bool_field(engine, options, "include_usage", false).map_err(|_| BodyError::BadField {
                field: "stream_options.include_usage",
                expected: "a boolean",
            })
        }
        _ => Err(BodyError::BadField {
            field: "stream_options",
            expected: "an object",
        }),
    }
}

/// Sets `stream_options.include_usage: true`.
fn request_usage(engine: Engine, object: &mut Object) {
    match find(engine, object, "stream_options").and_then(|i| object.at_mut(i)) {
        Some((_, Value::Object(options))) => match find(engine, options, "include_usage") {
            Some(i) => set_at(options, i, "include_usage", Value::Bool(true)),
            None => options.insert_static("include_usage", Value::Bool(true)),
        },
        Some(slot) => slot.1 = include_usage(),
        None => object.insert_static("stream_options", include_usage()),
    }
}

fn include_usage() -> Value {
    let mut options = Object::default();
    options.insert_static("include_usage", Value::Bool(true));
    Value::Object(options)
}

#[cfg(test)]
mod tests;
