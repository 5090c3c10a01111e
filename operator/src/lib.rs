//! attach-operator: watches `IdentityProvider` and `LLMBackend` resources
//! (API group `attach.dev`), renders each backend's sidecar config and injects
//! attach-gateway into matching model pods.
#![forbid(unsafe_code)]

pub mod admin;
pub mod controller;
pub mod crd;
pub mod inject;
pub mod leader;
pub mod metrics;
pub mod ports;
pub mod reflectors;
pub mod render;
pub mod serve;
#[cfg(test)]
pub(crate) mod testkit;
pub mod webhook;

/// The binary's name, as shown in `--help` and in logs.
pub const BINARY_NAME: &str = "attach-operator";
