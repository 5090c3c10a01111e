//! Traces over OTLP/HTTP, off by default.
//!
//! Each request the gateway audits gets a server span, `"{method}
//! {endpoint}"`, from its arrival until its answer ends (the whole stream),
//! with the decision, its reason, the user (or a hash of it), the model and
//! the tokens; a request forwarded to the model gets a client span,
//! `"{operation} {model}"` in the GenAI conventions, whose context goes to
//! the model in `traceparent`. A caller's own `traceparent` is the server
//! span's parent. See [`request_span`].
//!
//! Spans are batched and sent by the SDK's own thread, so the request path
//! never waits on the collector; a collector that is down loses spans, never
//! requests.

pub mod export;
pub mod request_span;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use serde::{Deserialize, Serialize};

pub use request_span::RequestSpan;

/// The service name spans carry when neither the config nor
/// `OTEL_SERVICE_NAME` names one.
pub const DEFAULT_SERVICE_NAME: &str = "attach-gateway";

/// How long one export may take before the batch is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `tracing` section of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans
    /// go to `<endpoint>/v1/traces`. No endpoint, no traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The share of new traces kept (0 to 1). A caller's `traceparent`
    /// decides for the traces it starts.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// Put a SHA-256 of the user id in `user.id` instead of the id itself.
    /// A hash hides ids from a casual reader of the traces, not from one
    /// who can guess them.
    #[serde(default)]
    pub hash_user_id: bool,
    /// `service.name` (default: `$OTEL_SERVICE_NAME`, else
    /// `attach-gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

fn default_ratio() -> f64 {
    1.0
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            sample_ratio: default_ratio(),
            hash_user_id: false,
            service_name: None,
        }
    }
}

impl TracingConfig {
    /// Checks the endpoint and the ratio; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "sampleRatio must be between 0 and 1, not {}",
                self.sample_ratio
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            traces_url(endpoint)?;
        }
        Ok(())
    }
}

/// `<endpoint>/v1/traces`, for an http or https URL with a host.
fn traces_url(endpoint: &str) -> Result<String, String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "endpoint {endpoint:?} must be an http:// or https:// URL with a host"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("endpoint {endpoint:?} must not have a query"));
    }
    Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("tracing: {0}")]
    Invalid(String),
    #[error("tracing needs a Tokio runtime to send spans from")]
    NoRuntime,
    #[error("tracing: the OTLP exporter could not be built: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The process's tracer: cheap to clone, and off unless an endpoint is set.
#[derive(Debug, Clone, Default)]
pub struct Traces {
    on: Option<Arc<On>>,
}

#[derive(Debug)]
struct On {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    hash_user_id: bool,
}

impl Traces {
    /// No traces.
    pub fn off() -> Self {
        Self::default()
    }

    /// Starts exporting as `config` says (nothing without an endpoint).
    /// Spans are sent from the current Tokio runtime.
    pub fn start(
        config: &TracingConfig,
        client: crate::idp_client::IdpClient,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, TracingError> {
        let Some(endpoint) = &config.endpoint else {
            return Ok(Self::off());
        };
        config.validate().map_err(TracingError::Invalid)?;
        let url = traces_url(endpoint).map_err(TracingError::Invalid)?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| TracingError::NoRuntime)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(export::HyperExport::new(
                client,
                handle,
                EXPORT_TIMEOUT,
                metrics,
            ))
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        let mut resource = Resource::builder();
        if let Some(name) = &config.service_name {
            resource = resource.with_service_name(name.clone());
        } else if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer(crate::BINARY_NAME);
        tracing::info!(endpoint = %endpoint, ratio = config.sample_ratio, "sending traces over OTLP/HTTP");
        Ok(Self {
            on: Some(Arc::new(On {
                provider,
                tracer,
                hash_user_id: config.hash_user_id,
            })),
        })
    }

    /// Spans kept in memory and exported as each ends (tests).
    #[cfg(test)]
    pub(crate) fn in_memory(
        hash_user_id: bool,
    ) -> (Self, opentelemetry_sdk::trace::InMemorySpanExporter) {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer(crate::BINARY_NAME);
        let on = On {
            provider,
            tracer,
            hash_user_id,
        };
        (
            Self {
                on: Some(Arc::new(on)),
            },
            exporter,
        )
    }

    /// Whether spans are made at all.
    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// A request's span, parented by the caller's `traceparent` if any.
    pub fn request(&self, headers: &http::HeaderMap, method: &http::Method) -> Option<RequestSpan> {
        let on = self.on.as_ref()?;
        Some(RequestSpan::new(
            on.tracer.clone(),
            headers,
            method,
            on.hash_user_id,
        ))
    }

    /// Sends the spans still queued; blocks up to the export timeout, so
    /// call it off the async threads.
    pub fn shutdown(&self) {
        if let Some(on) = &self.on
            && let Err(e) = on.provider.shutdown_with_timeout(EXPORT_TIMEOUT)
        {
            tracing::warn!(error = %e, "the last spans could not be sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_is_the_endpoint_with_the_signal_path() {
        for (endpoint, want) in [
            (
                "http://collector:4318",
                Ok("http://collector:4318/v1/traces"),
            ),
            (
                "http://collector:4318/",
                Ok("http://collector:4318/v1/traces"),
            ),
            (
                "https://otel.example/base",
                Ok("https://otel.example/base/v1/traces"),
            ),
            ("collector:4318", Err(())),
            ("grpc://collector:4317", Err(())),
            ("http://", Err(())),
            ("http://c/?x=1", Err(())),
        ] {
            assert_eq!(
                traces_url(endpoint).map_err(|_| ()),
                want.map(str::to_owned),
                "{endpoint}"
            );
        }
    }

    #[test]
    fn a_ratio_outside_zero_to_one_is_refused() {
        for (ratio, ok) in [
            (0.0, true),
            (0.25, true),
            (1.0, true),
            (1.5, false),
            (-0.1, false),
        ] {
            let config = TracingConfig {
                sample_ratio: ratio,
                ..TracingConfig::default()
            };
            assert_eq!(config.validate().is_ok(), ok, "{ratio}");
        }
        assert!(f64::NAN.partial_cmp(&0.0).is_none());
        let nan = TracingConfig {
            sample_ratio: f64::NAN,
            ..TracingConfig::default()
        };
        assert!(nan.validate().is_err());
    }

    #[test]
    fn without_an_endpoint_nothing_starts_even_outside_a_runtime() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let traces = Traces::start(
            &TracingConfig::default(),
            crate::idp_client::IdpClient::new(),
            metrics,
        )
        .expect("off");
        assert!(!traces.is_on());
        assert!(
            traces
                .request(&http::HeaderMap::new(), &http::Method::GET)
                .is_none()
        );
    }

    #[test]
    fn an_endpoint_without_a_runtime_is_an_error_not_a_panic() {
        let config = TracingConfig {
            endpoint: Some("http://127.0.0.1:4318".into()),
            ..TracingConfig::default()
        };
        assert!(matches!(
            Traces::start(
                &config,
                crate::idp_client::IdpClient::new(),
                Arc::new(crate::metrics::Metrics::new())
            ),
            Err(TracingError::NoRuntime)
        ));
    }
}
