//! attach-gateway: a reverse proxy that verifies the caller's OIDC JWT before
//! any request reaches a self-hosted model server (Ollama, vLLM, or any
//! OpenAI-compatible server).
//!
//! The same library backs the sidecar that the operator injects and the
//! standalone gateway. It never depends on Kubernetes crates: the operator
//! depends on it for the config types only.
#![forbid(unsafe_code)]

/// The binary's name, as shown in `--help` and in logs.
pub const BINARY_NAME: &str = "attach-gateway";
