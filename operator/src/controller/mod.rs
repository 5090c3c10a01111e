//! The controllers, and the watches that wake them. Every kind is watched
//! once per process ([`crate::reflectors`]): the backends and identity
//! providers from the start (the webhook reads them on every replica), the
//! rest once this replica leads.

pub mod backoff;
pub mod conditions;
pub mod identity_provider;
pub mod llm_backend;
pub mod namespace_label;
pub mod owned;
pub mod resolve;
pub mod selection;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, controller, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::crd::llm_backend::IdentityProviderKind;
use crate::crd::{ClusterIdentityProvider, IdentityProvider, LLMBackend};
use crate::metrics::Metrics;
use crate::reflectors::{Caches, Shared, changes};
use conditions::is_true;
use resolve::IdpStores;

/// The kinds as the metrics name them.
const BACKEND: &str = "LLMBackend";
const NAMESPACE: &str = "Namespace";

/// How the controllers schedule reconciles.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Reconciles of one kind running at once.
    pub concurrency: u16,
    /// How long to wait for more changes to an object before reconciling it,
    /// so a burst (spec, owned objects, status) costs one reconcile.
    pub debounce: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            debounce: Duration::from_millis(500),
        }
    }
}

impl Settings {
    fn controller_config(&self) -> controller::Config {
        controller::Config::default()
            .concurrency(self.concurrency)
            .debounce(self.debounce)
    }
}

/// The watches only the controllers need, started when this replica leads.
struct LeaderCaches {
    pods: Shared<PartialObjectMeta<Pod>>,
    namespaces: Shared<PartialObjectMeta<Namespace>>,
    config_maps: Shared<ConfigMap>,
}

impl LeaderCaches {
    fn spawn(client: &Client) -> Self {
        Self {
            // Metadata only: `Api<PartialObjectMeta<_>>` asks for no more.
            pods: Shared::spawn(Api::all(client.clone()), watcher::Config::default()),
            namespaces: Shared::spawn(Api::all(client.clone()), watcher::Config::default()),
            config_maps: Shared::spawn(
                Api::all(client.clone()),
                watcher::Config::default().labels(&owned::selector()),
            ),
        }
    }

    async fn ready(&self) -> bool {
        self.pods.store().wait_until_ready().await.is_ok()
            && self.namespaces.store().wait_until_ready().await.is_ok()
            && self.config_maps.store().wait_until_ready().await.is_ok()
    }
}

/// How the queue-depth metric names an object.
fn queue_key<K: Resource>(reference: &ObjectRef<K>) -> String {
    match &reference.namespace {
        Some(ns) => format!("{ns}/{}", reference.name),
        None => reference.name.clone(),
    }
}

/// `refs` join the queue of `kind` (for the metric), and pass on.
fn enqueue<K: Resource>(
    metrics: &Metrics,
    kind: &'static str,
    refs: impl IntoIterator<Item = ObjectRef<K>>,
) -> Vec<ObjectRef<K>> {
    refs.into_iter()
        .inspect(|r| metrics.queued(kind, queue_key(r)))
        .collect()
}

/// Counts a controller's results: an object gone when its turn came left
/// the queue without a reconcile. Returns that object, if any.
fn dequeue_missing<'r, K: Resource, E>(
    metrics: &Metrics,
    kind: &'static str,
    result: &'r Result<(ObjectRef<K>, controller::Action), controller::Error<E, watcher::Error>>,
) -> Option<&'r ObjectRef<kube::api::DynamicObject>>
where
    E: std::error::Error + 'static,
{
    let Err(controller::Error::ObjectNotFound(gone)) = result else {
        return None;
    };
    metrics.dequeued(kind, &queue_key(gone));
    Some(gone.as_ref())
}

/// One reconcile of everything, once: what the shared watches delivered
/// before the controllers subscribed.
fn once() -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::once(std::future::ready(()))
}

/// Runs every controller until `shutdown` resolves; reconciles in flight
/// finish first.
pub async fn run(
    client: Client,
    caches: Caches,
    metrics: Arc<Metrics>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let leader = LeaderCaches::spawn(&client);
    let ready = async { caches.ready().await && leader.ready().await };
    tokio::select! {
        ready = ready => if !ready {
            tracing::error!("the caches stopped before they were filled");
            return;
        },
        () = shutdown.clone() => return,
    }
    let recorder = Recorder::new(client.clone(), identity_provider::reporter());
    let idp_ctx = Arc::new(identity_provider::Context {
        client: client.clone(),
        http: attach_sidecar::idp_client::IdpClient::new(),
        recorder: recorder.clone(),
        backoff: backoff::Backoff::default(),
    });
    let idps = idp_controller(
        &caches.idps,
        idp_ctx.clone(),
        metrics.clone(),
        settings.controller_config(),
        shutdown.clone(),
    );
    let cluster_idps = idp_controller(
        &caches.cluster_idps,
        idp_ctx,
        metrics.clone(),
        settings.controller_config(),
        shutdown.clone(),
    );
    let label_client = client.clone();
    let labels = namespace_label_controller(
        &label_client,
        &caches,
        &leader,
        metrics.clone(),
        settings.controller_config(),
        shutdown.clone(),
    );
    let backends = backend_controller(
        client, recorder, &caches, &leader, metrics, &settings, shutdown,
    );
    futures::join!(idps, cluster_idps, labels, backends);
    tracing::info!("controllers stopped");
}

/// The controller of one identity-provider kind, woken by spec changes
/// (not by its own status writes) and by its periodic recheck.
async fn idp_controller<K: identity_provider::IdpObject>(
    shared: &Shared<K>,
    ctx: Arc<identity_provider::Context>,
    metrics: Arc<Metrics>,
    config: controller::Config,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let store = shared.store();
    let queue = metrics.clone();
    let triggers = changes(shared.subscribe(), store.clone(), |k: &K| {
        k.meta().generation
    })
    .inspect(move |k| queue.queued(K::KIND, queue_key(&ObjectRef::from_obj(k.as_ref()))));
    let results = metrics.clone();
    Controller::for_shared_stream(triggers, store)
        .with_config(config)
        .reconcile_all_on(once())
        .graceful_shutdown_on(shutdown)
        .run(
            move |obj, ctx| {
                let metrics = metrics.clone();
                metrics.dequeued(K::KIND, &queue_key(&ObjectRef::from_obj(obj.as_ref())));
                async move {
                    metrics
                        .measure(K::KIND, identity_provider::reconcile(obj, ctx))
                        .await
                }
            },
            identity_provider::error_policy::<K>,
            ctx,
        )
        .for_each(move |result| {
            dequeue_missing(&results, K::KIND, &result);
            async {}
        })
        .await;
}

/// Keeps the namespace label the webhook's selector matches.
async fn namespace_label_controller(
    client: &Client,
    caches: &Caches,
    leader: &LeaderCaches,
    metrics: Arc<Metrics>,
    config: controller::Config,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let namespaces = leader.namespaces.store();
    let queue = metrics.clone();
    let triggers = changes(leader.namespaces.subscribe(), namespaces.clone(), |ns| {
        ns.labels().get(namespace_label::LABEL.0).cloned()
    })
    .inspect(move |ns| queue.queued(NAMESPACE, queue_key(&ObjectRef::from_obj(ns.as_ref()))));
    let queue = metrics.clone();
    let results = metrics.clone();
    let backends_in = changes(caches.backends.subscribe(), caches.backends.store(), |_| ());
    let ctx = Arc::new(namespace_label::Context {
        client: client.clone(),
        backends: caches.backends.store(),
        backoff: backoff::Backoff::default(),
    });
    Controller::for_shared_stream(triggers, namespaces)
        .with_config(config)
        .reconcile_all_on(once())
        // A backend that comes or goes changes its namespace's label.
        .watches_shared_stream(backends_in, move |b: Arc<LLMBackend>| {
            enqueue(
                &queue,
                NAMESPACE,
                b.namespace()
                    .map(|ns| ObjectRef::<PartialObjectMeta<Namespace>>::new(&ns)),
            )
        })
        .graceful_shutdown_on(shutdown)
        .run(
            move |ns, ctx| {
                let metrics = metrics.clone();
                metrics.dequeued(NAMESPACE, &queue_key(&ObjectRef::from_obj(ns.as_ref())));
                async move {
                    metrics
                        .measure(NAMESPACE, namespace_label::reconcile(ns, ctx))
                        .await
                }
            },
            namespace_label::error_policy,
            ctx,
        )
        .for_each(move |result| {
            dequeue_missing(&results, NAMESPACE, &result);
            async {}
        })
        .await;
}

/// What of an identity provider a backend depends on: its spec, whether it
/// is Ready, and the keys it relays (a rotation re-renders every backend
/// that accepts it at once, not at its next resync).
fn idp_state<K: identity_provider::IdpObject>(idp: &K) -> (Option<i64>, bool, Option<String>) {
    let status = idp.status();
    (
        idp.meta().generation,
        status.is_some_and(|s| is_true(&s.conditions, crate::crd::conditions::types::READY)),
        status.and_then(|s| s.relayed_keys.clone()),
    )
}

/// What of a pod a backend depends on: its labels, the annotations the
/// webhook sets or an opt-out, and whether it is going.
fn pod_state(pod: &PartialObjectMeta<Pod>) -> (BTreeMap<String, String>, Vec<String>, bool) {
    let annotations = [
        selection::INJECTED_BY,
        selection::POD_OPT_OUT,
        crate::inject::INJECTED,
    ]
    .iter()
    .map(|k| pod.annotations().get(*k).cloned().unwrap_or_default())
    .collect();
    (
        pod.labels().clone(),
        annotations,
        pod.metadata.deletion_timestamp.is_some(),
    )
}

/// The LLMBackend controller with its watches: owned ConfigMaps, referenced
/// IdPs, matching pods, and overlapping backends.
async fn backend_controller(
    client: Client,
    recorder: Recorder,
    caches: &Caches,
    leader: &LeaderCaches,
    metrics: Arc<Metrics>,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let backends = caches.backends.store();
    // A status write (ours) changes no generation: no reconcile for it.
    // Every change also wakes the backends whose selectors overlap (a
    // conflict may start or end).
    let overlap_store = backends.clone();
    let triggers = changes(caches.backends.subscribe(), backends.clone(), |b| {
        b.meta().generation
    })
    .flat_map(move |backend| {
        let all = overlap_store.state();
        let mut woken: Vec<Arc<LLMBackend>> =
            selection::overlapping(&backend, &all).cloned().collect();
        woken.push(backend);
        futures::stream::iter(woken)
    });
    let queue = metrics.clone();
    let triggers = triggers
        .inspect(move |b| queue.queued(BACKEND, queue_key(&ObjectRef::from_obj(b.as_ref()))));
    let idp_events = changes(caches.idps.subscribe(), caches.idps.store(), idp_state);
    let cluster_events = changes(
        caches.cluster_idps.subscribe(),
        caches.cluster_idps.store(),
        idp_state,
    );
    let pod_events = changes(leader.pods.subscribe(), leader.pods.store(), pod_state);

    let ctx = Arc::new(llm_backend::Context {
        client: client.clone(),
        recorder,
        backends: backends.clone(),
        idps: IdpStores {
            namespaced: caches.idps.store(),
            cluster: caches.cluster_idps.store(),
        },
        pods: leader.pods.store(),
        config_maps: leader.config_maps.store(),
        backoff: backoff::Backoff::default(),
        metrics: metrics.clone(),
    });
    let deleted = metrics.clone();

    let by_idp = backends.clone();
    let by_cluster_idp = backends.clone();
    let by_pod = backends.clone();
    let (for_idp, for_cluster_idp, for_pod) = (metrics.clone(), metrics.clone(), metrics.clone());
    Controller::for_shared_stream(triggers, backends)
        .with_config(settings.controller_config())
        .reconcile_all_on(once())
        .owns_shared_stream(leader.config_maps.subscribe())
        .watches_shared_stream(idp_events, move |idp: Arc<IdentityProvider>| {
            let refs = referring(
                &by_idp,
                IdentityProviderKind::IdentityProvider,
                idp.namespace(),
                &idp.name_any(),
            );
            enqueue(&for_idp, BACKEND, refs)
        })
        .watches_shared_stream(cluster_events, move |idp: Arc<ClusterIdentityProvider>| {
            let refs = referring(
                &by_cluster_idp,
                IdentityProviderKind::ClusterIdentityProvider,
                None,
                &idp.name_any(),
            );
            enqueue(&for_cluster_idp, BACKEND, refs)
        })
        .watches_shared_stream(pod_events, move |pod: Arc<PartialObjectMeta<Pod>>| {
            let ns = pod.namespace().unwrap_or_default();
            let refs = by_pod
                .state()
                .iter()
                .filter(|b| {
                    b.namespace().as_deref() == Some(ns.as_str())
                        && selection::selects(&b.spec.selector, pod.labels())
                })
                .map(|b| ObjectRef::from_obj(b.as_ref()))
                .collect::<Vec<_>>();
            enqueue(&for_pod, BACKEND, refs)
        })
        .graceful_shutdown_on(shutdown)
        .run(
            move |obj, ctx| {
                let metrics = metrics.clone();
                metrics.dequeued(BACKEND, &queue_key(&ObjectRef::from_obj(obj.as_ref())));
                async move {
                    metrics
                        .measure(BACKEND, llm_backend::reconcile(obj, ctx))
                        .await
                }
            },
            llm_backend::error_policy,
            ctx,
        )
        .for_each(move |result| {
            // A deleted backend is looked up and not found: its series go.
            if let Some(gone) = dequeue_missing(&deleted, BACKEND, &result) {
                deleted.backend_deleted(&crate::metrics::BackendLabels {
                    namespace: gone.namespace.clone().unwrap_or_default(),
                    backend: gone.name.clone(),
                });
            }
            async {}
        })
        .await;
}

/// Backends that refer to the IdP `name` of `kind` (in `namespace` for the
/// namespaced kind).
fn referring(
    backends: &Store<LLMBackend>,
    kind: IdentityProviderKind,
    namespace: Option<String>,
    name: &str,
) -> Vec<ObjectRef<LLMBackend>> {
    backends
        .state()
        .iter()
        .filter(|b| {
            kind == IdentityProviderKind::ClusterIdentityProvider || b.namespace() == namespace
        })
        .filter(|b| {
            b.spec
                .identity_provider_refs
                .iter()
                .any(|r| r.kind == kind && r.name == name)
        })
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ClusterIdentityProvider;

    #[test]
    fn a_backend_wakes_when_its_idp_relays_new_keys() {
        let idp = |keys: &str| -> ClusterIdentityProvider {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "attach.dev/v1alpha1", "kind": "ClusterIdentityProvider",
                "metadata": {"name": "cluster", "generation": 1},
                "spec": {"issuer": "https://kubernetes.default.svc", "audiences": ["x"], "preset": "kubernetes"},
                "status": {"relayedKeys": keys},
            }))
            .unwrap()
        };
        let before = idp(r#"{"keys":[{"kid":"a"}]}"#);
        assert_eq!(idp_state(&before), idp_state(&before.clone()));
        assert_ne!(
            idp_state(&before),
            idp_state(&idp(r#"{"keys":[{"kid":"a"},{"kid":"b"}]}"#))
        );
    }
}
