//! Hot reload: the config file is checked every `reloadInterval` (and on
//! SIGHUP). A changed file is parsed, validated and built into a new
//! [`Runtime`], then swapped in atomically; requests in flight keep the
//! generation they started with. A file that does not parse or validate is
//! refused: the last good config stays, an error is logged and
//! `attach_config_reloads_total{result="error"}` counts it.
//!
//! A file being written is not applied half-way: a change is applied only
//! once two checks in a row read the same bytes (SIGHUP applies at once:
//! the operator says the file is complete), and a file without `access`
//! denies everything, so a write cut short is never more permissive than
//! the whole file.
//!
//! The new generation owns what its config names: the quota store and the
//! audit sink are rebuilt when their settings change and reused when not
//! (in-memory budgets survive). Only the listen and admin addresses and the
//! `tracing` settings need a restart: `/readyz` lists them under `restartRequired` and
//! `attach_config_restart_required{setting}` is 1 until then.
//!
//! Reading the path follows symlinks, so a ConfigMap volume's atomic
//! `..data` swap is seen like any other change.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, GatewayConfig};
use crate::metrics::ResultLabels;
use crate::runtime::{Runtime, Shared};

/// Command-line values that win over the file, re-applied on every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub port: Option<u16>,
    pub admin_port: Option<u16>,
    pub upstream: Option<String>,
}

impl Overrides {
    pub fn apply(&self, config: &mut GatewayConfig) {
        if let Some(port) = self.port {
            config.listen.port = port;
        }
        if let Some(port) = self.admin_port {
            config.admin.port = port;
        }
        if let Some(url) = &self.upstream {
            config.upstream.url.clone_from(url);
        }
    }
}

/// What a reload check did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Applied,
}

/// Watches one config file.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    overrides: Overrides,
    current: Arc<ArcSwap<Runtime>>,
    shared: Shared,
    last_digest: [u8; 32],
    /// A changed file seen once, waiting to be read the same again.
    settling: Option<[u8; 32]>,
    /// The addresses the sockets were bound with, and the tracer's settings.
    bound: (
        crate::config::Listen,
        crate::config::Listen,
        crate::traces::TracingConfig,
    ),
}

/// Reads and validates a config file, with overrides applied.
pub fn load(path: &std::path::Path, overrides: &Overrides) -> Result<GatewayConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut config: GatewayConfig = serde_yaml::from_str(&text)?;
    config.read_files()?;
    overrides.apply(&mut config);
    config.validate()?;
    Ok(config)
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        overrides: Overrides,
        current: Arc<ArcSwap<Runtime>>,
        shared: Shared,
    ) -> Self {
        let last_digest = digest_of(&path).unwrap_or_default();
        let bound = {
            let config = &current.load().config;
            (
                config.listen.clone(),
                config.admin.clone(),
                config.tracing.clone(),
            )
        };
        Self {
            path,
            overrides,
            current,
            shared,
            last_digest,
            settling: None,
            bound,
        }
    }

    /// Reloads if the file changed since the last check and reads the same
    /// as at the check before (`settled`: apply at once).
    pub fn check_with(&mut self, settled: bool) -> Result<Outcome, ConfigError> {
        let digest = digest_of(&self.path).map_err(|source| ConfigError::Read {
            path: self.path.clone(),
            source,
        })?;
        if digest == self.last_digest {
            self.settling = None;
            return Ok(Outcome::Unchanged);
        }
        if !settled && self.settling != Some(digest) {
            // Still being written, perhaps: look again next time.
            self.settling = Some(digest);
            return Ok(Outcome::Unchanged);
        }
        self.settling = None;
        // Remember the digest even when refused, so one bad file is
        // reported once, not every interval.
        self.last_digest = digest;
        let config = load(&self.path, &self.overrides)?;
        let previous = self.current.load_full();
        let mut runtime = Runtime::build(config, Some(&previous), &self.shared)?;
        runtime.restart_required = self.restart_required(&runtime.config);
        if !runtime.restart_required.is_empty() {
            tracing::warn!(
                settings = ?runtime.restart_required,
                "these settings change only on restart; keeping the current ones"
            );
        }
        self.current.store(Arc::new(runtime));
        Ok(Outcome::Applied)
    }

    /// Reloads if the file changed (and settled) since the last check.
    pub fn check(&mut self) -> Result<Outcome, ConfigError> {
        self.check_with(false)
    }

    /// Settings of `config` that differ from what the process runs with
    /// and take effect only on restart; sets their metric.
    fn restart_required(&self, config: &GatewayConfig) -> Vec<&'static str> {
        let mut pending = Vec::new();
        for (setting, differs) in [
            ("listen", config.listen != self.bound.0),
            ("admin", config.admin != self.bound.1),
            ("tracing", config.tracing != self.bound.2),
        ] {
            self.shared
                .metrics
                .restart_required
                .get_or_create(&crate::metrics::SettingLabels { setting })
                .set(i64::from(differs));
            if differs {
                pending.push(setting);
            }
        }
        pending
    }

    /// Checks every `reloadInterval` and on SIGHUP, until `shutdown`.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::pin!(shutdown);
        loop {
            let interval = self.current.load().config.reload_interval;
            let settled = tokio::select! {
                () = tokio::time::sleep(interval) => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::info!("SIGHUP: checking the config file");
                    true
                }
                () = &mut shutdown => return,
            };
            let result = self.check_with(settled);
            let label = match &result {
                Ok(Outcome::Unchanged) => continue,
                Ok(Outcome::Applied) => {
                    tracing::info!(path = %self.path.display(), "config reloaded");
                    "ok"
                }
                Err(e) => {
                    tracing::error!(
                        path = %self.path.display(),
                        error = %e,
                        "config reload refused; keeping the last good config"
                    );
                    "error"
                }
            };
            self.shared
                .metrics
                .config_reloads
                .get_or_create(&ResultLabels { result: label })
                .inc();
        }
    }
}

fn digest_of(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    Ok(Sha256::digest(std::fs::read(path)?).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &std::path::Path, config: &GatewayConfig) {
        std::fs::write(path, serde_yaml::to_string(config).unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_reload_keeps_an_unchanged_store_and_switches_a_changed_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        let mut config = GatewayConfig::new(Vec::new());
        config.quotas.limits = vec![crate::quota::QuotaLimit {
            requests_per_minute: Some(2),
            ..crate::quota::QuotaLimit::named("per-user")
        }];
        write(&path, &config);
        let shared = Shared::new();
        let first =
            Runtime::build(load(&path, &Overrides::default()).unwrap(), None, &shared).unwrap();
        let current = Arc::new(ArcSwap::from_pointee(first));
        let mut reloader =
            Reloader::new(path.clone(), Overrides::default(), current.clone(), shared);
        let memory = current.load().quota_store.clone();

        config.quotas.max_keys = 4096;
        write(&path, &config);
        assert_eq!(
            reloader.check_with(false).unwrap(),
            Outcome::Unchanged,
            "settling"
        );
        assert_eq!(reloader.check_with(false).unwrap(), Outcome::Applied);
        assert!(Arc::ptr_eq(&memory, &current.load().quota_store), "reused");
        assert_eq!(current.load().quota_store.local().max_keys(), 4096);

        config.quotas.store = crate::quota::store::StoreConfig::Redis {
            url: "redis://127.0.0.1:1/".into(),
            url_file: None,
            fail_mode: crate::quota::store::FailMode::Closed,
            key_prefix: "x:".into(),
        };
        write(&path, &config);
        assert_eq!(reloader.check_with(true).unwrap(), Outcome::Applied);
        assert!(
            current.load().quota_store.shared().is_some(),
            "switched to Redis"
        );
        let redis = current.load().quota_store.clone();

        config.access.rules.clear();
        write(&path, &config);
        assert_eq!(reloader.check_with(true).unwrap(), Outcome::Applied);
        assert!(Arc::ptr_eq(&redis, &current.load().quota_store), "reused");
    }
}
