//! A real Prometheus on a loopback port, and promtool's rule unit tests.
//!
//! Both binaries come from `tests/tools/build.sh` (see
//! [`crate::tools::prometheus_binary`] and [`crate::tools::promtool_binary`]);
//! they are built without service discovery, so configs use
//! `static_configs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::HarnessError;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::wait::until_http_ok;

/// How long Prometheus gets to open its (empty) storage and load its config.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The file [`PrometheusServer::start`] writes the config to, in its folder.
/// Relative paths in the config (`rule_files`) resolve against that folder.
pub const CONFIG_FILE: &str = "prometheus.yml";

/// A running Prometheus. Dropping it stops the server.
#[derive(Debug)]
pub struct PrometheusServer {
    process: Supervised,
    dir: PathBuf,
    port: u16,
    http: reqwest::Client,
}

impl PrometheusServer {
    /// Writes `config_yaml` to `dir/prometheus.yml` and starts `binary` on a
    /// free loopback port with its storage in `dir/data` and the lifecycle
    /// API (`/-/reload`) enabled; returns once `/-/ready` answers.
    pub async fn start(binary: &Path, dir: &Path, config_yaml: &str) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        let config = dir.join(CONFIG_FILE);
        std::fs::write(&config, config_yaml).map_err(HarnessError::io(&config))?;
        let port = free_port()?;
        let mut cmd = process::command(binary);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle")
            .current_dir(dir);
        let mut process = Supervised::spawn("prometheus", cmd, dir.join("prometheus.log"))?;
        until_http_ok(
            &mut process,
            &format!("http://127.0.0.1:{port}/-/ready"),
            READY_TIMEOUT,
            Duration::from_millis(100),
        )
        .await?;
        Ok(Self {
            process,
            dir: dir.to_owned(),
            port,
            http: reqwest::Client::new(),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The folder holding its config, storage and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file; rewrite it, then call [`Self::reload`].
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// Where the server's output goes.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Runs an instant query (`GET /api/v1/query`) and returns `data.result`:
    /// for a vector, an array of `{"metric": {..}, "value": [time, "value"]}`.
    pub async fn query(&self, promql: &str) -> Result<serde_json::Value, HarnessError> {
        let data = self.api_get("/api/v1/query", &[("query", promql)]).await?;
        field(data, "result", "/api/v1/query")
    }

    /// The alerts of every alerting rule (`GET /api/v1/alerts`, `data.alerts`):
    /// each with `labels`, `annotations`, `state` (`pending` or `firing`),
    /// `activeAt` and `value`.
    pub async fn alerts(&self) -> Result<Vec<serde_json::Value>, HarnessError> {
        let data = self.api_get("/api/v1/alerts", &[]).await?;
        array(field(data, "alerts", "/api/v1/alerts")?, "/api/v1/alerts")
    }

    /// The scrape targets in use (`GET /api/v1/targets`,
    /// `data.activeTargets`): each with `labels`, `scrapeUrl`, `health`
    /// (`up`, `down` or `unknown`), `lastError` and `lastScrape`. Prometheus
    /// applies target changes every 5 seconds, so after a start or a reload
    /// the list can be empty (or stale) for that long: poll.
    pub async fn targets(&self) -> Result<Vec<serde_json::Value>, HarnessError> {
        let data = self.api_get("/api/v1/targets", &[]).await?;
        array(
            field(data, "activeTargets", "/api/v1/targets")?,
            "/api/v1/targets",
        )
    }

    /// Makes the server read its config (and rule files) again
    /// (`POST /-/reload`); fails with the server's message if it rejects them.
    pub async fn reload(&self) -> Result<(), HarnessError> {
        let url = format!("{}/-/reload", self.url());
        let http_err = |source| HarnessError::Http {
            what: url.clone(),
            source,
        };
        let response = self.http.post(&url).send().await.map_err(http_err)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.map_err(http_err)?;
        Err(HarnessError::Status {
            what: url,
            status: status.as_u16(),
            body,
        })
    }

    /// GETs an HTTP API `path` and returns the `data` of a `success` answer.
    async fn api_get(
        &self,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<serde_json::Value, HarnessError> {
        let base = format!("{}{path}", self.url());
        let url = reqwest::Url::parse_with_params(&base, params)
            .map_err(|e| HarnessError::Other(format!("{base}: {e}")))?;
        let http_err = |source| HarnessError::Http {
            what: base.clone(),
            source,
        };
        let response = self.http.get(url).send().await.map_err(http_err)?;
        let status = response.status();
        let body = response.text().await.map_err(http_err)?;
        api_data(&base, status.as_u16(), &body)
    }
}

/// The `data` of an HTTP API answer, or an error naming `what` with the
/// status and body (the API answers `{"status": "error", "error": ..}` with
/// 4xx or 5xx).
fn api_data(what: &str, status: u16, body: &str) -> Result<serde_json::Value, HarnessError> {
    let bad = || HarnessError::Status {
        what: what.to_owned(),
        status,
        body: body.to_owned(),
    };
    if !(200..300).contains(&status) {
        return Err(bad());
    }
    let mut answer: serde_json::Value =
        serde_json::from_str(body).map_err(|source| HarnessError::Json {
            what: what.to_owned(),
            source,
        })?;
    if answer.get("status").and_then(serde_json::Value::as_str) != Some("success") {
        return Err(bad());
    }
    match answer.get_mut("data") {
        Some(data) => Ok(data.take()),
        None => Err(bad()),
    }
}

/// `data[name]`, or an error naming `what`.
fn field(
    mut data: serde_json::Value,
    name: &str,
    what: &str,
) -> Result<serde_json::Value, HarnessError> {
    data.get_mut(name)
        .map(serde_json::Value::take)
        .ok_or_else(|| HarnessError::Other(format!("{what}: no data.{name} in {data}")))
}

/// The elements of a JSON array, or an error naming `what`.
fn array(value: serde_json::Value, what: &str) -> Result<Vec<serde_json::Value>, HarnessError> {
    match value {
        serde_json::Value::Array(items) => Ok(items),
        other => Err(HarnessError::Other(format!(
            "{what}: expected an array, got {other}"
        ))),
    }
}

/// Runs `promtool test rules <test_files>` (alerting and recording rule
/// unit tests) and returns its output; if a test fails, or promtool cannot
/// run them, the error carries promtool's stdout and stderr.
pub fn promtool_test_rules(promtool: &Path, test_files: &[&Path]) -> Result<String, HarnessError> {
    let output = std::process::Command::new(promtool)
        .arg("test")
        .arg("rules")
        .args(test_files)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn {
            program: promtool.display().to_string(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        Ok(format!("{stdout}{stderr}"))
    } else {
        Err(HarnessError::Other(format!(
            "promtool test rules {} failed ({}):\n{stdout}{stderr}",
            test_files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            output.status,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_data_returns_the_data_of_a_success() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        let data = api_data("q", 200, body).expect("success");
        assert_eq!(
            field(data, "result", "q").expect("has result"),
            serde_json::json!([])
        );
    }

    #[test]
    fn api_data_reports_an_error_answer_with_its_body() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let err = api_data("q", 400, body).expect_err("an error");
        let text = err.to_string();
        assert!(
            text.contains("400") && text.contains("parse error"),
            "{text}"
        );
    }

    #[test]
    fn field_and_array_name_what_is_missing() {
        let data = serde_json::json!({"alerts": {"not": "an array"}});
        let err = field(data.clone(), "activeTargets", "/api/v1/targets").expect_err("missing");
        assert!(err.to_string().contains("data.activeTargets"), "{err}");
        let alerts = field(data, "alerts", "/api/v1/alerts").expect("present");
        let err = array(alerts, "/api/v1/alerts").expect_err("not an array");
        assert!(err.to_string().contains("expected an array"), "{err}");
    }
}
