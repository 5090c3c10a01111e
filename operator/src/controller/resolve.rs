//! Resolving what a backend refers to: identity providers (from the
//! controller's caches) and the Redis URL Secret (read from the API, never
//! cached, never logged). What cannot be resolved becomes a [`Problem`] with
//! a reason and a message a user can act on.

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};

use super::conditions::is_true;
use crate::crd::conditions::types::READY;
use crate::crd::llm_backend::{IdentityProviderKind, IdentityProviderRef, QuotaStoreType};
use crate::crd::{ClusterIdentityProvider, IdentityProvider, LLMBackendSpec};
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
    /// A referenced Secret does not exist (`field` refers to it).
    SecretNotFound { name: String, field: &'static str },
    /// The Secret exists without the key.
    SecretKeyNotFound {
        name: String,
        key: String,
        field: &'static str,
    },
    /// The rendered config fails the gateway's own validation.
    InvalidConfig { message: String },
}

impl Problem {
    /// The condition reason, in CamelCase.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Conflict { .. } => "Conflict",
            Self::IdentityProviderNotFound { .. } => "IdentityProviderNotFound",
            Self::IdentityProviderNotReady { .. } => "IdentityProviderNotReady",
            Self::SecretNotFound { .. } => "SecretNotFound",
            Self::SecretKeyNotFound { .. } => "SecretKeyNotFound",
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
            Self::SecretNotFound { name, field } => {
                format!("Secret {name} ({field}) does not exist; create it")
            }
            Self::SecretKeyNotFound { name, key, field } => {
                format!("Secret {name} has no key {key:?} ({field})")
            }
            Self::InvalidConfig { message } => {
                format!("the rendered gateway config is invalid: {message}")
            }
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
    ($spec:expr) => {{
        let spec = &$spec;
        ResolvedIdp {
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            jwks_uri: spec.jwks_uri.clone(),
            preset: spec.preset,
            claims: spec.claims.clone(),
            algorithms: spec.algorithms.clone(),
            leeway_seconds: spec.leeway_seconds,
            insecure: spec.insecure.unwrap_or(false),
            // The client secret is read later (an API call), by the caller.
            token_exchange: spec
                .token_exchange
                .clone()
                .map(|exchange| (exchange, String::new())),
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
                        .map(|idp| (resolved_idp!(idp.spec), ready(idp.status.as_ref()))),
                ),
                IdentityProviderKind::ClusterIdentityProvider => (
                    format!("ClusterIdentityProvider {}", r.name),
                    self.cluster
                        .get(&ObjectRef::new(&r.name))
                        .map(|idp| (resolved_idp!(idp.spec), ready(idp.status.as_ref()))),
                ),
            };
            let Some((idp, is_ready)) = found else {
                return (
                    Vec::new(),
                    Some(Problem::IdentityProviderNotFound { reference }),
                );
            };
            if !is_ready && not_ready.is_none() {
                not_ready = Some(Problem::IdentityProviderNotReady { reference });
            }
            resolved.push(idp);
        }
        (resolved, not_ready)
    }
}

/// Reads `key` of Secret `name` in `namespace`: `Ok(Err(problem))` when the
/// Secret or key is missing, `Err` when the API could not be asked.
pub async fn secret_value(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
    field: &'static str,
) -> Result<Result<String, Problem>, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = secrets.get_opt(name).await? else {
        return Ok(Err(Problem::SecretNotFound {
            name: format!("{namespace}/{name}"),
            field,
        }));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned());
    Ok(match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Problem::SecretKeyNotFound {
            name: format!("{namespace}/{name}"),
            key: key.to_owned(),
            field,
        }),
    })
}

/// The Redis URL when the quota store is Redis: `Ok(Err(problem))` when the
/// Secret or key is missing, `Err` when the API could not be asked.
pub async fn redis_url(
    client: &Client,
    namespace: &str,
    spec: &LLMBackendSpec,
) -> Result<Result<Option<String>, Problem>, kube::Error> {
    let Some(store) = &spec.quota_store else {
        return Ok(Ok(None));
    };
    let Some(secret_ref) = store
        .url_secret_ref
        .as_ref()
        .filter(|_| store.type_ == QuotaStoreType::Redis)
    else {
        return Ok(Ok(None));
    };
    Ok(secret_value(
        client,
        namespace,
        &secret_ref.name,
        &secret_ref.key,
        "spec.quotaStore.urlSecretRef",
    )
    .await?
    .map(Some))
}
