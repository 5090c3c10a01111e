//! attach-gateway: a reverse proxy that verifies the caller's OIDC JWT before
//! any request reaches a self-hosted model server (Ollama, vLLM, or any
//! OpenAI-compatible server).
//!
//! The same library backs the sidecar that the operator injects and the
//! standalone gateway. It never depends on Kubernetes crates: the operator
//! depends on it for the config types only.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app_probe;
pub mod audit;
pub mod body;
pub mod canonical;
pub mod claims;
pub mod config;
pub mod discovery;
pub mod error;
pub mod exchange;
pub mod gateway;
pub mod idp_client;
pub mod jwt;
pub mod keys;
pub mod mcp;
pub mod metrics;
pub mod oauth_answer;
pub mod policy;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod rescue;
pub mod runtime;
pub mod served_models;
pub mod server;
pub mod standalone;
#[cfg(test)]
pub(crate) mod testkit;
pub mod traces;

/// The binary's name, as shown in `--help` and in logs.
pub const BINARY_NAME: &str = "attach-gateway";
