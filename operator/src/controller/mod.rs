//! The controllers, and the watches that wake them.

pub mod conditions;
pub mod identity_provider;
pub mod llm_backend;
pub mod owned;
pub mod resolve;
pub mod selection;

use std::future::Future;
use std::sync::Arc;

use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, controller, predicates, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::crd::llm_backend::{IdentityProviderKind, QuotaStoreType};
use crate::crd::{ClusterIdentityProvider, IdentityProvider, LLMBackend};
use crate::metrics::Metrics;
use resolve::IdpStores;

/// How the controllers schedule reconciles.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The operator's own namespace (Secrets of ClusterIdentityProviders).
    pub namespace: String,
    /// Reconciles of one kind running at once.
    pub concurrency: u16,
    /// How long to wait for more changes to an object before reconciling it,
    /// so a burst (spec, owned objects, status) costs one reconcile.
    pub debounce: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
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

/// Runs every controller until `shutdown` resolves; reconciles in flight
/// finish first.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let recorder = Recorder::new(client.clone(), identity_provider::reporter());
    let idp_ctx = Arc::new(identity_provider::Context {
        client: client.clone(),
        http: attach_sidecar::idp_client::IdpClient::new(),
        recorder: recorder.clone(),
    });

    let idps = idp_controller::<IdentityProvider>(
        client.clone(),
        idp_ctx.clone(),
        metrics.clone(),
        settings.controller_config(),
        shutdown.clone(),
    );
    let cluster_idps = idp_controller::<ClusterIdentityProvider>(
        client.clone(),
        idp_ctx,
        metrics.clone(),
        settings.controller_config(),
        shutdown.clone(),
    );
    let backends = backend_controller(client, recorder, metrics, settings, shutdown);
    futures::join!(idps, cluster_idps, backends);
    tracing::info!("controllers stopped");
}

/// The controller of one identity-provider kind.
async fn idp_controller<K: identity_provider::IdpObject>(
    client: Client,
    ctx: Arc<identity_provider::Context>,
    metrics: Arc<Metrics>,
    config: controller::Config,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    Controller::new(Api::<K>::all(client), watcher::Config::default())
        .with_config(config)
        .graceful_shutdown_on(shutdown)
        .run(
            move |obj, ctx| {
                let metrics = metrics.clone();
                async move {
                    metrics
                        .measure(K::KIND, identity_provider::reconcile(obj, ctx))
                        .await
                }
            },
            identity_provider::error_policy::<K>,
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// The LLMBackend controller with its watches: owned ConfigMaps and Secrets,
/// referenced IdPs and Secrets, matching pods, and overlapping backends.
async fn backend_controller(
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let owned_only = watcher::Config::default().labels(&owned::selector());
    // The backends, cached without managed fields; every change also wakes
    // the backends whose selectors overlap (a conflict may start or end).
    let (backends, backend_writer) = reflector::store::<LLMBackend>();
    let (overlap_tx, overlap_rx) = tokio::sync::mpsc::unbounded_channel();
    let overlap_store = backends.clone();
    let backend_events = watcher(
        Api::<LLMBackend>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|b| b.managed_fields_mut().clear())
    .reflect(backend_writer)
    .touched_objects()
    .inspect_ok(move |backend| {
        for other in selection::overlapping(backend, &overlap_store.state()) {
            let _ = overlap_tx.send(ObjectRef::from_obj(other));
        }
    })
    // A status write (ours) changes no generation: no reconcile for it.
    .predicate_filter(predicates::generation, Default::default());
    let overlaps = futures::stream::unfold(overlap_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });
    let controller = Controller::for_stream(backend_events, backends.clone())
        .with_config(settings.controller_config())
        .reconcile_on(overlaps);

    let (idp_store, idp_writer) = reflector::store::<IdentityProvider>();
    let idp_events = watcher(
        Api::<IdentityProvider>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(idp_writer)
    .touched_objects();
    let (cluster_store, cluster_writer) = reflector::store::<ClusterIdentityProvider>();
    let cluster_events = watcher(
        Api::<ClusterIdentityProvider>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(cluster_writer)
    .touched_objects();
    let (pod_store, pod_writer) = reflector::store::<PartialObjectMeta<Pod>>();
    let pod_events = watcher(
        Api::<PartialObjectMeta<Pod>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|pod| pod.managed_fields_mut().clear())
    .reflect(pod_writer)
    .touched_objects();
    let secret_events = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();

    let ctx = Arc::new(llm_backend::Context {
        client: client.clone(),
        recorder,
        backends: backends.clone(),
        idps: IdpStores {
            namespaced: idp_store,
            cluster: cluster_store,
        },
        pods: pod_store,
        operator_namespace: settings.namespace.clone(),
    });

    let by_idp = backends.clone();
    let by_cluster_idp = backends.clone();
    let by_pod = backends.clone();
    let by_secret = (backends, ctx.idps.clone(), settings.namespace.clone());
    controller
        .owns(Api::<ConfigMap>::all(client.clone()), owned_only)
        .watches_stream(idp_events, move |idp: IdentityProvider| {
            referring(
                &by_idp,
                IdentityProviderKind::IdentityProvider,
                idp.namespace(),
                &idp.name_any(),
            )
        })
        .watches_stream(cluster_events, move |idp: ClusterIdentityProvider| {
            referring(
                &by_cluster_idp,
                IdentityProviderKind::ClusterIdentityProvider,
                None,
                &idp.name_any(),
            )
        })
        .watches_stream(pod_events, move |pod: PartialObjectMeta<Pod>| {
            let ns = pod.namespace().unwrap_or_default();
            by_pod
                .state()
                .iter()
                .filter(|b| {
                    b.namespace().as_deref() == Some(ns.as_str())
                        && selection::selects(&b.spec.selector, pod.labels())
                })
                .map(|b| ObjectRef::from_obj(b.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(secret_events, move |secret: PartialObjectMeta<Secret>| {
            secret_users(&by_secret.0, &by_secret.1, &by_secret.2, &secret)
        })
        .graceful_shutdown_on(shutdown)
        .run(
            move |obj, ctx| {
                let metrics = metrics.clone();
                async move {
                    metrics
                        .measure("LLMBackend", llm_backend::reconcile(obj, ctx))
                        .await
                }
            },
            llm_backend::error_policy,
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// Backends that refer to the IdP `name` of `kind` (in `namespace` for the
/// namespaced kind).
fn referring(
    backends: &reflector::Store<LLMBackend>,
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

/// Backends whose quota store names the Secret, that own it, or whose
/// identity provider's token exchange names it (beside a namespaced IdP, or
/// in the operator's namespace for a ClusterIdentityProvider).
fn secret_users(
    backends: &reflector::Store<LLMBackend>,
    idps: &IdpStores,
    operator_namespace: &str,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<LLMBackend>> {
    let name = secret.name_any();
    let ns = secret.namespace();
    let exchange_secret = |r: &crate::crd::llm_backend::IdentityProviderRef, b: &LLMBackend| {
        let names = |spec: Option<&crate::crd::identity_provider::TokenExchange>| {
            spec.is_some_and(|e| e.client_secret_ref.name == name)
        };
        match r.kind {
            IdentityProviderKind::IdentityProvider => {
                b.namespace() == ns
                    && idps
                        .namespaced
                        .get(&ObjectRef::new(&r.name).within(ns.as_deref().unwrap_or_default()))
                        .is_some_and(|i| names(i.spec.token_exchange.as_ref()))
            }
            IdentityProviderKind::ClusterIdentityProvider => {
                ns.as_deref() == Some(operator_namespace)
                    && idps
                        .cluster
                        .get(&ObjectRef::new(&r.name))
                        .is_some_and(|i| names(i.spec.token_exchange.as_ref()))
            }
        }
    };
    let owner = secret
        .owner_references()
        .iter()
        .find(|o| o.kind == LLMBackend::kind(&()) && o.controller == Some(true))
        .map(|o| o.name.clone());
    backends
        .state()
        .iter()
        .filter(|b| {
            let here = b.namespace() == ns;
            (here
                && (owner.as_deref() == Some(b.name_any().as_str())
                    || b.spec.quota_store.as_ref().is_some_and(|s| {
                        s.type_ == QuotaStoreType::Redis
                            && s.url_secret_ref.as_ref().is_some_and(|r| r.name == name)
                    })))
                || b.spec
                    .identity_provider_refs
                    .iter()
                    .any(|r| exchange_secret(r, b))
        })
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}
