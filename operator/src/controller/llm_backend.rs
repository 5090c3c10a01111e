//! The LLMBackend controller: resolve what a backend refers to, render the
//! gateway config (deny-all while something is missing or in conflict),
//! write it to the owned ConfigMap (only when it changed, never over an
//! object that is not ours), check that the pods it selects carry the
//! gateway, and report status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use super::backoff::Backoff;
use super::conditions::{Verdict, find, same};
use super::identity_provider::FIELD_MANAGER;
use super::owned::{self, Written};
use super::resolve::{IdpStores, Problem};
use super::selection::{self, PodCounts};
use crate::crd::LLMBackend;
use crate::crd::conditions::types::{
    CONFIG_RENDERED, IDENTITY_PROVIDERS_RESOLVED, PODS_PROTECTED, READY,
};
use crate::crd::llm_backend::LLMBackendStatus;
use crate::ports;
use crate::render::{BackendId, render, render_deny_all};

/// A periodic check on top of the watches, in case an event was missed.
const RESYNC: Duration = Duration::from_secs(600);
/// How soon a backend whose ConfigMap name is taken looks again (the owner
/// may be an earlier backend of the same name, about to be collected).
const TAKEN_RECHECK: Duration = Duration::from_secs(10);
/// Pods named in a status message, at most.
const NAMED_PODS: usize = 5;

/// Why a reconcile failed; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the LLMBackend has no namespace")]
    NoNamespace,
    #[error("the caches stopped before they were filled")]
    CachesGone,
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
    /// The shared cache of backends (for conflicts).
    pub backends: Store<LLMBackend>,
    pub idps: IdpStores,
    /// Pod metadata, for matched, injected and unprotected pods.
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// The ConfigMaps the operator owns (by label): what is already written.
    pub config_maps: Store<ConfigMap>,
    pub backoff: Backoff<ObjectRef<LLMBackend>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Context {
    /// Waits until every cache has listed once: deciding on a partial cache
    /// could flip a working backend to deny-all.
    async fn caches_ready(&self) -> Result<(), Error> {
        let ready = futures::future::try_join5(
            self.backends.wait_until_ready(),
            self.idps.namespaced.wait_until_ready(),
            self.idps.cluster.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.config_maps.wait_until_ready(),
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

fn decide(backend: &LLMBackend, ns: &str, ctx: &Context) -> Decision {
    let spec = &backend.spec;
    let ports = ports::for_spec(spec);
    let mut problems = Vec::new();
    let all = ctx.backends.state();
    if let Some(earlier) = selection::conflict(backend, &all) {
        problems.push(Problem::Conflict {
            with: earlier.name_any(),
        });
    }
    let (idps, idp_problem) = ctx.idps.resolve(ns, &spec.identity_provider_refs);
    problems.extend(idp_problem.clone());
    if problems.iter().any(Problem::fails_closed) {
        return Decision {
            problems,
            idp_problem,
            deny_all: true,
            rendered: render_deny_all(spec, ports),
        };
    }
    let name = backend.name_any();
    let id = BackendId {
        namespace: ns,
        name: &name,
    };
    let rendered = render(id, spec, &idps, ports);
    if let Some(message) = rendered.problem() {
        problems.push(Problem::InvalidConfig { message });
        return Decision {
            problems,
            idp_problem,
            deny_all: true,
            rendered: render_deny_all(spec, ports),
        };
    }
    Decision {
        problems,
        idp_problem,
        deny_all: false,
        rendered,
    }
}

/// Reconciles one backend.
pub async fn reconcile(backend: Arc<LLMBackend>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches_ready().await?;
    let ns = backend.namespace().ok_or(Error::NoNamespace)?;
    let name = backend.name_any();
    let mut decision = decide(&backend, &ns, &ctx);
    let hash = decision.rendered.hash();
    let owned_name = owned::name(&name);

    let config_map = owned::config_map(&backend, &decision.rendered, &hash);
    let written = owned::apply(&ctx.client, &ctx.config_maps, &backend, config_map)
        .await
        .map_err(|source| Error::Write {
            what: format!("ConfigMap {owned_name}"),
            source,
        })?;
    let taken = match written {
        Written::Taken { name, why } => {
            let problem = Problem::ConfigMapTaken {
                name: format!("{ns}/{name}"),
                why: why.to_owned(),
            };
            decision.problems.insert(0, problem.clone());
            Some(problem)
        }
        Written::Unchanged | Written::Created | Written::Replaced => None,
    };

    let counts = selection::pod_counts(&backend, &ctx.pods.state());
    ctx.metrics.unprotected_pods(
        crate::metrics::BackendLabels {
            namespace: ns.clone(),
            backend: name.clone(),
        },
        counts.unprotected.len(),
        |b| {
            ctx.backends
                .get(&ObjectRef::new(&b.backend).within(&b.namespace))
                .is_some()
        },
    );
    let verdicts = verdicts(&decision, taken.as_ref(), &counts, &owned_name, &hash);
    let previous = backend.status.clone().unwrap_or_default();
    let generation = backend.meta().generation;
    let now = Time(Timestamp::now());
    let status = LLMBackendStatus {
        conditions: verdicts
            .iter()
            .map(|v| v.to_condition(&previous.conditions, generation, &now))
            .collect(),
        observed_generation: generation,
        config_hash: if taken.is_some() {
            previous.config_hash.clone()
        } else {
            Some(hash)
        },
        matched_pods: Some(counts.matched),
        injected_pods: Some(counts.injected),
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
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| Error::Write {
                what: format!("LLMBackend {name} status"),
                source,
            })?;
    }
    publish_transition(&backend, &previous.conditions, &verdicts[0], &ctx.recorder).await;
    ctx.backoff
        .succeeded(&ObjectRef::from_obj(backend.as_ref()));
    Ok(Action::requeue(if taken.is_some() {
        TAKEN_RECHECK
    } else {
        RESYNC
    }))
}

/// The message of `PodsProtected=False`: how many, which, and the fix.
fn unprotected_message(counts: &PodCounts) -> String {
    let mut names: Vec<&str> = counts
        .unprotected
        .iter()
        .take(NAMED_PODS)
        .map(String::as_str)
        .collect();
    if counts.unprotected.len() > NAMED_PODS {
        names.push("...");
    }
    format!(
        "{} selected pod(s) run without attach-gateway (created before this backend, or while injection was off): {}; recreate them (e.g. kubectl rollout restart) so they are injected",
        counts.unprotected.len(),
        names.join(", ")
    )
}

/// `Ready`, `IdentityProvidersResolved`, `ConfigRendered`, `PodsProtected`,
/// in that order.
fn verdicts(
    decision: &Decision,
    taken: Option<&Problem>,
    counts: &PodCounts,
    owned_name: &str,
    hash: &str,
) -> [Verdict; 4] {
    let protected = if counts.unprotected.is_empty() {
        Verdict::ok(
            PODS_PROTECTED,
            "Protected",
            format!(
                "{} selected pod(s), every one with attach-gateway",
                counts.matched
            ),
        )
    } else {
        Verdict::failed(
            PODS_PROTECTED,
            "PodsNotInjected",
            unprotected_message(counts),
        )
    };
    let ready = match decision.problems.first() {
        Some(problem) => Verdict::failed(READY, problem.reason(), problem.message()),
        None if !protected.ok => {
            Verdict::failed(READY, "PodsNotInjected", protected.message.clone())
        }
        None => Verdict::ok(
            READY,
            "Ready",
            format!("attach-gateway config {hash} is in ConfigMap {owned_name}"),
        ),
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
    let rendered = if let Some(problem) = taken {
        Verdict::failed(CONFIG_RENDERED, "Conflict", problem.message())
    } else if decision.deny_all {
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
    [ready, resolved, rendered, protected]
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

/// Retries a failed reconcile with exponential backoff and jitter.
pub fn error_policy(backend: Arc<LLMBackend>, error: &Error, ctx: Arc<Context>) -> Action {
    let pause = ctx.backoff.failed(ObjectRef::from_obj(backend.as_ref()));
    tracing::warn!(backend = %backend.name_any(), namespace = ?backend.namespace(), %error, retry_in_ms = pause.as_millis() as u64, "LLMBackend reconcile failed");
    Action::requeue(pause)
}

#[cfg(test)]
mod tests;
