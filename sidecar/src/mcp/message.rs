//! The JSON-RPC messages of one MCP request body, read once and put in
//! canonical form: what the gateway judges is what the MCP server reads.
//!
//! The body is strict JSON, read with Go's key folding (`encoding/json`, as
//! MCP servers written in Go decode it): two keys of one object that a Go
//! server would take for one field are refused, whatever the server behind
//! is (Python and TypeScript servers match keys exactly and would read the
//! other one). The members the decision reads (`jsonrpc`, `id`, `method`,
//! `params`, and `name`, `uri`, `ref`, `type` in `params`) are found as Go
//! finds them and renamed to their exact spelling, so every server reads
//! the value that was judged. Below `arguments` keys are data, matched
//! exactly, and not judged.

use bytes::Bytes;

use crate::canonical::go_fold::{self, GoFold};
use crate::canonical::json::{self, JsonError, Object, Str, Value};
use crate::canonical::{Engine, ModelName, NameError, canonical_name};

/// The most messages one batch may carry.
pub const MAX_BATCH: usize = 64;

/// Why a body is not an MCP request the gateway can judge: 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("the keys {first:?} and {second:?} are the same member to a Go server")]
    KeyCollision { first: String, second: String },
    #[error("the body is not a JSON-RPC message or a batch of them")]
    NotAMessage,
    #[error("a batch must hold 1 to {MAX_BATCH} messages")]
    BatchSize,
    #[error("two requests of one batch share an id")]
    DuplicateId,
    #[error("{0} is missing or has the wrong type")]
    BadMember(&'static str),
    #[error("jsonrpc must be \"2.0\"")]
    Version,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("the {0} header does not say what the body says")]
    HeaderMismatch(&'static str),
}

impl MessageError {
    /// The label for metrics and the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Json(JsonError::DuplicateKey(_)) => "duplicate_key",
            Self::Json(_) => "invalid_json",
            Self::KeyCollision { .. } => "key_collision",
            Self::NotAMessage => "not_jsonrpc",
            Self::BatchSize => "batch_size",
            Self::DuplicateId => "duplicate_id",
            Self::BadMember(_) => "bad_member",
            Self::Version => "jsonrpc_version",
            Self::Name(_) => "bad_target",
            Self::HeaderMismatch(_) => "header_mismatch",
        }
    }
}

/// The lists whose answers are trimmed to what the caller may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// `tools/list`: `result.tools[].name`.
    Tools,
    /// `resources/list`: `result.resources[].uri`.
    Resources,
    /// `resources/templates/list`: `result.resourceTemplates[].uriTemplate`.
    ResourceTemplates,
    /// `prompts/list`: `result.prompts[].name`.
    Prompts,
}

impl ListKind {
    /// The result member holding the list, the member naming each entry,
    /// and the target kind entries are judged as.
    pub fn members(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Tools => ("tools", "name", "tool:"),
            Self::Resources => ("resources", "uri", "resource:"),
            Self::ResourceTemplates => ("resourceTemplates", "uriTemplate", "resource:"),
            Self::Prompts => ("prompts", "name", "prompt:"),
        }
    }
}

/// What one message asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// The session's own traffic: `initialize`, `ping`, the client's
    /// notifications, `logging/setLevel`, and the methods the config adds.
    Session,
    /// A list, trimmed in the answer.
    List(ListKind),
    /// A call on one target: `tools/call`, `resources/read`,
    /// `resources/subscribe`, `resources/unsubscribe`, `prompts/get`,
    /// `completion/complete`.
    Call(ModelName),
    /// `subscriptions/listen` (protocol 2026-07-28): the session's stream
    /// of notifications, with updates of these resources (each judged as
    /// a call on it).
    Listen(Vec<ModelName>),
    /// The client's answer to a request of the server's (sampling,
    /// elicitation, roots): it carries `result` or `error`, no method.
    Answer,
    /// A method the gateway does not know: denied.
    Unknown,
}

/// One message, as judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The request id, for matching the answer; `None` for a notification
    /// or an answer.
    pub id: Option<serde_json::Value>,
    /// The method, when the message has one.
    pub method: Option<String>,
    pub ask: Ask,
}

/// A request body as judged, ready to forward.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The canonical serialisation: what the server receives.
    pub bytes: Bytes,
    /// The messages, in order.
    pub messages: Vec<Message>,
    /// Whether the body was a batch (a JSON array).
    pub batch: bool,
}

/// The methods that are the session's own traffic (`server/discover`:
/// protocol 2026-07-28's negotiation, which has no session).
const SESSION_METHODS: [&str; 8] = [
    "initialize",
    "server/discover",
    "ping",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "logging/setLevel",
];

/// Reads `body`: one JSON-RPC message or a batch. `session_methods` are
/// further methods to treat as session traffic (the config's).
pub fn read(body: &Bytes, session_methods: &[String]) -> Result<Judged, MessageError> {
    let mut value = json::parse_with(body, Some(&GoFold)).map_err(|e| match e {
        JsonError::KeyCollision { first, second } => MessageError::KeyCollision { first, second },
        e => MessageError::Json(e),
    })?;
    let (messages, batch) = match &mut value {
        Value::Object(object) => (vec![message(object, session_methods)?], false),
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_BATCH {
                return Err(MessageError::BatchSize);
            }
            let mut messages: Vec<Message> = Vec::with_capacity(items.len());
            for item in items.iter_mut() {
                let object = item.as_object_mut().ok_or(MessageError::NotAMessage)?;
                let message = message(object, session_methods)?;
                // Answers are matched to requests by id: one id, one request.
                if message.id.is_some() && messages.iter().any(|m| m.id == message.id) {
                    return Err(MessageError::DuplicateId);
                }
                messages.push(message);
            }
            (messages, true)
        }
        _ => return Err(MessageError::NotAMessage),
    };
    Ok(Judged {
        bytes: value.to_bytes(),
        messages,
        batch,
    })
}

/// Reads one message, renaming the members it reads to their exact spelling.
fn message(object: &mut Object, session_methods: &[String]) -> Result<Message, MessageError> {
    match take_str(object, "jsonrpc")? {
        Some(v) if v == "2.0" => {}
        _ => return Err(MessageError::Version),
    }
    let id = match find(object, "id") {
        Some(i) => {
            rename_at(object, i, "id");
            Some(read_id(object.at(i).map(|(_, v)| v))?)
        }
        None => None,
    };
    let Some(method) = take_str(object, "method")? else {
        // No method: an answer to the server's request, with exactly one of
        // result and error, and an id.
        let result = find(object, "result").is_some();
        let error = find(object, "error").is_some();
        if id.is_none() || result == error {
            return Err(MessageError::NotAMessage);
        }
        rename(object, "result");
        rename(object, "error");
        return Ok(Message {
            id: None,
            method: None,
            ask: Ask::Answer,
        });
    };
    let ask = ask(object, &method, session_methods)?;
    Ok(Message {
        id,
        method: Some(method),
        ask,
    })
}

/// A request id: a string or an integer, as MCP says (answers are matched
/// to requests by id, and `1.0` might come back as `1`).
fn read_id(value: Option<&Value>) -> Result<serde_json::Value, MessageError> {
    match value {
        Some(Value::Number(n)) if !n.is_integer_literal() => Err(MessageError::BadMember("id")),
        Some(v @ (Value::String(_) | Value::Number(_))) => {
            serde_json::from_slice(&v.to_bytes()).map_err(|_| MessageError::BadMember("id"))
        }
        _ => Err(MessageError::BadMember("id")),
    }
}

fn ask(object: &mut Object, method: &str, session_methods: &[String]) -> Result<Ask, MessageError> {
    let list = match method {
        "tools/list" => Some(ListKind::Tools),
        "resources/list" => Some(ListKind::Resources),
        "resources/templates/list" => Some(ListKind::ResourceTemplates),
        "prompts/list" => Some(ListKind::Prompts),
        _ => None,
    };
    if let Some(kind) = list {
        return Ok(Ask::List(kind));
    }
    if SESSION_METHODS.contains(&method) || session_methods.iter().any(|m| m == method) {
        return Ok(Ask::Session);
    }
    if method == "subscriptions/listen" {
        return listen(object);
    }
    let target = match method {
        "tools/call" => format!("tool:{}", param(object, &[], "name")?),
        "prompts/get" => format!("prompt:{}", param(object, &[], "name")?),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            format!("resource:{}", param(object, &[], "uri")?)
        }
        "completion/complete" => match param(object, &["ref"], "type")?.as_str() {
            "ref/prompt" => format!("prompt:{}", param(object, &["ref"], "name")?),
            "ref/resource" => format!("resource:{}", param(object, &["ref"], "uri")?),
            _ => return Err(MessageError::BadMember("params.ref.type")),
        },
        _ => return Ok(Ask::Unknown),
    };
    Ok(Ask::Call(canonical_name(Engine::Mcp, &target)?))
}

/// `subscriptions/listen`: the resources of
/// `params.notifications.resourceSubscriptions`, each a target.
fn listen(object: &mut Object) -> Result<Ask, MessageError> {
    let bad = || MessageError::BadMember("params.notifications.resourceSubscriptions");
    let mut at = object;
    for step in ["params", "notifications", "resourceSubscriptions"] {
        let Some(i) = find(at, step) else {
            return Ok(Ask::Listen(Vec::new()));
        };
        rename_at(at, i, step);
        let value = at.at_mut(i).map(|(_, v)| v).ok_or_else(bad)?;
        match value {
            Value::Object(inner) => at = inner,
            Value::Array(items) if step == "resourceSubscriptions" => {
                let mut targets = Vec::with_capacity(items.len());
                for item in items.iter() {
                    let Value::String(uri) = item else {
                        return Err(bad());
                    };
                    targets.push(canonical_name(
                        Engine::Mcp,
                        &format!("resource:{}", uri.as_str()),
                    )?);
                }
                return Ok(Ask::Listen(targets));
            }
            Value::Null => return Ok(Ask::Listen(Vec::new())),
            _ => return Err(bad()),
        }
    }
    Err(bad())
}

/// The string `params[.path...].field`, its key and those on the way
/// renamed to their exact spelling.
fn param(
    object: &mut Object,
    path: &[&'static str],
    field: &'static str,
) -> Result<String, MessageError> {
    let mut at = object;
    for step in std::iter::once(&"params").chain(path) {
        let i = find(at, step).ok_or(MessageError::BadMember(member_name(field)))?;
        rename_at(at, i, step);
        at = match at.at_mut(i).map(|(_, v)| v) {
            Some(Value::Object(inner)) => inner,
            _ => return Err(MessageError::BadMember(member_name(field))),
        };
    }
    take_str(at, field)?.ok_or(MessageError::BadMember(member_name(field)))
}

fn member_name(field: &'static str) -> &'static str {
    match field {
        "name" => "params.name",
        "uri" => "params.uri",
        "type" => "params.ref.type",
        _ => "params",
    }
}

/// The string member `field` (found as Go finds it, renamed to `field`).
fn take_str(object: &mut Object, field: &'static str) -> Result<Option<String>, MessageError> {
    let Some(i) = find(object, field) else {
        return Ok(None);
    };
    rename_at(object, i, field);
    match object.at(i).map(|(_, v)| v) {
        Some(Value::String(s)) => Ok(Some(s.as_str().into_owned())),
        _ => Err(MessageError::BadMember(match field {
            "jsonrpc" => "jsonrpc",
            "method" => "method",
            other => member_name(other),
        })),
    }
}

fn find(object: &Object, field: &str) -> Option<usize> {
    object.position(|k| go_fold::matches(k, field))
}

fn rename(object: &mut Object, field: &'static str) {
    if let Some(i) = find(object, field) {
        rename_at(object, i, field);
    }
}

fn rename_at(object: &mut Object, index: usize, field: &'static str) {
    if let Some(slot) = object.at_mut(index)
        && !slot.0.is(field)
    {
        slot.0 = Str::from_static(field);
    }
}
