//! The injection decision: a pure function from a pod, its namespace's
//! labels and the LLMBackends to either a patched pod or a named reason to
//! leave it alone. The webhook serves it; the golden tests pin it down.
//!
//! | namespace `attach.dev/injection` | pod `attach.dev/inject` | a backend selects the pod | result |
//! |---|---|---|---|
//! | `disabled` | any | any | skip: `namespace_opted_out` |
//! | other or absent | `"false"` (label or annotation) | yes | skip: `pod_opted_out` (warning) |
//! | other or absent | other or absent | yes | inject (or skip: `host_network`, `already_injected`, `engine_container_not_found`) |
//! | any | any | no | skip: `no_backend` |
//!
//! A backend's selector is the opt-in: declaring an LLMBackend is asking for
//! its pods to be protected.

mod probes;
mod rebind;
mod sidecar;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::controller::selection;
use crate::crd::LLMBackend;
use crate::ports;

pub use sidecar::Defaults;

/// The namespace label that opts a namespace out.
pub const NAMESPACE_OPT_OUT: (&str, &str) = ("attach.dev/injection", "disabled");
/// The pod label or annotation that opts a pod out (value `"false"`).
pub const POD_OPT_OUT: &str = "attach.dev/inject";
/// The pod annotation naming the config hash the gateway was injected with.
pub const INJECTED: &str = "attach.dev/injected";
/// The pod annotation naming the backend.
pub const BACKEND: &str = selection::INJECTED_BY;
/// The injected container's name.
pub const SIDECAR_NAME: &str = "attach-gateway";

/// Why a pod is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    NoBackend,
    NamespaceOptedOut,
    PodOptedOut,
    HostNetwork,
    AlreadyInjected,
    EngineContainerNotFound,
}

impl SkipReason {
    /// The metric label and the name in warnings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoBackend => "no_backend",
            Self::NamespaceOptedOut => "namespace_opted_out",
            Self::PodOptedOut => "pod_opted_out",
            Self::HostNetwork => "host_network",
            Self::AlreadyInjected => "already_injected",
            Self::EngineContainerNotFound => "engine_container_not_found",
        }
    }
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The pod as it must be created.
    Inject { backend: String, pod: Box<Pod> },
    /// Leave it; `selected_by` names the backend that selects it, if any (a
    /// skip of a selected pod deserves a warning).
    Skip {
        reason: SkipReason,
        selected_by: Option<String>,
    },
}

/// Decides for `pod` in a namespace labelled `namespace_labels`.
pub fn inject_pod(
    pod: &Pod,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    backends: &[Arc<LLMBackend>],
    defaults: &Defaults,
) -> Decision {
    let skip = |reason, selected_by: Option<&LLMBackend>| Decision::Skip {
        reason,
        selected_by: selected_by.map(ResourceExt::name_any),
    };
    let owner = selection::owner_of(namespace, pod.labels(), backends);
    if namespace_labels
        .get(NAMESPACE_OPT_OUT.0)
        .map(String::as_str)
        == Some(NAMESPACE_OPT_OUT.1)
    {
        return skip(SkipReason::NamespaceOptedOut, owner);
    }
    let Some(backend) = owner else {
        return skip(SkipReason::NoBackend, None);
    };
    let opted_out = |m: &BTreeMap<String, String>| m.get(POD_OPT_OUT).is_some_and(|v| v == "false");
    if opted_out(pod.labels()) || opted_out(pod.annotations()) {
        return skip(SkipReason::PodOptedOut, Some(backend));
    }
    if pod.annotations().contains_key(INJECTED) || has_sidecar(pod) {
        return skip(SkipReason::AlreadyInjected, Some(backend));
    }
    let Some(spec) = &pod.spec else {
        return skip(SkipReason::EngineContainerNotFound, Some(backend));
    };
    if spec.host_network == Some(true) {
        return skip(SkipReason::HostNetwork, Some(backend));
    }
    let Some((index, port)) = engine_container(&spec.containers, &backend.spec.port) else {
        return skip(SkipReason::EngineContainerNotFound, Some(backend));
    };
    let mut pod = pod.clone();
    patch(&mut pod, backend, index, port, defaults);
    Decision::Inject {
        backend: backend.name_any(),
        pod: Box::new(pod),
    }
}

fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .any(|c| c.name == SIDECAR_NAME)
    })
}

/// The container serving the backend's port, and that port.
fn engine_container(
    containers: &[Container],
    port: &IntOrString,
) -> Option<(usize, ContainerPort)> {
    containers.iter().enumerate().find_map(|(i, c)| {
        c.ports
            .iter()
            .flatten()
            .find(|p| match port {
                IntOrString::Int(n) => p.container_port == *n,
                IntOrString::String(name) => p.name.as_deref() == Some(name.as_str()),
            })
            .map(|p| (i, p.clone()))
    })
}

fn patch(
    pod: &mut Pod,
    backend: &LLMBackend,
    index: usize,
    port: ContainerPort,
    defaults: &Defaults,
) {
    let listen = u16::try_from(port.container_port).unwrap_or_default();
    let layout = ports::layout(listen);
    let hash = backend
        .status
        .as_ref()
        .and_then(|s| s.config_hash.clone())
        .unwrap_or_else(|| "pending".into());
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let probes = {
        let model = &mut spec.containers[index];
        // The gateway takes the port over, number and name.
        if let Some(ports) = model.ports.as_mut() {
            ports.retain(|p| p.container_port != port.container_port);
            if ports.is_empty() {
                model.ports = None;
            }
        }
        rebind::rebind(model, &backend.spec, layout.upstream);
        probes::rewrite(model, &port, layout)
    };
    let container = sidecar::container(backend, &port, layout, &probes, defaults);
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, container);
    spec.volumes
        .get_or_insert_with(Vec::new)
        .push(sidecar::volume(backend));
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(INJECTED.to_owned(), hash);
    annotations.insert(BACKEND.to_owned(), backend.name_any());
}

#[cfg(test)]
mod golden;
