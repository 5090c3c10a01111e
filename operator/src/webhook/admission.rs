//! One AdmissionReview in, one out: parse, look the pod's backends up in
//! the in-memory index (no API call), decide, answer with a JSON patch, an
//! admission unchanged (with a warning when a selected pod opted out), or a
//! refusal that names the reason and the fix.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::Store;

use crate::controller::resolve::IdpStores;
use crate::crd::LLMBackend;
use crate::inject::{Decision, Defaults, Reason, inject_pod};
use crate::metrics::Metrics;

/// What the webhook decides from: the shared caches.
#[derive(Clone)]
pub struct Index {
    pub backends: Store<LLMBackend>,
    pub idps: IdpStores,
}

/// What an admission led to, for metrics and Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Invalid,
    Injected {
        backend: String,
    },
    /// Admitted unchanged.
    Admitted {
        reason: Reason,
        selected_by: Option<String>,
        pod: String,
        namespace: String,
        dry_run: bool,
    },
    /// Refused: a selected pod that cannot be protected.
    Refused {
        reason: Reason,
        backend: String,
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
    let namespace = request.namespace.clone().unwrap_or_default();
    let (Operation::Create, Some(pod)) = (&request.operation, &request.object) else {
        return (
            response.into_review(),
            Outcome::Admitted {
                reason: Reason::NoBackend,
                selected_by: None,
                pod: request.name.clone(),
                namespace,
                dry_run: request.dry_run,
            },
        );
    };
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    let backends: Vec<Arc<LLMBackend>> = index.backends.state();
    match inject_pod(pod, &namespace, &backends, &index.idps, defaults) {
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
        Decision::Admit {
            reason,
            selected_by,
        } => {
            let mut response = response;
            if let (Some(backend), Reason::PodOptedOut) = (&selected_by, reason) {
                response.warnings = Some(vec![format!(
                    "attach: LLMBackend {backend} selects this pod, which opted out (spec.podOptOut: Allow): it runs WITHOUT attach-gateway, its model unprotected"
                )]);
            }
            (
                response.into_review(),
                Outcome::Admitted {
                    reason,
                    selected_by,
                    pod: pod_name,
                    namespace,
                    dry_run: request.dry_run,
                },
            )
        }
        Decision::Refuse {
            reason,
            backend,
            message,
        } => (
            response.deny(message).into_review(),
            Outcome::Refused {
                reason,
                backend,
                pod: pod_name,
                namespace,
                dry_run: request.dry_run,
            },
        ),
    }
}

impl Outcome {
    /// The result label: `invalid`, `injected`, `admitted` or `refused`.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Injected { .. } => "injected",
            Self::Admitted { .. } => "admitted",
            Self::Refused { .. } => "refused",
        }
    }

    /// Counts the outcome.
    pub fn record(&self, metrics: &Metrics) {
        let reason = match self {
            Self::Admitted { reason, .. } | Self::Refused { reason, .. } => reason.as_str(),
            Self::Invalid | Self::Injected { .. } => "",
        };
        metrics.admission(self.result(), reason);
    }
}

#[cfg(test)]
mod tests;
