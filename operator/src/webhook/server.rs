//! The HTTPS server: `POST /mutate-pods` answers AdmissionReviews; anything
//! else is 404. Served by the operator's one accept loop
//! ([`crate::serve`]) over rustls; the certificate is whatever
//! [`super::certs::CurrentCert`] holds at handshake time.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::admission::{Index, Outcome, review};
use crate::crd::LLMBackend;
use crate::inject::Defaults;
use crate::metrics::Metrics;

/// The path the MutatingWebhookConfiguration points at.
pub const PATH: &str = "/mutate-pods";
/// AdmissionReviews are small; anything larger is refused unread.
const MAX_BODY: usize = 4 << 20;

/// What every request shares.
#[derive(Clone)]
pub struct Webhook {
    pub index: Index,
    pub defaults: Arc<Defaults>,
    pub metrics: Arc<Metrics>,
    /// Events for selected pods left alone; `None` in benchmarks and tests.
    pub recorder: Option<Recorder>,
}

/// Serves until `shutdown` resolves, then lingers and drains.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Webhook,
    limits: crate::serve::Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::serve::serve(
        "webhook",
        listener,
        Some(TlsAcceptor::from(tls)),
        webhook,
        limits,
        shutdown,
    )
    .await;
}

impl crate::serve::Handler for Webhook {
    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static {
        let webhook = self.clone();
        async move { webhook.answer(req).await }
    }
}

impl Webhook {
    /// Answers one HTTP request.
    pub async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST || req.uri().path() != PATH {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        let started = Instant::now();
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "review too large or unreadable\n",
                );
            }
        };
        let (answer, outcome) = review(&body, &self.index, &self.defaults);
        outcome.record(&self.metrics);
        self.metrics
            .admission_took(outcome.result(), started.elapsed().as_secs_f64());
        self.publish(outcome);
        match serde_json::to_vec(&answer) {
            Ok(json) => {
                let mut resp = Response::new(Full::new(Bytes::from(json)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(_) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the review\n",
            ),
        }
    }

    /// A Warning Event on the backend whose pod was refused, or admitted
    /// without the gateway by its opt-out; sent in the background, never
    /// delaying the admission.
    fn publish(&self, outcome: Outcome) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let (backend, namespace, reason, note) = match outcome {
            Outcome::Refused {
                reason,
                backend,
                pod,
                namespace,
                dry_run: false,
            } => {
                let note = format!("pod {pod} refused: {}", reason.as_str());
                (backend, namespace, "InjectionRefused", note)
            }
            Outcome::Admitted {
                reason: crate::inject::Reason::PodOptedOut,
                selected_by: Some(backend),
                pod,
                namespace,
                dry_run: false,
            } => {
                let note = format!("pod {pod} opted out: it runs without attach-gateway");
                (backend, namespace, "NotInjected", note)
            }
            _ => return,
        };
        let Some(obj) = self
            .index
            .backends
            .get(&ObjectRef::new(&backend).within(&namespace))
        else {
            return;
        };
        let recorder = recorder.clone();
        tokio::spawn(async move {
            use kube::Resource;
            let event = Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(note),
                action: "Inject".into(),
                secondary: None,
            };
            let reference = LLMBackend::object_ref(&obj, &());
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "could not publish an event");
            }
        });
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp
}
