//! One watch per kind for the whole process: a reflector cache that the
//! webhook reads and the controllers read and are woken by.
//!
//! kube-runtime's own shared streams (`reflect_shared`) do not pass deletions
//! on and apply backpressure to the root stream, so a slow controller would
//! stall the webhook's cache. Here each subscriber has its own unbounded
//! queue of the objects that changed or went, and the cache is updated
//! first.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use std::collections::HashMap;

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// A watched kind: its cache, and who wants to hear about changes.
pub struct Shared<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            subscribers: self.subscribers.clone(),
        }
    }
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching `api`; the task runs until the process ends.
    pub fn spawn(api: Api<K>, config: watcher::Config) -> Self {
        Self::from_events(watcher(api, config))
    }

    /// Starts caching and fanning out `events` (a watcher's stream).
    pub fn from_events(
        events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    ) -> Self {
        let (store, mut writer) = reflector::store();
        let subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>> = Arc::default();
        let fanout = subscribers.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(
                events
                    .default_backoff()
                    .modify(|obj| obj.managed_fields_mut().clear())
            );
            let mut listed: Vec<Arc<K>> = Vec::new();
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                        continue;
                    }
                };
                writer.apply_watcher_event(&event);
                let changed = match event {
                    watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => vec![Arc::new(obj)],
                    watcher::Event::Init => {
                        listed.clear();
                        continue;
                    }
                    watcher::Event::InitApply(obj) => {
                        listed.push(Arc::new(obj));
                        continue;
                    }
                    watcher::Event::InitDone => std::mem::take(&mut listed),
                };
                publish(&fanout, &changed);
            }
        });
        Self { store, subscribers }
    }

    /// The cache (ready once the first list is in).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Objects that change or are deleted from now on (deleted ones are no
    /// longer in [`Shared::store`]).
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.push(tx);
        }
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

/// Passes on only the objects whose `key` changed since last seen (and the
/// deleted ones): e.g. the generation, so that a controller is not woken by
/// its own status writes.
pub fn changes<K, T>(
    objects: impl Stream<Item = Arc<K>> + Send + 'static,
    store: Store<K>,
    key: impl Fn(&K) -> T + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    T: PartialEq + Send + 'static,
{
    let mut seen: HashMap<ObjectRef<K>, T> = HashMap::new();
    objects.filter(move |obj| {
        let reference = ObjectRef::from_obj(obj.as_ref());
        let pass = if store.get(&reference).is_none() {
            seen.remove(&reference);
            true
        } else {
            let now = key(obj);
            let changed = seen.get(&reference) != Some(&now);
            seen.insert(reference, now);
            changed
        };
        std::future::ready(pass)
    })
}

fn publish<K>(subscribers: &Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>, changed: &[Arc<K>]) {
    if changed.is_empty() {
        return;
    }
    if let Ok(mut subscribers) = subscribers.lock() {
        subscribers.retain(|tx| changed.iter().all(|obj| tx.send(obj.clone()).is_ok()));
    }
}

/// The watches the webhook and the controllers share, started before
/// either: backends and both identity-provider kinds.
#[derive(Clone)]
pub struct Caches {
    pub backends: Shared<crate::crd::LLMBackend>,
    pub idps: Shared<crate::crd::IdentityProvider>,
    pub cluster_idps: Shared<crate::crd::ClusterIdentityProvider>,
}

impl Caches {
    /// Starts the watches.
    pub fn spawn(client: &kube::Client) -> Self {
        Self {
            backends: Shared::spawn(Api::all(client.clone()), watcher::Config::default()),
            idps: Shared::spawn(Api::all(client.clone()), watcher::Config::default()),
            cluster_idps: Shared::spawn(Api::all(client.clone()), watcher::Config::default()),
        }
    }

    /// Waits until each cache has listed once; `false` if one never will.
    pub async fn ready(&self) -> bool {
        self.backends.store.wait_until_ready().await.is_ok()
            && self.idps.store.wait_until_ready().await.is_ok()
            && self.cluster_idps.store.wait_until_ready().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(name: &str) -> Arc<ConfigMap> {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        Arc::new(cm)
    }

    #[tokio::test]
    async fn every_subscriber_hears_each_change_and_gone_ones_are_dropped() {
        let subscribers = Mutex::new(Vec::new());
        let (a, mut a_rx) = mpsc::unbounded_channel();
        let (b, b_rx) = mpsc::unbounded_channel();
        subscribers.lock().unwrap().extend([a, b]);
        drop(b_rx);
        publish(&subscribers, &[cm("one"), cm("two")]);
        assert_eq!(a_rx.recv().await.unwrap().name_any(), "one");
        assert_eq!(a_rx.recv().await.unwrap().name_any(), "two");
        assert_eq!(
            subscribers.lock().unwrap().len(),
            1,
            "the closed one is gone"
        );
    }
}
