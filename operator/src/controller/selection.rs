//! Which pods a backend selects, and which backend wins when two select the
//! same pods: the one created first (then the smaller name), so the earlier
//! backend keeps working and the later one reports `Conflict`. The webhook
//! applies the same order.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;

use crate::crd::LLMBackend;
use crate::crd::llm_backend::PodSelector;

/// The pod annotation the webhook sets to the backend it injected.
pub const INJECTED_BY: &str = "attach.dev/backend";
/// The pod label or annotation that asks not to be injected (value
/// `"false"`); honoured only where the backend allows it.
pub const POD_OPT_OUT: &str = "attach.dev/inject";

/// Whether a pod with these labels and annotations asks not to be injected.
pub fn opted_out(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> bool {
    let no = |m: &BTreeMap<String, String>| m.get(POD_OPT_OUT).is_some_and(|v| v == "false");
    no(labels) || no(annotations)
}

/// Whether the backend lets its pods opt out.
pub fn allows_opt_out(backend: &LLMBackend) -> bool {
    backend.spec.pod_opt_out == Some(crate::crd::llm_backend::PodOptOut::Allow)
}

/// Whether `labels` carry every label of `selector` (an empty selector
/// selects nothing: the API refuses it, and nothing is safer).
pub fn selects(selector: &PodSelector, labels: &BTreeMap<String, String>) -> bool {
    !selector.match_labels.is_empty()
        && selector
            .match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether some pod could be selected by both: no label they share is
/// required to have two different values.
pub fn overlap(a: &PodSelector, b: &PodSelector) -> bool {
    !a.match_labels.is_empty()
        && !b.match_labels.is_empty()
        && a.match_labels
            .iter()
            .all(|(k, v)| b.match_labels.get(k).is_none_or(|w| w == v))
}

/// The order between backends: creation time, then name.
fn rank(b: &LLMBackend) -> (Option<k8s_openapi::jiff::Timestamp>, String) {
    (b.creation_timestamp().map(|t| t.0), b.name_any())
}

/// The earliest other backend in the same namespace whose selector overlaps
/// `backend`'s and that comes before it, if any.
pub fn conflict<'a>(backend: &LLMBackend, all: &'a [Arc<LLMBackend>]) -> Option<&'a LLMBackend> {
    let me = rank(backend);
    all.iter()
        .map(AsRef::as_ref)
        .filter(|other| {
            other.namespace() == backend.namespace()
                && other.name_any() != backend.name_any()
                && overlap(&other.spec.selector, &backend.spec.selector)
                && rank(other) < me
        })
        .min_by_key(|other| rank(other))
}

/// Other backends in the namespace whose selectors overlap `backend`'s: a
/// change to one may end or start their conflict.
pub fn overlapping<'a>(
    backend: &'a LLMBackend,
    all: &'a [Arc<LLMBackend>],
) -> impl Iterator<Item = &'a Arc<LLMBackend>> + 'a {
    all.iter().filter(move |other| {
        other.namespace() == backend.namespace()
            && other.name_any() != backend.name_any()
            && overlap(&other.spec.selector, &backend.spec.selector)
    })
}

/// The backend a pod belongs to: the earliest that selects it.
pub fn owner_of<'a>(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    all: &'a [Arc<LLMBackend>],
) -> Option<&'a LLMBackend> {
    all.iter()
        .map(AsRef::as_ref)
        .filter(|b| {
            b.namespace().as_deref() == Some(namespace) && selects(&b.spec.selector, labels)
        })
        .min_by_key(|b| rank(b))
}

/// What the pods a backend selects look like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodCounts {
    /// Pods the selector matches.
    pub matched: u32,
    /// Of those, the ones carrying this backend's gateway.
    pub injected: u32,
    /// Matched pods running without any gateway that are not opted out
    /// with the backend's leave (created before it, or while injection was
    /// off): their names, sorted.
    pub unprotected: Vec<String>,
}

/// Counts the pods `backend` selects.
pub fn pod_counts(backend: &LLMBackend, pods: &[Arc<PartialObjectMeta<Pod>>]) -> PodCounts {
    let name = backend.name_any();
    let mut counts = PodCounts::default();
    for pod in pods {
        if pod.namespace() != backend.namespace()
            || !selects(&backend.spec.selector, pod.labels())
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        counts.matched = counts.matched.saturating_add(1);
        match pod.annotations().get(INJECTED_BY) {
            Some(by) if *by == name => counts.injected = counts.injected.saturating_add(1),
            // Injected for an overlapping backend created earlier.
            Some(_) => {}
            None if allows_opt_out(backend) && opted_out(pod.labels(), pod.annotations()) => {}
            None => counts.unprotected.push(pod.name_any()),
        }
    }
    counts.unprotected.sort();
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(pairs: &[(&str, &str)]) -> PodSelector {
        PodSelector {
            match_labels: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    pub(crate) fn backend(
        ns: &str,
        name: &str,
        created: i64,
        labels: &[(&str, &str)],
    ) -> Arc<LLMBackend> {
        let mut b: LLMBackend = serde_json::from_value(serde_json::json!({
            "apiVersion": "attach.dev/v1alpha1", "kind": "LLMBackend",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": {}}, "engine": "ollama", "port": 11434,
                     "identityProviderRefs": [{"name": "corp"}]},
        }))
        .unwrap();
        b.spec.selector = selector(labels);
        b.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        Arc::new(b)
    }

    #[test]
    fn selectors_overlap_unless_a_shared_label_differs() {
        let ollama = selector(&[("app", "ollama")]);
        assert!(overlap(
            &ollama,
            &selector(&[("app", "ollama"), ("tier", "gpu")])
        ));
        assert!(
            overlap(&ollama, &selector(&[("team", "ml")])),
            "a pod may carry both"
        );
        assert!(!overlap(&ollama, &selector(&[("app", "vllm")])));
        assert!(!overlap(&ollama, &selector(&[])), "empty selects nothing");
        let labels: BTreeMap<_, _> = [("app".to_owned(), "ollama".to_owned())].into();
        assert!(selects(&ollama, &labels));
        assert!(!selects(
            &selector(&[("app", "ollama"), ("tier", "gpu")]),
            &labels
        ));
        assert!(!selects(&selector(&[]), &labels));
    }

    #[test]
    fn the_later_backend_conflicts_and_the_earlier_keeps_working() {
        let first = backend("ml", "zeta", 100, &[("app", "ollama")]);
        let second = backend("ml", "alpha", 200, &[("app", "ollama")]);
        let same_second = backend("ml", "beta", 200, &[("app", "ollama")]);
        let elsewhere = backend("other", "early", 1, &[("app", "ollama")]);
        let disjoint = backend("ml", "vllm", 1, &[("app", "vllm")]);
        let all = vec![
            first.clone(),
            second.clone(),
            same_second.clone(),
            elsewhere,
            disjoint,
        ];
        assert!(conflict(&first, &all).is_none(), "first keeps working");
        assert_eq!(conflict(&second, &all).unwrap().name_any(), "zeta");
        assert_eq!(
            conflict(&same_second, &all).unwrap().name_any(),
            "zeta",
            "the earliest wins, not just any earlier one"
        );
        let names: Vec<_> = overlapping(&first, &all).map(|b| b.name_any()).collect();
        assert_eq!(names, ["alpha", "beta"]);
        let labels: BTreeMap<_, _> = [("app".to_owned(), "ollama".to_owned())].into();
        assert_eq!(owner_of("ml", &labels, &all).unwrap().name_any(), "zeta");
        assert!(owner_of("nowhere", &labels, &all).is_none());
    }
}
