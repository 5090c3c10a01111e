//! The object a backend owns: a ConfigMap with the gateway config, named
//! `<backend>-attach-gateway`, labelled, with a controller owner reference
//! (deleting the backend deletes it). The operator never adopts: an object
//! of that name that it did not create for this backend is left untouched
//! and reported. It writes only when what it would write differs from the
//! cached copy, and then only over the exact version it inspected.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::LLMBackend;
use crate::render::{CONFIG_KEY, Rendered};

/// The annotation holding the rendered config's hash.
pub const CONFIG_HASH: &str = "attach.dev/config-hash";
/// The label naming the backend an object belongs to.
pub const BACKEND_LABEL: &str = "attach.dev/backend";
/// `app.kubernetes.io/managed-by` on everything the operator writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "attach-operator");
/// What every owned object's name ends with.
pub const SUFFIX: &str = "-attach-gateway";

/// The name of a backend's ConfigMap: `<backend>-attach-gateway`, with the
/// backend's name cut and a hash of it added when the whole would pass the
/// 253 characters an object name may have.
pub fn name(backend: &str) -> String {
    const MAX: usize = 253;
    if backend.len() + SUFFIX.len() <= MAX {
        return format!("{backend}{SUFFIX}");
    }
    let hash: String = Sha256::digest(backend.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = MAX - SUFFIX.len() - hash.len() - 1;
    let cut: String = backend.chars().take(keep).collect();
    format!("{}-{hash}{SUFFIX}", cut.trim_end_matches(['-', '.']))
}

/// The label selector of every owned object.
pub fn selector() -> String {
    format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

/// The ConfigMap holding the gateway config.
pub fn config_map(backend: &LLMBackend, rendered: &Rendered, hash: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name(&backend.name_any())),
            namespace: backend.namespace(),
            labels: Some(labels(backend)),
            annotations: Some(BTreeMap::from([(CONFIG_HASH.to_owned(), hash.to_owned())])),
            owner_references: backend.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            rendered.config_yaml(),
        )])),
        ..ConfigMap::default()
    }
}

fn labels(backend: &LLMBackend) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (BACKEND_LABEL.to_owned(), backend.name_any()),
    ])
}

/// Whose an existing object is, as far as this backend is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Created by the operator for this backend (label and controller
    /// owner reference with its uid).
    Ours,
    /// Anyone else's; the reason, for the status message.
    Theirs(&'static str),
}

/// Judges `object` for `backend`.
pub fn ownership(object: &ObjectMeta, backend: &LLMBackend) -> Ownership {
    let labelled = object
        .labels
        .as_ref()
        .is_some_and(|l| l.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1));
    if !labelled {
        return Ownership::Theirs("exists and was not created by attach-operator");
    }
    let controller = object
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match (controller, backend.uid()) {
        (Some(owner), Some(uid)) if owner.uid == uid && owner.kind == LLMBackend::kind(&()) => {
            Ownership::Ours
        }
        _ => Ownership::Theirs(
            "belongs to another owner (an earlier LLMBackend of this name, not yet garbage-collected, or someone else)",
        ),
    }
}

/// Whether `current` already says what `desired` says.
fn same(current: &ConfigMap, desired: &ConfigMap) -> bool {
    current.data == desired.data
        && current
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONFIG_HASH))
            == desired
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CONFIG_HASH))
        && desired
            .metadata
            .labels
            .iter()
            .flatten()
            .all(|(k, v)| current.labels().get(k) == Some(v))
}

/// What writing the owned ConfigMap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The cached copy already says it: no API call.
    Unchanged,
    Created,
    Replaced,
    /// The name is taken; nothing was written.
    Taken {
        name: String,
        why: &'static str,
    },
}

/// Makes the backend's ConfigMap say `desired`: created when absent,
/// replaced (over the cached version) when ours and different, left alone
/// when not ours.
pub async fn apply(
    client: &Client,
    cache: &Store<ConfigMap>,
    backend: &LLMBackend,
    desired: ConfigMap,
) -> Result<Written, kube::Error> {
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let current = match cache.get(&ObjectRef::new(&name).within(&namespace)) {
        Some(cached) => (*cached).clone(),
        None => match api.create(&PostParams::default(), &desired).await {
            Ok(_) => return Ok(Written::Created),
            // Not in the cache (which holds only labelled objects): someone
            // else's, or ours and the cache is behind.
            Err(kube::Error::Api(e)) if e.code == 409 => api.get(&name).await?,
            Err(e) => return Err(e),
        },
    };
    if let Ownership::Theirs(why) = ownership(&current.metadata, backend) {
        return Ok(Written::Taken { name, why });
    }
    if same(&current, &desired) {
        return Ok(Written::Unchanged);
    }
    let mut replacement = desired;
    replacement.metadata.resource_version = current.resource_version();
    // A 409 here means it changed since it was inspected: retried.
    api.replace(&name, &PostParams::default(), &replacement)
        .await?;
    Ok(Written::Replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(uid: &str) -> LLMBackend {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend",
            "metadata": {"name": "shop", "namespace": "ml", "uid": uid},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "engine": "ollama", "port": 11434,
                     "identityProviderRefs": [{"name": "corp"}]},
        }))
        .unwrap()
    }

    #[test]
    fn names_are_unlikely_and_never_too_long() {
        assert_eq!(name("shop"), "shop-attach-gateway");
        let long = "a".repeat(253);
        let cut = name(&long);
        assert_eq!(cut.len(), 253, "{cut}");
        assert!(cut.ends_with(SUFFIX));
        assert_ne!(
            cut,
            name(&format!("{}b", "a".repeat(252))),
            "the hash keeps them apart"
        );
    }

    #[test]
    fn only_what_the_operator_created_for_this_backend_is_ours() {
        let shop = backend("uid-1");
        let rendered = crate::render::render_deny_all(&shop.spec, crate::ports::layout(11434));
        let ours = config_map(&shop, &rendered, "h");
        assert_eq!(ownership(&ours.metadata, &shop), Ownership::Ours);
        // Another team's ConfigMap of the same name.
        let mut theirs = ConfigMap::default();
        theirs.metadata.name = Some(name("shop"));
        assert!(matches!(
            ownership(&theirs.metadata, &shop),
            Ownership::Theirs(_)
        ));
        // Our label copied onto it is not enough: the owner must be this backend.
        theirs.metadata.labels = ours.metadata.labels.clone();
        assert!(matches!(
            ownership(&theirs.metadata, &shop),
            Ownership::Theirs(_)
        ));
        // Ours, but of an earlier backend of the same name.
        assert!(matches!(
            ownership(&ours.metadata, &backend("uid-2")),
            Ownership::Theirs(_)
        ));
    }
}
