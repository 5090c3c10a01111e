//! Where things listen inside an injected pod. The gateway takes over the
//! model container's port; the model moves to a loopback port; the gateway's
//! admin endpoints get a port of their own. The controller renders the config
//! with these numbers and the webhook rebinds the model to match.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::llm_backend::{Engine, LLMBackendSpec};
use crate::render::Ports;

/// The gateway's admin port (/healthz, /readyz, /metrics).
pub const ADMIN_PORT: u16 = 15090;
/// The loopback port the model is moved to.
pub const MODEL_LOOPBACK_PORT: u16 = 15434;

/// The port each engine serves on by default.
pub fn default_model_port(engine: Engine) -> u16 {
    match engine {
        Engine::Ollama => 11434,
        Engine::Vllm | Engine::Openai | Engine::Mcp => 8000,
    }
}

/// The layout for a model served on `listen`: admin and loopback ports move
/// aside if the model happens to use them.
pub fn layout(listen: u16) -> Ports {
    let admin = if listen == ADMIN_PORT {
        ADMIN_PORT + 1
    } else {
        ADMIN_PORT
    };
    let upstream = (MODEL_LOOPBACK_PORT..)
        .find(|p| *p != listen && *p != admin)
        .unwrap_or(MODEL_LOOPBACK_PORT);
    Ports {
        listen,
        admin,
        upstream,
    }
}

/// The layout a backend's ConfigMap is rendered with. A named port is
/// resolved per pod by the webhook (which passes `--port`); the config then
/// carries the engine's default.
pub fn for_spec(spec: &LLMBackendSpec) -> Ports {
    let listen = match &spec.port {
        IntOrString::Int(n) => {
            u16::try_from(*n).unwrap_or_else(|_| default_model_port(spec.engine))
        }
        IntOrString::String(_) => default_model_port(spec.engine),
    };
    layout(listen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_never_collide() {
        for listen in [
            80,
            8000,
            11434,
            ADMIN_PORT,
            MODEL_LOOPBACK_PORT,
            ADMIN_PORT + 1,
        ] {
            let p = layout(listen);
            assert_eq!(p.listen, listen);
            assert_ne!(p.admin, p.listen, "{p:?}");
            assert_ne!(p.upstream, p.listen, "{p:?}");
            assert_ne!(p.upstream, p.admin, "{p:?}");
        }
        assert_eq!(layout(11434).upstream, MODEL_LOOPBACK_PORT);
    }
}
