//! The injection decision: a pure function from a pod and the LLMBackends
//! of its namespace to a patched pod, an admission unchanged, or a refusal
//! with the reason and the fix. The webhook serves it; the golden tests pin
//! it down. A pod a backend selects is never admitted unprotected, except
//! where the backend allows pods to opt out.
//!
//! | a backend selects the pod | the pod | result |
//! |---|---|---|
//! | no | any | admit: `no_backend` |
//! | yes | carries the gateway the webhook injected | admit: `already_injected` |
//! | yes | `attach.dev/inject: "false"`, backend `podOptOut: Allow` | admit: `pod_opted_out` (warning) |
//! | yes | `attach.dev/inject: "false"`, backend `podOptOut: Forbid` (default) | refuse: `opt_out_forbidden` |
//! | yes | `attach.dev/injected` annotation but no gateway | refuse: `forged_annotation` |
//! | yes | a container named `attach-gateway` not injected by the webhook | refuse: `foreign_gateway_container` |
//! | yes | the backend's ConfigMap name is taken by another object | refuse: `config_map_taken` |
//! | yes | `hostNetwork: true` | refuse: `host_network` |
//! | yes | no container declares `spec.port` | refuse: `engine_container_not_found` |
//! | yes | otherwise | inject |
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

use crate::controller::{conditions, owned, selection};
use crate::crd::LLMBackend;
use crate::crd::conditions::types::CONFIG_RENDERED;
use crate::crd::identity_provider::SecretKeyRef;
use crate::crd::llm_backend::IdentityProviderRef;
use crate::ports;

pub use sidecar::Defaults;

/// The pod label or annotation that asks not to be injected (value `"false"`).
pub const POD_OPT_OUT: &str = selection::POD_OPT_OUT;
/// The pod annotation naming the config hash the gateway was injected with.
pub const INJECTED: &str = "attach.dev/injected";
/// The pod annotation naming the backend.
pub const BACKEND: &str = selection::INJECTED_BY;
/// The injected container's name.
pub const SIDECAR_NAME: &str = "attach-gateway";

/// Where the exchange client Secret of an identity provider is: the
/// webhook mounts it into the pod (the operator never reads it).
pub trait ExchangeSecrets {
    /// The Secret key holding the exchange client secret of the IdP `r`,
    /// seen from `namespace`, when that IdP exchanges tokens.
    fn exchange_secret(&self, namespace: &str, r: &IdentityProviderRef) -> Option<SecretKeyRef>;
}

impl ExchangeSecrets for crate::controller::resolve::IdpStores {
    fn exchange_secret(&self, namespace: &str, r: &IdentityProviderRef) -> Option<SecretKeyRef> {
        crate::controller::resolve::IdpStores::exchange_secret(self, namespace, r)
    }
}

/// Why a pod is admitted unchanged or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No backend selects the pod.
    NoBackend,
    /// It carries the gateway the webhook injected (a reinvocation).
    AlreadyInjected,
    /// It opted out, and its backend allows that.
    PodOptedOut,
    /// It opted out, and its backend does not allow that.
    OptOutForbidden,
    /// It carries `attach.dev/injected` but no gateway.
    ForgedAnnotation,
    /// It has an `attach-gateway` container the webhook did not inject.
    ForeignGatewayContainer,
    /// The backend's ConfigMap name is taken by someone else's object.
    ConfigMapTaken,
    /// It uses the node's network.
    HostNetwork,
    /// No container declares the backend's port.
    EngineContainerNotFound,
}

impl Reason {
    /// The metric label and the name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoBackend => "no_backend",
            Self::AlreadyInjected => "already_injected",
            Self::PodOptedOut => "pod_opted_out",
            Self::OptOutForbidden => "opt_out_forbidden",
            Self::ForgedAnnotation => "forged_annotation",
            Self::ForeignGatewayContainer => "foreign_gateway_container",
            Self::ConfigMapTaken => "config_map_taken",
            Self::HostNetwork => "host_network",
            Self::EngineContainerNotFound => "engine_container_not_found",
        }
    }

    /// What is wrong and how to fix it, for a refusal of a pod that
    /// `backend` selects.
    pub fn message(self, backend: &LLMBackend) -> String {
        let name = backend.name_any();
        let why = match self {
            Self::OptOutForbidden => format!(
                "the pod asks not to be injected ({POD_OPT_OUT}: \"false\"), but the backend does not allow pods to opt out. Fix: remove {POD_OPT_OUT} from the pod, or change its labels so that spec.selector does not match; or set spec.podOptOut: Allow on the backend (its pods may then run unprotected)"
            ),
            Self::ForgedAnnotation => format!(
                "the pod carries the {INJECTED} annotation but no {SIDECAR_NAME} container (copied from an injected pod?). Fix: remove the {INJECTED} and {BACKEND} annotations; the webhook then injects the gateway"
            ),
            Self::ForeignGatewayContainer => format!(
                "the pod has a container named {SIDECAR_NAME} that the webhook did not inject. Fix: remove it (and any attach.dev/ annotations); the webhook injects the real one"
            ),
            Self::ConfigMapTaken => format!(
                "the backend cannot write its gateway config: ConfigMap {} is someone else's (see the backend's Ready condition). Fix: delete or rename that ConfigMap",
                owned::name(&name)
            ),
            Self::HostNetwork => "the pod uses hostNetwork: its model would listen on the node's network, where the gateway cannot stand in front of it. Fix: remove hostNetwork, or change the pod's labels so that spec.selector does not match".to_owned(),
            Self::EngineContainerNotFound => format!(
                "no container of the pod declares port {} (spec.port), so the gateway cannot take it over. Fix: list the model's port in its container's ports, with that number or name, or correct spec.port",
                match &backend.spec.port {
                    IntOrString::Int(n) => n.to_string(),
                    IntOrString::String(s) => format!("{s:?}"),
                }
            ),
            Self::NoBackend | Self::AlreadyInjected | Self::PodOptedOut => String::new(),
        };
        format!(
            "attach: LLMBackend {name} selects this pod, which would run without attach-gateway ({}): {why}",
            self.as_str()
        )
    }
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The pod as it must be created.
    Inject { backend: String, pod: Box<Pod> },
    /// Admit it unchanged; `selected_by` names the backend that selects it,
    /// if any.
    Admit {
        reason: Reason,
        selected_by: Option<String>,
    },
    /// Refuse it: `backend` selects it and it cannot be protected.
    Refuse {
        reason: Reason,
        backend: String,
        message: String,
    },
}

/// How a pod stands with respect to injection.
enum Injection {
    /// Nothing of ours on it.
    None,
    /// The gateway, annotations and config volume the webhook adds.
    Ours,
    Forged,
    Foreign,
}

fn injection(pod: &Pod) -> Injection {
    let annotations = pod.annotations();
    let marked = annotations.contains_key(INJECTED) || annotations.contains_key(BACKEND);
    let sidecar = sidecar_container(pod);
    match (marked, sidecar) {
        (false, None) => Injection::None,
        (true, None) => Injection::Forged,
        (false, Some(_)) => Injection::Foreign,
        (true, Some(container)) => {
            let backend = annotations
                .get(BACKEND)
                .map(String::as_str)
                .unwrap_or_default();
            if annotations.contains_key(INJECTED)
                && !backend.is_empty()
                && container.restart_policy.as_deref() == Some("Always")
                && sidecar::mounts_config_of(pod, container, backend)
            {
                Injection::Ours
            } else {
                Injection::Foreign
            }
        }
    }
}

fn sidecar_container(pod: &Pod) -> Option<&Container> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == SIDECAR_NAME)
}

/// Whether the backend reports that its ConfigMap name is taken.
fn config_map_taken(backend: &LLMBackend) -> bool {
    backend.status.as_ref().is_some_and(|s| {
        conditions::find(&s.conditions, CONFIG_RENDERED)
            .is_some_and(|c| c.status == "False" && c.reason == "Conflict")
    })
}

/// Decides for `pod` in `namespace`.
pub fn inject_pod(
    pod: &Pod,
    namespace: &str,
    backends: &[Arc<LLMBackend>],
    secrets: &dyn ExchangeSecrets,
    defaults: &Defaults,
) -> Decision {
    let Some(backend) = selection::owner_of(namespace, pod.labels(), backends) else {
        return Decision::Admit {
            reason: Reason::NoBackend,
            selected_by: None,
        };
    };
    let refuse = |reason: Reason| Decision::Refuse {
        reason,
        backend: backend.name_any(),
        message: reason.message(backend),
    };
    match injection(pod) {
        Injection::Ours => {
            return Decision::Admit {
                reason: Reason::AlreadyInjected,
                selected_by: Some(backend.name_any()),
            };
        }
        Injection::Forged => return refuse(Reason::ForgedAnnotation),
        Injection::Foreign => return refuse(Reason::ForeignGatewayContainer),
        Injection::None => {}
    }
    if selection::opted_out(pod.labels(), pod.annotations()) {
        if selection::allows_opt_out(backend) {
            return Decision::Admit {
                reason: Reason::PodOptedOut,
                selected_by: Some(backend.name_any()),
            };
        }
        return refuse(Reason::OptOutForbidden);
    }
    if config_map_taken(backend) {
        return refuse(Reason::ConfigMapTaken);
    }
    let Some(spec) = &pod.spec else {
        return refuse(Reason::EngineContainerNotFound);
    };
    if spec.host_network == Some(true) {
        return refuse(Reason::HostNetwork);
    }
    let Some((index, port)) = engine_container(&spec.containers, &backend.spec.port) else {
        return refuse(Reason::EngineContainerNotFound);
    };
    let mut pod = pod.clone();
    patch(&mut pod, backend, namespace, secrets, index, port, defaults);
    Decision::Inject {
        backend: backend.name_any(),
        pod: Box::new(pod),
    }
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
    namespace: &str,
    secrets: &dyn ExchangeSecrets,
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
    let exchange: Vec<Option<SecretKeyRef>> = backend
        .spec
        .identity_provider_refs
        .iter()
        .map(|r| secrets.exchange_secret(namespace, r))
        .collect();
    spec.volumes
        .get_or_insert_with(Vec::new)
        .push(sidecar::volume(backend, &exchange));
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(INJECTED.to_owned(), hash);
    annotations.insert(BACKEND.to_owned(), backend.name_any());
}

#[cfg(test)]
mod golden;
