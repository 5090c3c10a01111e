//! Runs the real `attach-gateway` binary as a process, with its config file
//! laid out the way the kubelet mounts a ConfigMap (`config.yaml ->
//! ..data/config.yaml`, `..data -> ..<timestamp>`), so tests can swap it
//! atomically as the kubelet does.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use attach_sidecar::config::GatewayConfig;

use crate::HarnessError;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::wait::until_http_ok;

/// Builds (once per test process) and returns the gateway binary, so a test
/// never runs a stale one. It is built with the test-only quota clock.
pub fn binary() -> Result<PathBuf, HarnessError> {
    crate::binaries::build("attach-sidecar", "attach-gateway")
}

/// The environment variable that freezes a test gateway's quota clock.
pub const TEST_CLOCK_ENV: &str = "ATTACH_TEST_CLOCK";

/// Where every test gateway's quota clock stands (unless a test says
/// otherwise): one second into a UTC day, so no minute or day window ends
/// during a test unless the test moves the clock
/// ([`GatewayProcess::advance_clock`]).
pub const TEST_CLOCK: u64 = 20_000 * 86_400 + 1;

/// `(ATTACH_TEST_CLOCK, TEST_CLOCK)`, for tests that start the gateway
/// binary themselves (injected pods).
pub fn test_clock_env() -> (&'static str, String) {
    (TEST_CLOCK_ENV, TEST_CLOCK.to_string())
}

/// A running gateway process. Stopped on drop.
#[derive(Debug)]
pub struct GatewayProcess {
    process: Supervised,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:<proxy port>`.
    pub url: String,
    /// `http://127.0.0.1:<admin port>`.
    pub admin_url: String,
    generation: u32,
}

impl GatewayProcess {
    /// Starts the gateway with `config` (its ports are replaced by free ones)
    /// and waits until `/readyz` says the keys are loaded.
    pub async fn start(mut config: GatewayConfig) -> Result<Self, HarnessError> {
        let mut gw = Self::spawn_with(&mut config, &[], &[]).await?;
        gw.wait_ready().await?;
        Ok(gw)
    }

    /// Starts the gateway with `config` and extra flags, waiting only until
    /// the admin port answers `/healthz`.
    pub async fn spawn_with(
        config: &mut GatewayConfig,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, HarnessError> {
        config.listen.address = [127, 0, 0, 1].into();
        config.listen.port = free_port()?;
        config.admin.address = [127, 0, 0, 1].into();
        config.admin.port = free_port()?;
        let dir = new_dir()?;
        let mut generation = 0;
        write_configmap(dir.path(), config, &mut generation)?;
        let mut cmd = process::command(binary()?);
        cmd.arg("--config")
            .arg(dir.path().join("config.yaml"))
            .arg("--log-level")
            .arg("attach_sidecar=debug,info")
            .args(extra_args)
            .env(TEST_CLOCK_ENV, TEST_CLOCK.to_string())
            .envs(env.iter().copied());
        let mut gw =
            Self::launch(cmd, dir, config.listen.port, config.admin.port, "/healthz").await?;
        gw.generation = generation;
        Ok(gw)
    }

    /// Starts the standalone gateway (no `--config`): env vars and flags
    /// only, and waits until its keys are loaded.
    pub async fn standalone(env: &[(&str, &str)], args: &[&str]) -> Result<Self, HarnessError> {
        let (port, admin_port) = (free_port()?, free_port()?);
        let mut cmd = process::command(binary()?);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--port")
            .arg(port.to_string())
            .arg("--admin-port")
            .arg(admin_port.to_string())
            .args(args)
            .env(TEST_CLOCK_ENV, TEST_CLOCK.to_string())
            .envs(env.iter().copied());
        Self::launch(cmd, new_dir()?, port, admin_port, "/readyz").await
    }

    async fn launch(
        cmd: Command,
        dir: tempfile::TempDir,
        port: u16,
        admin_port: u16,
        ready_path: &str,
    ) -> Result<Self, HarnessError> {
        let mut process = Supervised::spawn("attach-gateway", cmd, dir.path().join("gateway.log"))?;
        let admin_url = format!("http://127.0.0.1:{admin_port}");
        let probe = format!("{admin_url}{ready_path}");
        until_http_ok(
            &mut process,
            &probe,
            Duration::from_secs(30),
            Duration::from_millis(50),
        )
        .await?;
        Ok(Self {
            process,
            dir,
            url: format!("http://127.0.0.1:{port}"),
            admin_url,
            generation: 0,
        })
    }

    /// Waits until `/readyz` answers 200 (every issuer's keys loaded).
    pub async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let ready = format!("{}/readyz", self.admin_url);
        until_http_ok(
            &mut self.process,
            &ready,
            Duration::from_secs(30),
            Duration::from_millis(50),
        )
        .await
    }

    /// Replaces the config the way the kubelet updates a ConfigMap volume: a
    /// new timestamped folder, then an atomic rename of the `..data` link.
    pub fn write_config(&mut self, config: &GatewayConfig) -> Result<(), HarnessError> {
        write_configmap(self.dir.path(), config, &mut self.generation)
    }

    /// Replaces the config file's content with raw text (to test refusals).
    pub fn write_raw_config(&mut self, text: &str) -> Result<(), HarnessError> {
        write_configmap_text(self.dir.path(), text, &mut self.generation)
    }

    /// `GET /metrics` from the admin port.
    pub async fn metrics(&self) -> Result<String, HarnessError> {
        let url = format!("{}/metrics", self.admin_url);
        reqwest::get(&url)
            .await
            .map_err(|source| HarnessError::Http {
                what: url.clone(),
                source,
            })?
            .text()
            .await
            .map_err(|source| HarnessError::Http { what: url, source })
    }

    /// Moves the gateway's frozen quota clock forward by `seconds`; returns
    /// where it now stands.
    pub async fn advance_clock(&self, seconds: u64) -> Result<u64, HarnessError> {
        let url = format!("{}/test/clock/advance?seconds={seconds}", self.admin_url);
        let response = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .map_err(|source| HarnessError::Http {
                what: url.clone(),
                source,
            })?;
        let text = response.text().await.map_err(|source| HarnessError::Http {
            what: url.clone(),
            source,
        })?;
        text.trim()
            .parse()
            .map_err(|_| HarnessError::Other(format!("{url}: {text}")))
    }

    /// `GET /readyz` from the admin port, as JSON.
    pub async fn readyz(&self) -> Result<serde_json::Value, HarnessError> {
        let url = format!("{}/readyz", self.admin_url);
        reqwest::get(&url)
            .await
            .map_err(|source| HarnessError::Http {
                what: url.clone(),
                source,
            })?
            .json()
            .await
            .map_err(|source| HarnessError::Http { what: url, source })
    }

    /// The config file's path (for tests that write it by hand).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Sends SIGKILL: the process dies without draining or settling.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// The log once `found` holds for it, or after `timeout` (whichever
    /// comes first; the caller asserts). A line the gateway writes after the
    /// answer, such as a stream's audit line when it ends, can land a moment
    /// after the client has read the last byte.
    pub async fn log_until(&self, timeout: Duration, found: impl Fn(&str) -> bool) -> String {
        let started = std::time::Instant::now();
        loop {
            let log = self.log();
            if found(&log) || started.elapsed() >= timeout {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Fails if the process exited.
    pub fn check_running(&mut self) -> Result<(), HarnessError> {
        self.process.check_running()
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit.
    pub fn stop(&mut self, grace: Duration) {
        self.process.stop(grace);
    }
}

fn new_dir() -> Result<tempfile::TempDir, HarnessError> {
    tempfile::Builder::new()
        .prefix("attach-gateway-")
        .tempdir()
        .map_err(HarnessError::io("tempdir"))
}

/// Reads a counter's value from Prometheus text, summing every series whose
/// line starts with `prefix` (a metric name, optionally with labels).
pub fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn write_configmap(
    dir: &Path,
    config: &GatewayConfig,
    generation: &mut u32,
) -> Result<(), HarnessError> {
    let text = serde_json::to_string_pretty(config).map_err(|source| HarnessError::Json {
        what: "gateway config".into(),
        source,
    })?;
    write_configmap_text(dir, &text, generation)
}

fn write_configmap_text(dir: &Path, text: &str, generation: &mut u32) -> Result<(), HarnessError> {
    write_configmap_file(dir, "config.yaml", text, generation)
}

/// Writes `text` as the file `name` of a ConfigMap volume at `dir`, the way
/// the kubelet updates one: a new `..gen_N` folder, then an atomic rename of
/// the `..data` link (`name -> ..data/name`).
pub fn write_configmap_file(
    dir: &Path,
    name: &str,
    text: &str,
    generation: &mut u32,
) -> Result<(), HarnessError> {
    *generation += 1;
    let data_dir = format!("..gen_{:04}", *generation);
    let target = dir.join(&data_dir);
    std::fs::create_dir_all(&target).map_err(HarnessError::io(&target))?;
    std::fs::write(target.join(name), text).map_err(HarnessError::io(&target))?;
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    symlink(&data_dir, &tmp_link).map_err(HarnessError::io(&tmp_link))?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp_link, dir.join("..data")).map_err(HarnessError::io(dir.join("..data")))?;
    let file_link = dir.join(name);
    if !file_link.exists() {
        symlink(format!("..data/{name}"), &file_link).map_err(HarnessError::io(&file_link))?;
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}
