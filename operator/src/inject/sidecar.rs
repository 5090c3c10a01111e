//! The injected gateway: a native sidecar (an init container with
//! `restartPolicy: Always`, so it starts before the model and stops after
//! it), locked down, reading the backend's rendered ConfigMap, and the
//! Secrets the backend names (the Redis URL, the API keys' signing key,
//! exchange client secrets) straight from the user's Secrets, from one
//! read-only projected volume. The kubelet keeps the files current; the
//! operator never reads the Secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, EnvVar, HTTPGetAction, KeyToPath,
    Pod, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretProjection,
    SecurityContext, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use attach_sidecar::app_probe::{AppProbes, ENV as APP_PROBES_ENV};

use super::SIDECAR_NAME;
use crate::controller::owned;
use crate::crd::LLMBackend;
use crate::crd::identity_provider::SecretKeyRef;
use crate::crd::llm_backend::{GatewayResources, QuotaStoreType};
use crate::render::{API_KEYS_SIGNING_KEY, CONFIG_KEY, Ports, REDIS_URL_KEY, exchange_secret_key};

/// Where the projected volume is mounted (`config/`, `secrets/` inside).
const MOUNT: &str = "/etc/attach";
const VOLUME: &str = "attach-gateway";

/// What the operator injects when the backend does not say.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub image: String,
    pub resources: ResourceRequirements,
    pub log_level: String,
}

impl Default for Defaults {
    fn default() -> Self {
        let quantities = |cpu: &str, memory: &str| {
            BTreeMap::from([
                ("cpu".to_owned(), Quantity(cpu.to_owned())),
                ("memory".to_owned(), Quantity(memory.to_owned())),
            ])
        };
        Self {
            image: format!(
                "ghcr.io/attach-dev/attach-gateway:{}",
                env!("CARGO_PKG_VERSION")
            ),
            resources: ResourceRequirements {
                requests: Some(quantities("50m", "32Mi")),
                limits: Some(quantities("1", "128Mi")),
                ..ResourceRequirements::default()
            },
            log_level: "info".into(),
        }
    }
}

/// The gateway container for `backend`, taking over `port`.
pub fn container(
    backend: &LLMBackend,
    port: &ContainerPort,
    layout: Ports,
    probes: &AppProbes,
    defaults: &Defaults,
) -> Container {
    let overrides = backend.spec.sidecar.clone().unwrap_or_default();
    let admin_probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(layout.admin)),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    };
    let env = (!probes.0.is_empty()).then(|| {
        vec![EnvVar {
            name: APP_PROBES_ENV.to_owned(),
            value: serde_json::to_string(probes).ok(),
            value_from: None,
        }]
    });
    Container {
        name: SIDECAR_NAME.to_owned(),
        image: Some(overrides.image.unwrap_or_else(|| defaults.image.clone())),
        args: Some(vec![
            "--config".into(),
            format!("{MOUNT}/config/{CONFIG_KEY}"),
            "--port".into(),
            layout.listen.to_string(),
            "--admin-port".into(),
            layout.admin.to_string(),
            "--upstream".into(),
            format!("http://127.0.0.1:{}", layout.upstream),
            "--log-level".into(),
            overrides
                .log_level
                .unwrap_or_else(|| defaults.log_level.clone()),
        ]),
        env,
        ports: Some(vec![
            ContainerPort {
                // The model's port, name included: Services and
                // NetworkPolicies that named it now reach the gateway.
                name: port.name.clone(),
                container_port: port.container_port,
                protocol: port.protocol.clone(),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("attach-admin".into()),
                container_port: i32::from(layout.admin),
                ..ContainerPort::default()
            },
        ]),
        restart_policy: Some("Always".into()),
        resources: Some(
            overrides
                .resources
                .map_or_else(|| defaults.resources.clone(), requirements),
        ),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: VOLUME.into(),
            mount_path: MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        // The model starts once the gateway answers; ready once keys load.
        startup_probe: Some(Probe {
            failure_threshold: Some(30),
            period_seconds: Some(1),
            ..admin_probe("/healthz")
        }),
        liveness_probe: Some(admin_probe("/healthz")),
        readiness_probe: Some(admin_probe("/readyz")),
        ..Container::default()
    }
}

/// The container's resources from the backend's overrides.
fn requirements(resources: GatewayResources) -> ResourceRequirements {
    ResourceRequirements {
        limits: resources.limits,
        requests: resources.requests,
        ..ResourceRequirements::default()
    }
}

/// The projected volume: the backend's ConfigMap, and the Secrets it names.
/// `exchange[i]` is the exchange client Secret of the backend's `i`-th
/// identity provider, if it exchanges tokens. Every Secret is required: a
/// missing Secret or key keeps the pod from starting (the kubelet reports
/// it), so the gateway never runs with a config it cannot load.
pub fn volume(backend: &LLMBackend, exchange: &[Option<SecretKeyRef>]) -> Volume {
    let name = owned::name(&backend.name_any());
    let mut sources = vec![VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name,
            items: Some(vec![KeyToPath {
                key: CONFIG_KEY.into(),
                path: format!("config/{CONFIG_KEY}"),
                mode: None,
            }]),
            optional: Some(false),
        }),
        ..VolumeProjection::default()
    }];
    let secret = |secret: &SecretKeyRef, file: String| VolumeProjection {
        secret: Some(SecretProjection {
            name: secret.name.clone(),
            items: Some(vec![KeyToPath {
                key: secret.key.clone(),
                path: format!("secrets/{file}"),
                mode: None,
            }]),
            optional: Some(false),
        }),
        ..VolumeProjection::default()
    };
    if let Some(store) = &backend.spec.quota_store
        && store.type_ == QuotaStoreType::Redis
        && let Some(url) = &store.url_secret_ref
    {
        sources.push(secret(url, REDIS_URL_KEY.to_owned()));
    }
    // Only while keys are enabled, as the config names the file only then:
    // a disabled section never keeps the pod from starting.
    if let Some(key) = backend
        .spec
        .api_keys
        .as_ref()
        .and_then(|keys| keys.signing_key())
    {
        sources.push(secret(key, API_KEYS_SIGNING_KEY.to_owned()));
    }
    for (i, client_secret) in exchange.iter().enumerate() {
        if let Some(client_secret) = client_secret {
            sources.push(secret(client_secret, exchange_secret_key(i)));
        }
    }
    Volume {
        name: VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            // World-readable inside the one container that mounts it: the gateway
            // runs as a non-root user the files are not owned by.
            default_mode: Some(0o444),
        }),
        ..Volume::default()
    }
}

/// Whether `container` (named like the gateway) is the one the webhook
/// injects for `backend`: it mounts the projected volume of that backend's
/// ConfigMap at the config path.
pub fn mounts_config_of(pod: &Pod, container: &Container, backend: &str) -> bool {
    let mounted = container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == VOLUME && m.mount_path == MOUNT);
    let config_map = owned::name(backend);
    let volume = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .find(|v| v.name == VOLUME)
        .and_then(|v| v.projected.as_ref())
        .is_some_and(|p| {
            p.sources
                .iter()
                .flatten()
                .any(|s| s.config_map.as_ref().is_some_and(|c| c.name == config_map))
        });
    mounted && volume
}
