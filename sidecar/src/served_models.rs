//! The models the backend serves, so that metric labels and per-model quota
//! keys name only those: a caller who makes up model names must not grow a
//! metric series or a budget per name.
//!
//! The list is the config's `upstream.servedModels` when declared. Otherwise
//! it is the engine's own list (`GET /api/tags` for Ollama, `GET /v1/models`
//! for OpenAI engines, sent with the user agent [`USER_AGENT`]), read again
//! in the background when it is older than `upstream.modelListRefresh`, at
//! once (waited for, at most [`MISS_WAIT`]) when a request names a model
//! not on it and the list is older than [`MISS_REFRESH`], and whenever a
//! caller's model-list request passes through the gateway. One read runs at
//! a time. Every name is canonical; at most [`MAX_SERVED_MODELS`] are kept.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::body::empty;
use crate::canonical::{Engine, ModelName, canonical_name};
use crate::runtime::Upstream;

/// The most model names remembered from an engine's list.
pub const MAX_SERVED_MODELS: usize = 4096;

/// The largest model list read.
const MAX_LIST_BYTES: usize = 8 * 1024 * 1024;

/// The user agent of the gateway's own model-list reads.
pub const USER_AGENT: &str = "attach-gateway (served models)";

/// A model not on the list triggers a new read only when the list is older.
pub const MISS_REFRESH: Duration = Duration::from_secs(1);

/// How long a request waits for that read.
pub const MISS_WAIT: Duration = Duration::from_secs(1);

/// The models one backend serves.
#[derive(Debug)]
pub struct ServedModels {
    engine: Engine,
    declared: bool,
    names: ArcSwap<HashSet<ModelName>>,
    refresh_interval: Duration,
    /// When the engine's list was last read (or tried): milliseconds after
    /// `created`, plus one (0: never). An atomic, not a lock: every request
    /// on every worker thread reads it.
    read_at: AtomicU64,
    created: Instant,
    /// Held while a read runs: one read at a time.
    reading: tokio::sync::Mutex<()>,
    /// A background read is queued or running.
    background: AtomicBool,
}

impl ServedModels {
    /// A declared list (never refreshed), or, when `declared` is empty, one
    /// read from the engine every `refresh_interval`.
    pub fn new(engine: Engine, declared: Vec<ModelName>, refresh_interval: Duration) -> Self {
        Self {
            engine,
            declared: !declared.is_empty(),
            names: ArcSwap::from_pointee(declared.into_iter().collect()),
            refresh_interval,
            read_at: AtomicU64::new(0),
            created: Instant::now(),
            reading: tokio::sync::Mutex::new(()),
            background: AtomicBool::new(false),
        }
    }

    /// Whether the list is declared in the config (not read from the engine).
    pub fn is_declared(&self) -> bool {
        self.declared
    }

    /// Whether the backend serves `name`.
    pub fn contains(&self, name: &ModelName) -> bool {
        self.names.load().contains(name)
    }

    /// Replaces the engine-read list with the names in a model list answer
    /// (Ollama's `models[].name`, OpenAI's `data[].id`). Declared lists are
    /// kept. Names outside the engine's grammar are left out.
    pub fn observe_list(&self, body: &[u8]) -> bool {
        if self.declared {
            return false;
        }
        let Some(names) = list_names(self.engine, body) else {
            return false;
        };
        self.names.store(Arc::new(names));
        true
    }

    /// Adds the targets an MCP server listed (`tool:<name>`, ...) to what it
    /// serves: its lists differ by session and by caller, so they add up
    /// (at most [`MAX_SERVED_MODELS`] names). Declared lists are kept.
    pub fn observe_targets(&self, targets: &[String]) {
        if self.declared || targets.is_empty() {
            return;
        }
        let names = self.names.load();
        let new: Vec<ModelName> = targets
            .iter()
            .filter_map(|t| canonical_name(self.engine, t).ok())
            .filter(|n| !names.contains(n))
            .collect();
        if new.is_empty() {
            return;
        }
        let mut next = HashSet::clone(&names);
        for name in new {
            if next.len() >= MAX_SERVED_MODELS {
                break;
            }
            next.insert(name);
        }
        self.names.store(Arc::new(next));
    }

    /// Whether the backend serves `name`: from the list as it is, or, for a
    /// name not on it, from a fresh read if the list is older than
    /// [`MISS_REFRESH`] (waited for at most [`MISS_WAIT`]). Also keeps the
    /// list fresh in the background.
    pub async fn serves(self: &Arc<Self>, name: &ModelName, upstream: &Upstream) -> bool {
        if self.contains(name) {
            self.refresh_if_stale(upstream);
            return true;
        }
        if self.declared {
            return false;
        }
        let _ = tokio::time::timeout(MISS_WAIT, self.read(upstream, MISS_REFRESH)).await;
        self.contains(name)
    }

    /// How long ago the list was last read (or tried).
    fn age(&self) -> Option<Duration> {
        match self.read_at.load(Ordering::Acquire) {
            0 => None,
            at => Some(
                self.created
                    .elapsed()
                    .saturating_sub(Duration::from_millis(at - 1)),
            ),
        }
    }

    fn mark_read(&self) {
        let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.read_at.store(now + 1, Ordering::Release);
    }

    /// Reads the engine's list unless it was read within `fresh` (or another
    /// read, which this one waits for, just did).
    async fn read(&self, upstream: &Upstream, fresh: Duration) {
        let _one_at_a_time = self.reading.lock().await;
        if self.age().is_some_and(|age| age < fresh) {
            return;
        }
        self.mark_read();
        match read_list(self.engine, upstream).await {
            Some(body) if self.observe_list(&body) => {}
            _ => tracing::debug!("could not read the engine's model list"),
        }
    }

    /// Reads the engine's list in the background if it is older than the
    /// refresh interval and no background read is queued. Needs a Tokio
    /// runtime (the request path's); without one it does nothing.
    pub fn refresh_if_stale(self: &Arc<Self>, upstream: &Upstream) {
        if self.declared
            || self.age().is_some_and(|age| age < self.refresh_interval)
            || tokio::runtime::Handle::try_current().is_err()
            || self.background.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let this = Arc::clone(self);
        let upstream = upstream.clone();
        tokio::spawn(async move {
            // Released however the read ends.
            struct Queued(Arc<ServedModels>);
            impl Drop for Queued {
                fn drop(&mut self) {
                    self.0.background.store(false, Ordering::Release);
                }
            }
            let queued = Queued(this);
            let interval = queued.0.refresh_interval;
            queued.0.read(&upstream, interval).await;
        });
    }
}

/// The canonical names in a model list answer.
fn list_names(engine: Engine, body: &[u8]) -> Option<HashSet<ModelName>> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let (list, key) = if let Some(models) = doc.get("models") {
        (models, "name")
    } else {
        (doc.get("data")?, "id")
    };
    Some(
        list.as_array()?
            .iter()
            .filter_map(|item| item.get(key).or_else(|| item.get("model"))?.as_str())
            .filter_map(|name| canonical_name(engine, name).ok())
            .take(MAX_SERVED_MODELS)
            .collect(),
    )
}

async fn read_list(engine: Engine, upstream: &Upstream) -> Option<Bytes> {
    let path = match engine {
        Engine::Ollama => "/api/tags",
        Engine::Vllm | Engine::Openai => "/v1/models",
        // MCP servers have no list to read outside a session: what they
        // serve is what their lists said (`observe_targets`).
        Engine::Mcp => return None,
    };
    let uri = http::Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(path)
        .build()
        .ok()?;
    let request = http::Request::get(uri)
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(empty())
        .ok()?;
    let response = tokio::time::timeout(
        upstream.response_header_timeout,
        upstream.client().request(request),
    )
    .await
    .ok()?
    .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_LIST_BYTES);
    body.collect().await.ok().map(|b| b.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(engine: Engine, raw: &str) -> ModelName {
        canonical_name(engine, raw).unwrap()
    }

    #[test]
    fn lists_are_read_in_canonical_form() {
        let served = ServedModels::new(Engine::Ollama, Vec::new(), Duration::from_secs(30));
        assert!(!served.contains(&name(Engine::Ollama, "tinyllama")));
        assert!(served.observe_list(
            br#"{"models":[{"name":"TinyLlama:latest"},{"name":"hf.co/A/B:Q4"},{"name":"bad name"}]}"#
        ));
        assert!(served.contains(&name(
            Engine::Ollama,
            "registry.ollama.ai/library/tinyllama"
        )));
        assert!(served.contains(&name(Engine::Ollama, "hf.co/a/b:q4")));
        assert!(!served.contains(&name(Engine::Ollama, "llama3.2:1b")));
        // The next list replaces the last.
        assert!(served.observe_list(br#"{"models":[]}"#));
        assert!(!served.contains(&name(Engine::Ollama, "tinyllama")));
        assert!(!served.observe_list(b"not json"));
    }

    #[test]
    fn declared_lists_win_and_openai_lists_are_exact() {
        let declared = ServedModels::new(
            Engine::Vllm,
            vec![name(Engine::Vllm, "Tiny-Chat")],
            Duration::from_secs(30),
        );
        assert!(!declared.observe_list(br#"{"data":[{"id":"other"}]}"#));
        assert!(declared.contains(&name(Engine::Vllm, "Tiny-Chat")));
        assert!(!declared.contains(&name(Engine::Vllm, "tiny-chat")));
        assert!(!declared.contains(&name(Engine::Vllm, "other")));
        let read = ServedModels::new(Engine::Vllm, Vec::new(), Duration::from_secs(30));
        assert!(read.observe_list(br#"{"object":"list","data":[{"id":"Tiny-Chat"}]}"#));
        assert!(read.contains(&name(Engine::Vllm, "Tiny-Chat")));
    }

    #[tokio::test]
    async fn a_name_not_on_the_list_reads_it_again_at_most_once_a_second() {
        use std::sync::atomic::AtomicUsize;
        let reads = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counter = reads.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let counter = counter.clone();
                            async move {
                                assert_eq!(req.headers()["user-agent"], USER_AGENT);
                                assert_eq!(req.uri().path(), "/api/tags");
                                counter.fetch_add(1, Ordering::SeqCst);
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(Bytes::from_static(
                                        br#"{"models":[{"name":"llama3.2:1b"}]}"#,
                                    )),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let mut config = crate::config::GatewayConfig::new(Vec::new());
        config.upstream.url = format!("http://{addr}");
        let runtime =
            crate::runtime::Runtime::build(config, None, &crate::runtime::Shared::new()).unwrap();
        let served = runtime.served_models.clone();
        let upstream = &runtime.upstream;
        // Never read: the first name reads the list, and is on it.
        assert!(
            served
                .serves(&name(Engine::Ollama, "LLAMA3.2:1b"), upstream)
                .await
        );
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Made-up names within the second read nothing more.
        for made_up in ["x1", "x2", "x3"] {
            assert!(
                !served
                    .serves(&name(Engine::Ollama, made_up), upstream)
                    .await
            );
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // A served name never waits for a read.
        assert!(
            served
                .serves(&name(Engine::Ollama, "llama3.2:1b"), upstream)
                .await
        );
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        server.abort();
    }

    #[test]
    fn at_most_a_bounded_number_of_names_are_kept() {
        let served = ServedModels::new(Engine::Ollama, Vec::new(), Duration::from_secs(30));
        let items: Vec<String> = (0..MAX_SERVED_MODELS + 100)
            .map(|i| format!("{{\"name\":\"m{i}\"}}"))
            .collect();
        let body = format!("{{\"models\":[{}]}}", items.join(","));
        assert!(served.observe_list(body.as_bytes()));
        assert_eq!(served.names.load().len(), MAX_SERVED_MODELS);
    }
}
