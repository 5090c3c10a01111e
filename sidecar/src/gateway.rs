//! Assembles a running gateway: the proxy and admin listeners, the current
//! config generation, and (when configured from a file) the reloader.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ConfigError, GatewayConfig};
use crate::reload::{Overrides, Reloader};
use crate::runtime::{Runtime, Shared};
use crate::server::{ServerContext, serve};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where the config came from, and so whether it can be reloaded.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file, watched for changes.
    File { path: PathBuf, overrides: Overrides },
    /// Built once (standalone mode from env vars, or tests).
    Fixed,
}

/// A bound, not yet running, gateway.
#[derive(Debug)]
pub struct Gateway {
    current: Arc<ArcSwap<Runtime>>,
    shared: Shared,
    source: ConfigSource,
    proxy: TcpListener,
    admin: TcpListener,
    app_probes: Arc<crate::app_probe::AppProbes>,
}

impl Gateway {
    /// Builds the first generation and binds both listeners.
    pub async fn bind(config: GatewayConfig, source: ConfigSource) -> Result<Self, StartError> {
        let shared = Shared::for_config(&config)?;
        let proxy_addr = SocketAddr::new(config.listen.address, config.listen.port);
        let admin_addr = SocketAddr::new(config.admin.address, config.admin.port);
        let runtime = Runtime::build(config, None, &shared)?;
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(runtime)),
            shared,
            source,
            proxy: bind(proxy_addr).await?,
            admin: bind(admin_addr).await?,
            app_probes: Arc::default(),
        })
    }

    /// The application probes the admin port answers under `/probe/`.
    #[must_use]
    pub fn with_app_probes(mut self, probes: crate::app_probe::AppProbes) -> Self {
        self.app_probes = Arc::new(probes);
        self
    }

    /// The proxy listener's address (useful with port 0).
    pub fn proxy_addr(&self) -> std::io::Result<SocketAddr> {
        self.proxy.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The current config generation (shared with the request path).
    pub fn current(&self) -> Arc<ArcSwap<Runtime>> {
        self.current.clone()
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    ///
    /// The proxy runs on `workers` threads, each with its own single-threaded
    /// runtime accepting from the shared listener and its own upstream pool
    /// (the nginx worker model): a request never hops threads, which on a
    /// small CPU budget is worth more than work stealing. The admin listener,
    /// the reloader and the JWKS refreshers run on the calling runtime.
    pub async fn run(
        self,
        workers: usize,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let context = ServerContext::new(self.current.clone(), self.shared.metrics.clone());
        let proxy_service = crate::proxy::stack(self.current.clone(), self.shared.metrics.clone());
        let admin_service = crate::admin::service(
            self.current.clone(),
            self.shared.metrics.clone(),
            self.app_probes.clone(),
        );
        let reloader = match &self.source {
            ConfigSource::File { path, overrides } => Some(Reloader::new(
                path.clone(),
                overrides.clone(),
                self.current.clone(),
                self.shared.clone(),
            )),
            ConfigSource::Fixed => None,
        };

        let listener = self.proxy.into_std()?;
        let mut threads = Vec::with_capacity(workers.max(1));
        for worker in 0..workers.max(1) {
            let listener = listener.try_clone()?;
            let service = proxy_service.clone();
            let stopped = stopped();
            let context = context.clone();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-{worker}"))
                .spawn(move || -> std::io::Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        serve("proxy", listener, service, context, stopped).await;
                        Ok(())
                    })
                })?;
            threads.push(thread);
        }
        drop(listener);
        let admin = tokio::spawn(serve(
            "admin",
            self.admin,
            admin_service,
            // Its own connection count: a flood of proxy connections must
            // not starve the probes.
            ServerContext::new(self.current.clone(), self.shared.metrics.clone()),
            stopped(),
        ));
        let reload = reloader.map(|r| tokio::spawn(r.run(stopped())));
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        let _ = admin.await;
        if let Some(reload) = reload {
            let _ = reload.await;
        }
        let joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("a proxy worker panicked")))
                })
                .collect::<std::io::Result<Vec<()>>>()
        })
        .await
        .map_err(std::io::Error::other)?;
        // Requests cut by the drain released their quota holds; let those
        // releases reach the shared store before the process goes.
        self.current
            .load()
            .quota_store
            .flush(std::time::Duration::from_secs(5))
            .await;
        // Spans still batched go before the process does.
        let traces = self.shared.traces.clone();
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        joined.map(|_| ())
    }
}
