//! The mutating admission webhook that injects attach-gateway: an HTTPS
//! server on every replica (leader or not), deciding from in-memory caches.

pub mod admission;
pub mod certs;
pub mod server;

use kube::Client;

use crate::controller::resolve::IdpStores;
use crate::reflectors::Caches;
use admission::Index;

/// Where the serving certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CertMode {
    /// The operator keeps a CA and certificate in a Secret and sets the
    /// caBundle itself.
    SelfManaged,
    /// cert-manager writes the certificate (mounted as files) and its CA
    /// injector sets the caBundle.
    CertManager,
}

/// How to run the webhook.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub addr: std::net::SocketAddr,
    pub cert_mode: CertMode,
    pub certs: certs::CertSettings,
    /// The MutatingWebhookConfiguration whose caBundle is kept.
    pub configuration: String,
    /// Where cert-manager's `tls.crt` and `tls.key` are mounted.
    pub cert_dir: std::path::PathBuf,
    pub defaults: crate::inject::Defaults,
    /// The listener's deadlines, and its linger after shutdown.
    pub limits: crate::serve::Limits,
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    #[error("reading {path}: {source}")]
    CertFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the caches stopped before they were filled")]
    CachesGone,
}

/// Starts the webhook: certificate, listener, over the shared caches.
/// Returns once it serves (so readiness can say so), with the server's
/// task: it stops when `shutdown` resolves and ends once drained, which
/// the process awaits before exiting.
pub async fn start(
    client: Client,
    caches: &Caches,
    settings: WebhookSettings,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    recorder: kube::runtime::events::Recorder,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, WebhookError> {
    use std::sync::Arc;
    let index = Index {
        backends: caches.backends.store(),
        idps: IdpStores {
            namespaced: caches.idps.store(),
            cluster: caches.cluster_idps.store(),
        },
    };
    let (key, renew) = match settings.cert_mode {
        CertMode::SelfManaged => {
            let current = certs::ensure(&client, &settings.certs).await?;
            if let Err(e) =
                certs::patch_ca_bundle(&client, &settings.configuration, &current.ca_pem).await
            {
                // Installed after us, perhaps: the renewal loop tries again.
                tracing::warn!(error = %e, "caBundle not set yet");
            }
            (current.certified_key()?, Some(current))
        }
        CertMode::CertManager => (read_cert_dir(&settings.cert_dir)?, None),
    };
    let current = Arc::new(certs::CurrentCert::new(key));
    let tls = Arc::new(certs::server_config(current.clone())?);
    // Before the caches are filled, a decision could miss a backend and
    // admit a pod unprotected.
    if !caches.ready().await {
        return Err(WebhookError::CachesGone);
    }
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: settings.addr,
            source,
        })?;
    expiry_to(&metrics, &current);
    let webhook = server::Webhook {
        index,
        defaults: Arc::new(settings.defaults.clone()),
        metrics: metrics.clone(),
        recorder: Some(recorder),
    };
    let limits = settings.limits;
    let served = tokio::spawn(server::serve(
        listener,
        tls,
        webhook,
        limits,
        shutdown.clone(),
    ));
    tokio::spawn(keep_current(
        client, settings, current, renew, metrics, shutdown,
    ));
    Ok(served)
}

/// Publishes when the served certificate expires.
fn expiry_to(metrics: &crate::metrics::Metrics, current: &certs::CurrentCert) {
    match current.not_after() {
        Some(not_after) => {
            metrics.webhook_certificate_expiry.set(not_after);
        }
        None => tracing::warn!("cannot read the served certificate's expiry"),
    }
}

fn read_cert_dir(dir: &std::path::Path) -> Result<rustls::sign::CertifiedKey, WebhookError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| WebhookError::CertFile { path, source })
    };
    Ok(certs::WebhookCerts::from_pem(read("tls.crt")?, read("tls.key")?).certified_key()?)
}

/// Every minute: renew (self-managed) or reload the mounted files
/// (cert-manager), and keep the caBundle set.
async fn keep_current(
    client: Client,
    settings: WebhookSettings,
    current: std::sync::Arc<certs::CurrentCert>,
    mut certs_now: Option<certs::WebhookCerts>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            () = &mut shutdown => return,
        }
        match settings.cert_mode {
            CertMode::CertManager => match read_cert_dir(&settings.cert_dir) {
                Ok(key) => {
                    current.replace(key);
                    expiry_to(&metrics, &current);
                }
                Err(e) => tracing::warn!(error = %e, "reloading the webhook certificate failed"),
            },
            CertMode::SelfManaged => match certs::ensure(&client, &settings.certs).await {
                Ok(latest) => {
                    if certs_now.as_ref() != Some(&latest) {
                        match latest.certified_key() {
                            Ok(key) => {
                                current.replace(key);
                                expiry_to(&metrics, &current);
                                tracing::info!(not_after = %latest.not_after, "webhook certificate renewed");
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "renewed webhook certificate unusable")
                            }
                        }
                    }
                    if let Err(e) =
                        certs::patch_ca_bundle(&client, &settings.configuration, &latest.ca_pem)
                            .await
                    {
                        tracing::warn!(error = %e, "setting the caBundle failed");
                    }
                    certs_now = Some(latest);
                }
                Err(e) => tracing::warn!(error = %e, "checking the webhook certificate failed"),
            },
        }
    }
}
