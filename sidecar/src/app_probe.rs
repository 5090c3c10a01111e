//! Application probes run by the gateway on the kubelet's behalf. The
//! injector moves the model onto loopback, where the kubelet cannot reach
//! it, and rewrites each probe that targeted the model's port to
//! `GET <admin port>/probe/<container>/<kind>`. The original probes come in
//! `ATTACH_APP_PROBES` (JSON); the admin listener answers a mapped path by
//! running the original probe against the loopback port and returning its
//! status code, with no body. Paths not in the map get 404, so the admin
//! port never becomes a way around authentication.

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// The environment variable holding the probes, as JSON.
pub const ENV: &str = "ATTACH_APP_PROBES";
/// Every probe path starts with this.
pub const PATH_PREFIX: &str = "/probe/";

/// One original probe, against the model on loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppProbe {
    /// The model's loopback port.
    pub port: u16,
    /// The HTTP path; absent for a TCP probe (connect only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Extra request headers of an HTTP probe.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The probe's timeout (default 1 s, as the kubelet's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// The probes by admin path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AppProbes(pub BTreeMap<String, AppProbe>);

impl AppProbes {
    /// Reads `ATTACH_APP_PROBES`; absent means none.
    pub fn from_env() -> Result<Self, serde_json::Error> {
        match std::env::var(ENV) {
            Ok(json) if !json.trim().is_empty() => serde_json::from_str(&json),
            _ => Ok(Self::default()),
        }
    }

    /// The probe behind an admin path.
    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.0.get(path)
    }

    /// Runs the probe behind `path`: `None` when no probe has that path.
    pub async fn run(&self, path: &str) -> Option<StatusCode> {
        let probe = self.get(path)?;
        Some(probe.run().await)
    }
}

impl AppProbe {
    /// Runs the probe: the upstream's status for HTTP (redirects are not
    /// followed; the kubelet counts 2xx and 3xx as success), 200 for a TCP
    /// connect, 503 when the model does not answer in time.
    pub async fn run(&self) -> StatusCode {
        let timeout = Duration::from_secs(u64::from(self.timeout_seconds.unwrap_or(1).max(1)));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let Some(path) = &self.path else {
            return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => StatusCode::OK,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
        };
        match tokio::time::timeout(timeout, self.http_get(addr, path)).await {
            Ok(Some(status)) => status,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    async fn http_get(&self, addr: std::net::SocketAddr, path: &str) -> Option<StatusCode> {
        use http_body_util::Empty;
        use hyper_util::rt::TokioIo;
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let mut request = http::Request::get(path).header(http::header::HOST, addr.to_string());
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .header(http::header::USER_AGENT, "attach-gateway-probe")
            .body(Empty::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        Some(response.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_from_the_injected_json() {
        let json = r#"{"/probe/ollama/readiness": {"port": 15434, "path": "/", "headers": {"X-Probe": "1"}},
                       "/probe/ollama/liveness": {"port": 15434}}"#;
        let probes: AppProbes = serde_json::from_str(json).unwrap();
        assert_eq!(
            probes
                .get("/probe/ollama/readiness")
                .unwrap()
                .path
                .as_deref(),
            Some("/")
        );
        assert_eq!(probes.get("/probe/ollama/liveness").unwrap().path, None);
        assert!(probes.get("/probe/other").is_none());
        assert!(
            serde_json::from_str::<AppProbes>(r#"{"/p": {"port": 1, "url": "http://x"}}"#).is_err()
        );
    }

    #[tokio::test]
    async fn a_probe_reports_the_models_answer_or_503() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if head.starts_with("GET /healthy ") && head.contains("x-probe: 1") {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let probe = |path: Option<&str>| AppProbe {
            port,
            path: path.map(str::to_owned),
            headers: [("x-probe".to_owned(), "1".to_owned())].into(),
            timeout_seconds: None,
        };
        assert_eq!(probe(Some("/healthy")).run().await, StatusCode::OK);
        assert_eq!(
            probe(Some("/sick")).run().await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(probe(None).run().await, StatusCode::OK, "tcp connect");
        let closed = AppProbe {
            port: {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            },
            path: Some("/".into()),
            headers: BTreeMap::new(),
            timeout_seconds: Some(1),
        };
        assert_eq!(closed.run().await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
