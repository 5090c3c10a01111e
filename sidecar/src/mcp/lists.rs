//! Trimming list answers (`tools/list`, `resources/list`,
//! `resources/templates/list`, `prompts/list`) to the targets the caller may
//! use, in JSON answers and in SSE streams alike.
//!
//! A single list request is answered by one response: every response in
//! its answer is trimmed, whatever its id says. In a batch, responses are
//! matched to the list requests by id (ids are unique in a judged batch).
//! An entry whose name is not a target the gateway can read is dropped; an
//! answer the gateway cannot read is not passed on (fail closed).

use super::message::ListKind;
use crate::canonical::{Engine, canonical_name};

/// Which responses of an answer are list answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Lists {
    /// The request was one list request: every response is its answer.
    Single(ListKind),
    /// A batch: the list requests by id.
    ById(Vec<(serde_json::Value, ListKind)>),
}

/// Why an answer could not be trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrimError {
    #[error("a list answer is not JSON")]
    NotJson,
}

/// The names `answer` lists for `kind`, as targets, untrimmed (for the
/// served-targets set); entries that are not targets are left out.
pub fn listed(message: &serde_json::Value, kind: ListKind) -> Vec<String> {
    let (list, key, prefix) = kind.members();
    message
        .get("result")
        .and_then(|r| r.get(list))
        .and_then(serde_json::Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get(key)?.as_str())
                .map(|name| format!("{prefix}{name}"))
                .filter(|t| canonical_name(Engine::Mcp, t).is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Trims one JSON-RPC message (or batch of them) in place; returns the
/// targets the untrimmed lists held.
fn trim_value(
    value: &mut serde_json::Value,
    lists: &Lists,
    keep: &dyn Fn(&str) -> bool,
    seen: &mut Vec<String>,
) {
    match value {
        serde_json::Value::Array(items) => {
            for item in items {
                trim_value(item, lists, keep, seen);
            }
        }
        serde_json::Value::Object(_) => {
            let kind = match lists {
                Lists::Single(kind) => Some(*kind),
                Lists::ById(ids) => value
                    .get("id")
                    .and_then(|id| ids.iter().find(|(i, _)| i == id).map(|(_, k)| *k)),
            };
            let Some(kind) = kind else { return };
            if value.get("result").is_none() {
                return;
            }
            seen.extend(listed(value, kind));
            let (list, key, prefix) = kind.members();
            if let Some(entries) = value
                .get_mut("result")
                .and_then(|r| r.get_mut(list))
                .and_then(serde_json::Value::as_array_mut)
            {
                entries.retain(|entry| {
                    entry
                        .get(key)
                        .and_then(serde_json::Value::as_str)
                        .map(|name| format!("{prefix}{name}"))
                        .is_some_and(|target| {
                            canonical_name(Engine::Mcp, &target).is_ok() && keep(&target)
                        })
                });
            }
        }
        _ => {}
    }
}

/// Trims a JSON answer; returns it and the targets the lists held.
pub fn trim_json(
    body: &[u8],
    lists: &Lists,
    keep: &dyn Fn(&str) -> bool,
) -> Result<(Vec<u8>, Vec<String>), TrimError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| TrimError::NotJson)?;
    let mut seen = Vec::new();
    trim_value(&mut value, lists, keep, &mut seen);
    let bytes = serde_json::to_vec(&value).map_err(|_| TrimError::NotJson)?;
    Ok((bytes, seen))
}

/// Trims every event of an SSE answer whose data is a JSON-RPC message;
/// the events' other fields (`event`, `id`, `retry`, comments) are kept.
/// Lines may end in LF, CRLF or CR (the SSE grammar); the output uses LF.
pub fn trim_sse(
    body: &[u8],
    lists: &Lists,
    keep: &dyn Fn(&str) -> bool,
) -> Result<(Vec<u8>, Vec<String>), TrimError> {
    let text = std::str::from_utf8(body).map_err(|_| TrimError::NotJson)?;
    let mut out = String::with_capacity(text.len());
    let mut seen = Vec::new();
    let mut fields: Vec<&str> = Vec::new();
    let mut data: Vec<&str> = Vec::new();
    // `terminated`: the event ended with a blank line (one cut short by the
    // end of the stream stays cut short, as clients drop such an event).
    let mut flush = |fields: &mut Vec<&str>,
                     data: &mut Vec<&str>,
                     out: &mut String,
                     terminated: bool|
     -> Result<(), TrimError> {
        if fields.is_empty() && data.is_empty() {
            return Ok(());
        }
        for field in fields.drain(..) {
            out.push_str(field);
            out.push('\n');
        }
        if !data.is_empty() {
            let joined = data.join("\n");
            data.clear();
            match serde_json::from_str::<serde_json::Value>(&joined) {
                Ok(mut value) => {
                    trim_value(&mut value, lists, keep, &mut seen);
                    out.push_str("data: ");
                    out.push_str(&serde_json::to_string(&value).map_err(|_| TrimError::NotJson)?);
                    out.push('\n');
                }
                // Not a message (a keep-alive, say): as it came.
                Err(_) => {
                    for line in joined.split('\n') {
                        out.push_str("data: ");
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
        }
        if terminated {
            out.push('\n');
        }
        Ok(())
    };
    for line in lines(text) {
        if line.is_empty() {
            flush(&mut fields, &mut data, &mut out, true)?;
        } else if let Some(value) = line.strip_prefix("data") {
            match value.strip_prefix(':') {
                Some(v) => data.push(v.strip_prefix(' ').unwrap_or(v)),
                None if value.is_empty() => data.push(""),
                None => fields.push(line),
            }
        } else {
            fields.push(line);
        }
    }
    flush(&mut fields, &mut data, &mut out, false)?;
    Ok((out.into_bytes(), seen))
}

/// The lines of `text`, split at LF, CRLF or CR.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.find(['\r', '\n']) {
            Some(i) => {
                let line = &rest[..i];
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
                Some(line)
            }
            None => {
                let line = rest;
                rest = "";
                Some(line)
            }
        }
    })
}
