//! One AdmissionReview in, one out: parse, look the pod's backends and
//! namespace up in the in-memory index (no API call), decide, answer with a
//! JSON patch or, for a selected pod left alone, a warning.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::crd::LLMBackend;
use crate::inject::{Decision, Defaults, SkipReason, inject_pod};
use crate::metrics::Metrics;

/// What the webhook decides from: the reflectors' caches.
#[derive(Clone)]
pub struct Index {
    pub backends: Store<LLMBackend>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

impl Index {
    fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(name))
            .and_then(|ns| ns.metadata.labels.clone())
            .unwrap_or_default()
    }
}

/// What an admission led to, for metrics and Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Invalid,
    Injected {
        backend: String,
    },
    Skipped {
        reason: SkipReason,
        selected_by: Option<String>,
        pod: String,
        namespace: String,
        dry_run: bool,
    },
}

/// Answers a review body.
pub fn review(
    body: &[u8],
    index: &Index,
    defaults: &Defaults,
) -> (AdmissionReview<DynamicObject>, Outcome) {
    let invalid = |e: String| {
        (
            AdmissionResponse::invalid(e).into_review(),
            Outcome::Invalid,
        )
    };
    let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(e) => return invalid(format!("not an AdmissionReview of a Pod: {e}")),
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return invalid(e.to_string()),
    };
    let response = AdmissionResponse::from(&request);
    let (Operation::Create, Some(pod)) = (&request.operation, &request.object) else {
        return (
            response.into_review(),
            Outcome::Skipped {
                reason: SkipReason::NoBackend,
                selected_by: None,
                pod: request.name.clone(),
                namespace: request.namespace.clone().unwrap_or_default(),
                dry_run: request.dry_run,
            },
        );
    };
    let namespace = request.namespace.clone().unwrap_or_default();
    let labels = index.namespace_labels(&namespace);
    let backends: Vec<Arc<LLMBackend>> = index.backends.state();
    match inject_pod(pod, &namespace, &labels, &backends, defaults) {
        Decision::Inject {
            backend,
            pod: mutated,
        } => {
            let patch = match (serde_json::to_value(pod), serde_json::to_value(&*mutated)) {
                (Ok(before), Ok(after)) => json_patch::diff(&before, &after),
                _ => return invalid("the pod does not serialise".into()),
            };
            match response.with_patch(patch) {
                Ok(response) => (response.into_review(), Outcome::Injected { backend }),
                Err(e) => invalid(format!("cannot encode the patch: {e}")),
            }
        }
        Decision::Skip {
            reason,
            selected_by,
        } => {
            let mut response = response;
            if let Some(backend) = &selected_by
                && reason != SkipReason::AlreadyInjected
            {
                response.warnings = Some(vec![format!(
                    "attach: LLMBackend {backend} selects this pod, but attach-gateway was not injected: {}",
                    reason.as_str()
                )]);
            }
            let pod_name = pod
                .metadata
                .name
                .clone()
                .or_else(|| pod.metadata.generate_name.clone())
                .unwrap_or_default();
            (
                response.into_review(),
                Outcome::Skipped {
                    reason,
                    selected_by,
                    pod: pod_name,
                    namespace,
                    dry_run: request.dry_run,
                },
            )
        }
    }
}

impl Outcome {
    /// Counts the outcome.
    pub fn record(&self, metrics: &Metrics) {
        match self {
            Self::Invalid => metrics.admission("invalid", ""),
            Self::Injected { .. } => metrics.admission("injected", ""),
            Self::Skipped { reason, .. } => metrics.admission("skipped", reason.as_str()),
        }
    }
}

#[cfg(test)]
mod tests;
