//! The OTLP exporter's HTTP transport: the gateway's own hyper/rustls client
//! ([`IdpClient`]), so span export needs no second HTTP or TLS stack.
//!
//! The SDK exports from its own thread, outside any Tokio runtime; each
//! export is spawned onto the gateway's runtime and awaited from there.
//! Every export is counted in `attach_trace_exports_total{result}`, and a
//! failed one is logged when it follows a success (the SDK itself logs
//! nothing), so a collector that refuses or is gone is never silent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError};

use crate::idp_client::IdpClient;
use crate::metrics::{Metrics, ResultLabels};

/// Sends OTLP requests through the gateway's runtime.
#[derive(Debug, Clone)]
pub struct HyperExport {
    client: IdpClient,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Whether the last export failed (to log a failure once per outage).
    failing: Arc<AtomicBool>,
}

impl HyperExport {
    /// Exports go through `client` and run on `runtime`; one that takes
    /// longer than `timeout` fails.
    pub fn new(
        client: IdpClient,
        runtime: tokio::runtime::Handle,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            runtime,
            timeout,
            metrics,
            failing: Arc::default(),
        }
    }

    /// Counts an export, and logs a failure that follows a success and a
    /// success that ends a run of failures.
    fn record(&self, failure: Option<&str>) {
        let result = if failure.is_some() { "error" } else { "ok" };
        self.metrics
            .trace_exports
            .get_or_create(&ResultLabels { result })
            .inc();
        let was_failing = self.failing.swap(failure.is_some(), Ordering::Relaxed);
        match failure {
            Some(why) if !was_failing => tracing::warn!(
                error = why,
                "the collector did not take a batch of spans; they are lost \
                 (attach_trace_exports_total{{result=\"error\"}} counts each)"
            ),
            None if was_failing => tracing::info!("the collector takes spans again"),
            _ => {}
        }
    }
}

#[async_trait]
impl HttpClient for HyperExport {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let sent = self.runtime.spawn(async move {
            tokio::time::timeout(timeout, client.send_request(request)).await
        });
        let result: Result<http::Response<Bytes>, HttpError> = match sent.await {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(e))) => Err(Box::new(e)),
            Ok(Err(_)) => Err(format!("no answer from the collector within {timeout:?}").into()),
            // The runtime is shutting down (or the task panicked).
            Err(e) => Err(Box::new(e)),
        };
        match &result {
            Ok(response) if response.status().is_success() => self.record(None),
            Ok(response) => self.record(Some(&format!("status {}", response.status()))),
            Err(e) => self.record(Some(&e.to_string())),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_export_from_outside_the_runtime_reaches_the_server_and_brings_its_status_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.ends_with(b"span-bytes") {
                let n = socket.read(&mut buf).await.expect("read");
                assert!(n > 0, "the request ended early: {seen:?}");
                seen.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
                .await
                .expect("write");
            String::from_utf8_lossy(&seen).into_owned()
        });
        let metrics = Arc::new(Metrics::new());
        let export = HyperExport::new(
            IdpClient::new(),
            tokio::runtime::Handle::current(),
            Duration::from_secs(5),
            metrics.clone(),
        );
        let request = http::Request::post(format!("http://{addr}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(Bytes::from_static(b"span-bytes"))
            .expect("request");
        // The SDK's batch thread blocks on the export outside any runtime.
        let response = tokio::task::spawn_blocking(move || {
            futures_executor::block_on(export.send_bytes(request))
        })
        .await
        .expect("join")
        .expect("sent");
        assert_eq!(response.status(), 503);
        assert_eq!(response.body().as_ref(), b"busy");
        assert!(
            metrics
                .encode()
                .contains("attach_trace_exports_total{result=\"error\"} 1"),
            "a refused batch is counted"
        );
        let seen = served.await.expect("server");
        assert!(seen.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{seen}");
        assert!(
            seen.contains("content-type: application/x-protobuf"),
            "{seen}"
        );
    }

    #[tokio::test]
    async fn a_collector_that_never_answers_fails_the_export_in_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(socket);
        });
        let metrics = Arc::new(Metrics::new());
        let export = HyperExport::new(
            IdpClient::new(),
            tokio::runtime::Handle::current(),
            Duration::from_millis(200),
            metrics.clone(),
        );
        let request = http::Request::post(format!("http://{addr}/v1/traces"))
            .body(Bytes::new())
            .expect("request");
        let result = tokio::task::spawn_blocking(move || {
            futures_executor::block_on(export.send_bytes(request))
        })
        .await
        .expect("join");
        let error = result.expect_err("timed out").to_string();
        assert!(error.contains("no answer from the collector"), "{error}");
        assert!(
            metrics
                .encode()
                .contains("attach_trace_exports_total{result=\"error\"} 1")
        );
    }
}
