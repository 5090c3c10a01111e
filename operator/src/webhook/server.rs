//! The HTTPS server: `POST /mutate-pods` answers AdmissionReviews; anything
//! else is 404. Plain hyper over rustls; the certificate is whatever
//! [`super::certs::CurrentCert`] holds at handshake time.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
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

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Webhook,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "webhook TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(webhook.handle(req).await) }
            });
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "webhook connection");
            }
        });
    }
}

impl Webhook {
    /// Answers one HTTP request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
            .admission_duration
            .observe(started.elapsed().as_secs_f64());
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

    /// A Warning Event on the backend whose pod was left alone; sent in the
    /// background, never delaying the admission.
    fn publish(&self, outcome: Outcome) {
        let (
            Some(recorder),
            Outcome::Skipped {
                reason,
                selected_by: Some(backend),
                pod,
                namespace,
                dry_run: false,
            },
        ) = (&self.recorder, outcome)
        else {
            return;
        };
        if reason == crate::inject::SkipReason::AlreadyInjected {
            return;
        }
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
                reason: "NotInjected".into(),
                note: Some(format!("pod {pod} was not injected: {}", reason.as_str())),
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
