//! The LLMBackend controller: resolve what a backend refers to, render the
//! gateway config (deny-all while something is missing or in conflict),
//! write it to the owned ConfigMap and Secret, and report status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};

use super::conditions::{Verdict, find, same};
use super::identity_provider::FIELD_MANAGER;
use super::owned;
use super::resolve::{IdpStores, Problem, redis_url, secret_value};
use super::selection;
use crate::crd::LLMBackend;
use crate::crd::conditions::types::{CONFIG_RENDERED, IDENTITY_PROVIDERS_RESOLVED, READY};
use crate::crd::llm_backend::{IdentityProviderKind, LLMBackendStatus};
use crate::ports;
use crate::render::{render, render_deny_all};

/// A periodic check on top of the watches, in case an event was missed.
const RESYNC: Duration = Duration::from_secs(600);

/// Why a reconcile failed; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the LLMBackend has no namespace")]
    NoNamespace,
    #[error("the caches stopped before they were filled")]
    CachesGone,
    #[error("reading Secret {name}: {source}")]
    ReadSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// What the LLMBackend controller shares between reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// The controller's own cache of backends (for conflicts).
    pub backends: Store<LLMBackend>,
    pub idps: IdpStores,
    /// Pod metadata, for matched and injected counts.
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// Where the Secrets of ClusterIdentityProviders live.
    pub operator_namespace: String,
}

impl Context {
    /// Waits until every cache has listed once: deciding on a partial cache
    /// could flip a working backend to deny-all.
    async fn caches_ready(&self) -> Result<(), Error> {
        let ready = futures::future::try_join4(
            self.backends.wait_until_ready(),
            self.idps.namespaced.wait_until_ready(),
            self.idps.cluster.wait_until_ready(),
            self.pods.wait_until_ready(),
        );
        ready.await.map(|_| ()).map_err(|_| Error::CachesGone)
    }
}

/// What the reconcile decided.
struct Decision {
    problems: Vec<Problem>,
    idp_problem: Option<Problem>,
    deny_all: bool,
    rendered: crate::render::Rendered,
}

async fn decide(backend: &LLMBackend, ns: &str, ctx: &Context) -> Result<Decision, Error> {
    let spec = &backend.spec;
    let ports = ports::for_spec(spec);
    let mut problems = Vec::new();
    let all = ctx.backends.state();
    if let Some(earlier) = selection::conflict(backend, &all) {
        problems.push(Problem::Conflict {
            with: earlier.name_any(),
        });
    }
    let (mut idps, idp_problem) = ctx.idps.resolve(ns, &spec.identity_provider_refs);
    problems.extend(idp_problem.clone());
    // Exchange client secrets: beside a namespaced IdP, or in the operator's
    // namespace for a ClusterIdentityProvider.
    for (idp, r) in idps.iter_mut().zip(&spec.identity_provider_refs) {
        let Some((exchange, secret)) = &mut idp.token_exchange else {
            continue;
        };
        let namespace = match r.kind {
            IdentityProviderKind::IdentityProvider => ns,
            IdentityProviderKind::ClusterIdentityProvider => ctx.operator_namespace.as_str(),
        };
        let found = secret_value(
            &ctx.client,
            namespace,
            &exchange.client_secret_ref.name,
            &exchange.client_secret_ref.key,
            "the identity provider's spec.tokenExchange.clientSecretRef",
        )
        .await
        .map_err(|source| Error::ReadSecret {
            name: exchange.client_secret_ref.name.clone(),
            source,
        })?;
        match found {
            Ok(value) => *secret = value,
            Err(problem) => problems.push(problem),
        }
    }
    let url = match redis_url(&ctx.client, ns, spec)
        .await
        .map_err(|source| Error::ReadSecret {
            name: spec
                .quota_store
                .as_ref()
                .and_then(|s| s.url_secret_ref.as_ref())
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            source,
        })? {
        Ok(url) => url,
        Err(problem) => {
            problems.push(problem);
            None
        }
    };
    let deny_all = problems.iter().any(Problem::fails_closed);
    let rendered = if deny_all {
        render_deny_all(spec, ports)
    } else {
        let rendered = render(spec, &idps, url, ports);
        match rendered.config.validate() {
            Ok(()) => rendered,
            Err(e) => {
                problems.push(Problem::InvalidConfig {
                    message: e.to_string(),
                });
                return Ok(Decision {
                    problems,
                    idp_problem,
                    deny_all: true,
                    rendered: render_deny_all(spec, ports),
                });
            }
        }
    };
    Ok(Decision {
        problems,
        idp_problem,
        deny_all,
        rendered,
    })
}

/// Reconciles one backend.
pub async fn reconcile(backend: Arc<LLMBackend>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches_ready().await?;
    let ns = backend.namespace().ok_or(Error::NoNamespace)?;
    let name = backend.name_any();
    let decision = decide(&backend, &ns, &ctx).await?;
    let hash = decision.rendered.hash();
    let owned_name = owned::name(&name);
    let apply = PatchParams::apply(FIELD_MANAGER).force();

    let secret = owned::secret(&backend, &decision.rendered, &hash);
    Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .patch(&owned_name, &apply, &Patch::Apply(&secret))
        .await
        .map_err(|source| Error::Write {
            what: format!("Secret {owned_name}"),
            source,
        })?;
    let config_map = owned::config_map(&backend, &decision.rendered, &hash);
    Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
        .patch(&owned_name, &apply, &Patch::Apply(&config_map))
        .await
        .map_err(|source| Error::Write {
            what: format!("ConfigMap {owned_name}"),
            source,
        })?;

    let verdicts = verdicts(&decision, &owned_name, &hash);
    let previous = backend.status.clone().unwrap_or_default();
    let generation = backend.meta().generation;
    let now = Time(Timestamp::now());
    let (matched, injected) = selection::pod_counts(&backend, &ctx.pods.state());
    let status = LLMBackendStatus {
        conditions: verdicts
            .iter()
            .map(|v| v.to_condition(&previous.conditions, generation, &now))
            .collect(),
        observed_generation: generation,
        config_hash: Some(hash),
        matched_pods: Some(matched),
        injected_pods: Some(injected),
    };
    let unchanged = same(&status.conditions, &previous.conditions)
        && status.observed_generation == previous.observed_generation
        && status.config_hash == previous.config_hash
        && status.matched_pods == previous.matched_pods
        && status.injected_pods == previous.injected_pods;
    if !unchanged {
        let patch = serde_json::json!({
            "apiVersion": LLMBackend::api_version(&()),
            "kind": LLMBackend::kind(&()),
            "status": status,
        });
        Api::<LLMBackend>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &apply, &Patch::Apply(&patch))
            .await
            .map_err(|source| Error::Write {
                what: format!("LLMBackend {name} status"),
                source,
            })?;
    }
    publish_transition(&backend, &previous.conditions, &verdicts[0], &ctx.recorder).await;
    Ok(Action::requeue(RESYNC))
}

/// `Ready`, `IdentityProvidersResolved`, `ConfigRendered`, in that order.
fn verdicts(decision: &Decision, owned_name: &str, hash: &str) -> [Verdict; 3] {
    let ready = match decision.problems.first() {
        None => Verdict::ok(
            READY,
            "Ready",
            format!("attach-gateway config {hash} is in ConfigMap {owned_name}"),
        ),
        Some(problem) => Verdict::failed(READY, problem.reason(), problem.message()),
    };
    let resolved = match &decision.idp_problem {
        None => Verdict::ok(
            IDENTITY_PROVIDERS_RESOLVED,
            "Resolved",
            "every referenced identity provider exists and is ready",
        ),
        Some(problem) => Verdict::failed(
            IDENTITY_PROVIDERS_RESOLVED,
            problem.reason(),
            problem.message(),
        ),
    };
    let rendered = if decision.deny_all {
        let why = decision
            .problems
            .iter()
            .find(|p| p.fails_closed())
            .map(Problem::message)
            .unwrap_or_default();
        Verdict::failed(
            CONFIG_RENDERED,
            "DenyAll",
            format!("ConfigMap {owned_name} holds a deny-all config until this is fixed: {why}"),
        )
    } else {
        Verdict::ok(
            CONFIG_RENDERED,
            "Rendered",
            format!("config {hash} written to ConfigMap {owned_name}"),
        )
    };
    [ready, resolved, rendered]
}

/// A Warning when the backend stops being (or starts out not) ready, a
/// Normal one when it recovers.
async fn publish_transition(
    backend: &LLMBackend,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    ready: &Verdict,
    recorder: &Recorder,
) {
    let before = find(previous, READY);
    let event = match (before.map(|c| c.status.as_str()), ready.ok) {
        (Some("False"), true) => Event {
            type_: EventType::Normal,
            reason: "Ready".into(),
            note: Some(ready.message.clone()),
            action: "Render".into(),
            secondary: None,
        },
        (Some("True") | None, false) => Event {
            type_: EventType::Warning,
            reason: ready.reason.into(),
            note: Some(ready.message.chars().take(1000).collect()),
            action: "Render".into(),
            secondary: None,
        },
        (Some("False"), false) if before.is_some_and(|c| c.reason != ready.reason) => Event {
            type_: EventType::Warning,
            reason: ready.reason.into(),
            note: Some(ready.message.chars().take(1000).collect()),
            action: "Render".into(),
            secondary: None,
        },
        _ => return,
    };
    if let Err(e) = recorder.publish(&event, &backend.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

/// Retries a failed reconcile after a short pause.
pub fn error_policy(backend: Arc<LLMBackend>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(backend = %backend.name_any(), namespace = ?backend.namespace(), %error, "LLMBackend reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests;
