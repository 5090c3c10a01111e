//! The namespace label the webhook's `namespaceSelector` matches:
//! `attach.dev/llm-backends: "true"` on every namespace that holds an
//! LLMBackend, and on no other, so that an outage of the webhook blocks pod
//! creation only where there are models to protect. The operator changes no
//! other field of a namespace (and the chart's ValidatingAdmissionPolicy
//! refuses it if it tried).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use super::backoff::Backoff;
use crate::crd::LLMBackend;

/// The label, and its value while the namespace holds a backend.
pub const LABEL: (&str, &str) = ("attach.dev/llm-backends", "true");

/// What the controller shares between reconciles.
pub struct Context {
    pub client: Client,
    pub backends: Store<LLMBackend>,
    pub backoff: Backoff<String>,
}

/// Why a reconcile failed; it is retried.
#[derive(Debug, thiserror::Error)]
#[error("labelling namespace {namespace}: {source}")]
pub struct Error {
    namespace: String,
    #[source]
    source: kube::Error,
}

/// The label change `namespace` needs: `Some(true)` to set it, `Some(false)`
/// to remove it, `None` when it is right.
pub fn change(
    namespace: &PartialObjectMeta<Namespace>,
    backends: &[Arc<LLMBackend>],
) -> Option<bool> {
    let name = namespace.name_any();
    let wanted = backends
        .iter()
        .any(|b| b.namespace().as_deref() == Some(name.as_str()));
    let labelled = namespace.labels().get(LABEL.0).map(String::as_str) == Some(LABEL.1);
    if namespace.metadata.deletion_timestamp.is_some() {
        return None;
    }
    (wanted != labelled).then_some(wanted)
}

/// Sets or removes the label of one namespace.
pub async fn reconcile(
    namespace: Arc<PartialObjectMeta<Namespace>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = namespace.name_any();
    if let Some(wanted) = change(&namespace, &ctx.backends.state()) {
        let value = if wanted {
            serde_json::Value::from(LABEL.1)
        } else {
            serde_json::Value::Null
        };
        // A merge patch of the one label: nothing else of the namespace is
        // sent, so nothing else can change.
        let patch = serde_json::json!({"metadata": {"labels": {LABEL.0: value}}});
        match Api::<Namespace>::all(ctx.client.clone())
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %name, labelled = wanted, "namespace label updated")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error {
                    namespace: name,
                    source,
                });
            }
        }
    }
    ctx.backoff.succeeded(&name);
    Ok(Action::await_change())
}

/// Retries with exponential backoff and jitter.
pub fn error_policy(
    namespace: Arc<PartialObjectMeta<Namespace>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let pause = ctx.backoff.failed(namespace.name_any());
    tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "namespace label reconcile failed");
    Action::requeue(pause)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str, labelled: bool) -> PartialObjectMeta<Namespace> {
        let labels = if labelled {
            serde_json::json!({LABEL.0: LABEL.1, "team": "ml"})
        } else {
            serde_json::json!({"team": "ml"})
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels},
        }))
        .unwrap()
    }

    fn backend(ns: &str) -> Arc<LLMBackend> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend",
                "metadata": {"name": "chat", "namespace": ns},
                "spec": {"selector": {"matchLabels": {"app": "x"}}, "engine": "ollama", "port": 11434,
                         "identityProviderRefs": [{"name": "corp"}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn namespaces_with_backends_are_labelled_and_only_those() {
        let backends = [backend("ml")];
        assert_eq!(change(&namespace("ml", false), &backends), Some(true));
        assert_eq!(change(&namespace("ml", true), &backends), None);
        assert_eq!(change(&namespace("web", true), &backends), Some(false));
        assert_eq!(change(&namespace("web", false), &backends), None);
        assert_eq!(
            change(&namespace("ml", true), &[]),
            Some(false),
            "the last backend went"
        );
    }
}
