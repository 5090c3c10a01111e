//! Bounded waits for readiness.

use std::time::{Duration, Instant};

use crate::HarnessError;
use crate::process::Supervised;

/// Polls `probe` every `interval` until it returns `true`. Fails as soon as
/// `process` exits, or when `timeout` passes, with the tail of its log.
pub async fn until_ready(
    process: &mut Supervised,
    timeout: Duration,
    interval: Duration,
    mut probe: impl AsyncFnMut() -> bool,
) -> Result<(), HarnessError> {
    let started = Instant::now();
    loop {
        process.check_running()?;
        if probe().await {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(process.not_ready(started.elapsed()));
        }
        tokio::time::sleep(interval).await;
    }
}

/// [`until_ready`] with the usual probe: a GET of `url` answered 2xx.
pub async fn until_http_ok(
    process: &mut Supervised,
    url: &str,
    timeout: Duration,
    interval: Duration,
) -> Result<(), HarnessError> {
    let http = reqwest::Client::new();
    until_ready(process, timeout, interval, async || {
        http.get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
}

/// [`until_ready`] for a server that binds a port the kernel picks and
/// writes its `host:port` to `addr_file` (so no port is picked and released
/// first): waits until the file names an address whose `ready_path` answers
/// 2xx, and returns `http://host:port`.
pub async fn until_addr_file_serves(
    process: &mut Supervised,
    addr_file: &std::path::Path,
    ready_path: &str,
    timeout: Duration,
    interval: Duration,
) -> Result<String, HarnessError> {
    let http = reqwest::Client::new();
    let mut url = String::new();
    until_ready(process, timeout, interval, async || {
        let Some(addr) = std::fs::read_to_string(addr_file)
            .ok()
            .filter(|s| !s.trim().is_empty())
        else {
            return false;
        };
        url = format!("http://{}", addr.trim());
        http.get(format!("{url}{ready_path}"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await?;
    Ok(url)
}
