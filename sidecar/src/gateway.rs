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
use crate::server::{ServerSettings, serve};

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
}

impl Gateway {
    /// Builds the first generation and binds both listeners.
    pub async fn bind(config: GatewayConfig, source: ConfigSource) -> Result<Self, StartError> {
        let shared = Shared::new();
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
        })
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
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let limits = self.current.load().config.limits.clone();
        let settings = ServerSettings {
            header_read_timeout: limits.header_read_timeout,
            drain_timeout: limits.drain_timeout,
        };
        let proxy_service = crate::proxy::stack(self.current.clone(), self.shared.metrics.clone());
        let admin_service =
            crate::admin::service(self.current.clone(), self.shared.metrics.clone());
        let reloader = match &self.source {
            ConfigSource::File { path, overrides } => Some(Reloader::new(
                path.clone(),
                overrides.clone(),
                self.current.clone(),
                self.shared.clone(),
            )),
            ConfigSource::Fixed => None,
        };
        let proxy = tokio::spawn(serve(
            "proxy",
            self.proxy,
            proxy_service,
            settings,
            stopped(),
        ));
        let admin = tokio::spawn(serve(
            "admin",
            self.admin,
            admin_service,
            settings,
            stopped(),
        ));
        let reload = reloader.map(|r| tokio::spawn(r.run(stopped())));
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        let _ = proxy.await;
        let _ = admin.await;
        if let Some(reload) = reload {
            let _ = reload.await;
        }
    }
}
