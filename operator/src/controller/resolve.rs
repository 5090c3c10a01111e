//! Resolving what a backend refers to: its identity providers, from the
//! caches. Secrets are not resolved here: the injected pod mounts the ones a
//! backend names, and the operator never reads them. What cannot be
//! resolved becomes a [`Problem`] with a reason and a message a user can act
//! on.

use kube::runtime::reflector::{ObjectRef, Store};

use super::conditions::is_true;
use crate::crd::conditions::types::READY;
use crate::crd::identity_provider::{Preset, SecretKeyRef};
use crate::crd::llm_backend::{IdentityProviderKind, IdentityProviderRef};
use crate::crd::{ClusterIdentityProvider, IdentityProvider};
use crate::render::ResolvedIdp;

/// Something that keeps a backend from being `Ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// An earlier backend selects the same pods.
    Conflict { with: String },
    /// A referenced IdP does not exist.
    IdentityProviderNotFound { reference: String },
    /// A referenced IdP exists but its keys could not be loaded.
    IdentityProviderNotReady { reference: String },
    /// A `kubernetes` IdP is referenced without this backend's own
    /// audience: any workload token for the cluster's IdP would pass.
    AudienceRequired { reference: String },
    /// The rendered config fails the gateway's own validation.
    InvalidConfig { message: String },
    /// The backend's ConfigMap name is taken by an object the operator did
    /// not create for this backend: it is left alone, nothing is written.
    ConfigMapTaken { name: String, why: String },
}

impl Problem {
    /// The condition reason, in CamelCase.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Conflict { .. } | Self::ConfigMapTaken { .. } => "Conflict",
            Self::IdentityProviderNotFound { .. } => "IdentityProviderNotFound",
            Self::IdentityProviderNotReady { .. } => "IdentityProviderNotReady",
            Self::AudienceRequired { .. } => "AudienceRequired",
            Self::InvalidConfig { .. } => "InvalidConfig",
        }
    }

    /// What is wrong and what to do about it.
    pub fn message(&self) -> String {
        match self {
            Self::Conflict { with } => format!(
                "LLMBackend {with} already selects these pods; make the selectors disjoint or delete one"
            ),
            Self::IdentityProviderNotFound { reference } => {
                format!("{reference} does not exist; create it or fix spec.identityProviderRefs")
            }
            Self::IdentityProviderNotReady { reference } => format!(
                "{reference} is not Ready (see its status): tokens cannot be verified until its keys load"
            ),
            Self::InvalidConfig { message } => {
                format!("the rendered gateway config is invalid: {message}")
            }
            Self::AudienceRequired { reference } => format!(
                "{reference} accepts the cluster's ServiceAccount tokens: set this backend's own audience in spec.identityProviderRefs[].audiences, so that a token minted for another backend does not work here"
            ),
            Self::ConfigMapTaken { name, why } => format!(
                "ConfigMap {name} {why}; attach-operator leaves it alone and its pods are refused until it is deleted or renamed"
            ),
        }
    }

    /// Whether the backend must deny everything while this lasts. An IdP
    /// that exists but is not ready still renders: the gateway refuses
    /// tokens it cannot verify by itself.
    pub fn fails_closed(&self) -> bool {
        !matches!(self, Self::IdentityProviderNotReady { .. })
    }
}

fn ready(status: Option<&crate::crd::identity_provider::IdentityProviderStatus>) -> bool {
    status.is_some_and(|s| is_true(&s.conditions, READY))
}

/// Maps either IdP kind's spec (they share every field) to what rendering needs.
macro_rules! resolved_idp {
    ($idp:expr) => {{
        let spec = &$idp.spec;
        ResolvedIdp {
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            relayed_keys: $idp.status.as_ref().and_then(|s| s.relayed_keys.clone()),
            jwks_uri: spec.jwks_uri.clone(),
            preset: spec.preset,
            claims: spec.claims.clone(),
            algorithms: spec.algorithms.clone(),
            leeway_seconds: spec.leeway_seconds,
            jwks_refresh_interval: spec.jwks_refresh_interval.clone(),
            insecure: spec.insecure.unwrap_or(false),
            user_clients: spec.user_clients.clone(),
            token_exchange: spec.token_exchange.clone(),
        }
    }};
}

/// The IdP caches.
#[derive(Clone)]
pub struct IdpStores {
    pub namespaced: Store<IdentityProvider>,
    pub cluster: Store<ClusterIdentityProvider>,
}

impl IdpStores {
    /// The referenced IdPs, or the first problem with one of them (missing
    /// before not ready).
    pub fn resolve(
        &self,
        namespace: &str,
        refs: &[IdentityProviderRef],
    ) -> (Vec<ResolvedIdp>, Option<Problem>) {
        let mut resolved = Vec::with_capacity(refs.len());
        let mut not_ready = None;
        for r in refs {
            let (reference, found) = match r.kind {
                IdentityProviderKind::IdentityProvider => (
                    format!("IdentityProvider {namespace}/{}", r.name),
                    self.namespaced
                        .get(&ObjectRef::new(&r.name).within(namespace))
                        .map(|idp| (resolved_idp!(idp), ready(idp.status.as_ref()))),
                ),
                IdentityProviderKind::ClusterIdentityProvider => (
                    format!("ClusterIdentityProvider {}", r.name),
                    self.cluster
                        .get(&ObjectRef::new(&r.name))
                        .map(|idp| (resolved_idp!(idp), ready(idp.status.as_ref()))),
                ),
            };
            let Some((mut idp, is_ready)) = found else {
                return (
                    Vec::new(),
                    Some(Problem::IdentityProviderNotFound { reference }),
                );
            };
            if !r.audiences.is_empty() {
                idp.audiences.clone_from(&r.audiences);
            } else if idp.preset == Preset::Kubernetes {
                return (Vec::new(), Some(Problem::AudienceRequired { reference }));
            }
            if !is_ready && not_ready.is_none() {
                not_ready = Some(Problem::IdentityProviderNotReady { reference });
            }
            resolved.push(idp);
        }
        (resolved, not_ready)
    }
}

impl IdpStores {
    /// The exchange client Secret of the IdP `r` refers to, if it has token
    /// exchange. It is looked up in the backend's namespace whatever the
    /// IdP's kind: the pod mounts it from there.
    pub fn exchange_secret(
        &self,
        namespace: &str,
        r: &IdentityProviderRef,
    ) -> Option<SecretKeyRef> {
        let exchange = match r.kind {
            IdentityProviderKind::IdentityProvider => self
                .namespaced
                .get(&ObjectRef::new(&r.name).within(namespace))
                .and_then(|idp| idp.spec.token_exchange.clone()),
            IdentityProviderKind::ClusterIdentityProvider => self
                .cluster
                .get(&ObjectRef::new(&r.name))
                .and_then(|idp| idp.spec.token_exchange.clone()),
        };
        exchange.map(|e| e.client_secret_ref)
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector;
    use kube::runtime::watcher;
    use serde_json::json;

    use super::*;

    fn exchange(secret: &str) -> serde_json::Value {
        json!({"tokenEndpoint": "https://idp.example.com/token", "clientId": "gw",
               "clientSecretRef": {"name": secret, "key": "client-secret"}, "audience": "down"})
    }

    /// The webhook mounts an exchange client Secret from the pod's own
    /// namespace whatever the IdP's kind: beside a namespaced IdP, and, for
    /// a ClusterIdentityProvider, the Secret of that name in the backend's
    /// namespace (never the operator's).
    #[test]
    fn exchange_secrets_are_looked_up_in_the_backends_namespace() {
        let (namespaced, mut nw) = reflector::store::<IdentityProvider>();
        let (cluster, mut cw) = reflector::store::<ClusterIdentityProvider>();
        nw.apply_watcher_event(&watcher::Event::Apply(
            serde_json::from_value(json!({
                "apiVersion": "attach.dev/v1alpha1", "kind": "IdentityProvider",
                "metadata": {"name": "team-idp", "namespace": "ml"},
                "spec": {"issuer": "https://idp.example.com", "audiences": ["a"], "tokenExchange": exchange("team-exchange")},
            }))
            .unwrap(),
        ));
        cw.apply_watcher_event(&watcher::Event::Apply(
            serde_json::from_value(json!({
                "apiVersion": "attach.dev/v1alpha1", "kind": "ClusterIdentityProvider",
                "metadata": {"name": "corp"},
                "spec": {"issuer": "https://corp.example.com", "audiences": ["a"], "tokenExchange": exchange("corp-exchange")},
            }))
            .unwrap(),
        ));
        let stores = IdpStores {
            namespaced,
            cluster,
        };
        let reference = |kind, name: &str| IdentityProviderRef {
            kind,
            name: name.into(),
            audiences: Vec::new(),
        };
        let namespaced_ref = reference(IdentityProviderKind::IdentityProvider, "team-idp");
        assert_eq!(
            stores.exchange_secret("ml", &namespaced_ref).unwrap().name,
            "team-exchange"
        );
        assert!(
            stores.exchange_secret("web", &namespaced_ref).is_none(),
            "another namespace's IdP is not this backend's"
        );
        let cluster_ref = reference(IdentityProviderKind::ClusterIdentityProvider, "corp");
        assert_eq!(
            stores.exchange_secret("web", &cluster_ref).unwrap().name,
            "corp-exchange"
        );
        assert!(
            stores
                .exchange_secret(
                    "ml",
                    &reference(IdentityProviderKind::IdentityProvider, "nope")
                )
                .is_none()
        );
    }

    /// A backend's own audiences replace the IdP's; a `kubernetes` IdP
    /// (the cluster's ServiceAccount tokens) needs them, and the backend
    /// fails closed without: any workload's token would pass.
    #[test]
    fn a_backend_names_its_own_audience_and_must_for_the_cluster_idp() {
        let (namespaced, _) = reflector::store::<IdentityProvider>();
        let (cluster, mut cw) = reflector::store::<ClusterIdentityProvider>();
        for (name, preset) in [("corp", "keycloak"), ("cluster", "kubernetes")] {
            cw.apply_watcher_event(&watcher::Event::Apply(
                serde_json::from_value(json!({
                    "apiVersion": "attach.dev/v1alpha1", "kind": "ClusterIdentityProvider",
                    "metadata": {"name": name},
                    "spec": {"issuer": "https://idp.example.com", "audiences": ["shared"], "preset": preset},
                    "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KeysLoaded",
                        "message": "", "lastTransitionTime": "2026-12-01T00:00:00Z"}],
                        "relayedKeys": "{\"keys\":[]}"},
                }))
                .unwrap(),
            ));
        }
        let stores = IdpStores {
            namespaced,
            cluster,
        };
        let reference = |name: &str, audiences: &[&str]| IdentityProviderRef {
            kind: IdentityProviderKind::ClusterIdentityProvider,
            name: name.into(),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
        };
        let (idps, problem) = stores.resolve("ml", &[reference("corp", &[])]);
        assert_eq!(
            (idps[0].audiences.clone(), problem),
            (vec!["shared".into()], None)
        );
        let (idps, problem) = stores.resolve("ml", &[reference("corp", &["ml/chat"])]);
        assert_eq!(
            (idps[0].audiences.clone(), problem),
            (vec!["ml/chat".into()], None)
        );

        let (idps, problem) = stores.resolve("ml", &[reference("cluster", &["ml/embed"])]);
        assert_eq!(problem, None);
        assert_eq!(idps[0].audiences, ["ml/embed"]);
        assert_eq!(idps[0].relayed_keys.as_deref(), Some("{\"keys\":[]}"));
        let (idps, problem) = stores.resolve("ml", &[reference("cluster", &[])]);
        let problem = problem.unwrap();
        assert!(idps.is_empty());
        assert_eq!(problem.reason(), "AudienceRequired");
        assert!(problem.fails_closed());
        assert!(
            problem
                .message()
                .contains("identityProviderRefs[].audiences")
        );
    }
}
