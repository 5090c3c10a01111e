//! The objects a backend owns: a ConfigMap with the gateway config and a
//! Secret with the values the config names by file. Both carry the config
//! hash and a controller owner reference, so deleting the backend deletes
//! them (Kubernetes' garbage collector).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::crd::LLMBackend;
use crate::render::{CONFIG_KEY, Rendered};

/// The annotation holding the rendered config's hash.
pub const CONFIG_HASH: &str = "attach.dev/config-hash";
/// The label naming the backend an object belongs to.
pub const BACKEND_LABEL: &str = "attach.dev/backend";
/// `app.kubernetes.io/managed-by` on everything the operator writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "attach-operator");

/// The name of a backend's ConfigMap and Secret.
pub fn name(backend: &str) -> String {
    format!("{backend}-gateway")
}

/// The label selector of every owned object.
pub fn selector() -> String {
    format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

fn metadata(backend: &LLMBackend, hash: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name(&backend.name_any())),
        namespace: backend.namespace(),
        labels: Some(BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (BACKEND_LABEL.to_owned(), backend.name_any()),
        ])),
        annotations: Some(BTreeMap::from([(CONFIG_HASH.to_owned(), hash.to_owned())])),
        owner_references: backend.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// The ConfigMap holding the gateway config.
pub fn config_map(backend: &LLMBackend, rendered: &Rendered, hash: &str) -> ConfigMap {
    ConfigMap {
        metadata: metadata(backend, hash),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            rendered.config_yaml(),
        )])),
        ..ConfigMap::default()
    }
}

/// The Secret holding what the config names by file (empty when nothing is
/// secret, so the pod's volume always exists).
pub fn secret(backend: &LLMBackend, rendered: &Rendered, hash: &str) -> Secret {
    Secret {
        metadata: metadata(backend, hash),
        data: Some(
            rendered
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}
