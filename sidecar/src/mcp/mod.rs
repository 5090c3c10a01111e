//! MCP servers as protected backends (`upstream.engine: mcp`): the gateway
//! is an OAuth 2.1 resource server in front of an MCP server's Streamable
//! HTTP endpoint, and judges each JSON-RPC message by what it names.
//!
//! - `POST <path>`: the body is one JSON-RPC message or a batch, read once
//!   in canonical form ([`message`]) and judged message by message
//!   ([`judge`]); a batch passes only whole. List answers are trimmed to
//!   what the caller may use, in JSON and SSE answers alike ([`lists`]).
//!   Every other answer streams through untouched.
//! - `GET <path>` (the server's own SSE stream) and `DELETE <path>` (the end
//!   of a session) need a rule that grants the caller `read`.
//! - Any other path or method is an unknown endpoint: denied unless
//!   `access.allowUnknownEndpoints`.
//!
//! Rules name targets as models: `tool:<name glob>`,
//! `resource:<uri glob>`, `prompt:<name glob>`, granted with `inference`;
//! the session's own traffic and the lists need `read`. The `Mcp-Method`
//! and `Mcp-Name` headers (protocol 2026-07-28), when sent, must say what
//! the body says. The caller's token never reaches the server (see
//! `identity_headers`); the identity does, in `X-Attach-*` headers.

pub mod judge;
pub mod lists;
pub mod message;

use serde::{Deserialize, Serialize};

/// The MCP settings of a gateway config (`mcp:`), read with `engine: mcp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpConfig {
    /// The Streamable HTTP endpoint's path on the server.
    #[serde(default = "default_path")]
    pub path: String,
    /// Methods besides the built-in session ones (`initialize`, `ping`,
    /// the client's notifications, `logging/setLevel`) that need only
    /// `read`: methods of newer protocol revisions, or a server's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub session_methods: Vec<String>,
    /// Write a `tools/call`'s arguments into its audit line (cut at 256
    /// characters). Off by default: arguments may hold what users typed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit_arguments: bool,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            path: default_path(),
            session_methods: Vec::new(),
            audit_arguments: false,
        }
    }
}

fn default_path() -> String {
    "/mcp".to_owned()
}

/// Headers of the 2026-07-28 transport that mirror the body.
pub const METHOD_HEADER: &str = "mcp-method";
/// See [`METHOD_HEADER`]: the tool or prompt name, or the resource URI.
pub const NAME_HEADER: &str = "mcp-name";

/// The value of an `Mcp-Name` header: as sent, or decoded from the
/// `=?base64?...?=` form the protocol uses for text a header cannot carry.
pub fn decode_header_value(raw: &str) -> Option<String> {
    use base64::Engine as _;
    match raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(payload) => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests;
