//! The webhook's TLS, self-managed: one CA and a serving certificate kept in
//! a Secret that every replica shares (the first to start creates it; the
//! others load it), the CA published as the MutatingWebhookConfiguration's
//! `caBundle`, and the serving certificate renewed by whichever replica sees
//! a third of its lifetime left. The CA (ten years) is not rotated. Keys are
//! never logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
/// When the serving certificate expires (RFC 3339), beside it.
const NOT_AFTER: &str = "attach.dev/not-after";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the Secret {0} holds an unusable certificate or key")]
    Unusable(String),
    #[error("reading or writing the Secret {name}: {source}")]
    Secret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("patching the caBundle of MutatingWebhookConfiguration {name}: {source}")]
    CaBundle {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("loading the TLS key: {0}")]
    Tls(#[from] rustls::Error),
}

/// Where the certificates live and what they cover.
#[derive(Debug, Clone)]
pub struct CertSettings {
    pub secret: String,
    pub namespace: String,
    /// DNS names and IP addresses the serving certificate is valid for.
    pub names: Vec<String>,
    pub validity_days: u32,
}

/// A CA and a serving certificate, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookCerts {
    pub ca_pem: String,
    ca_key_pem: String,
    pub cert_pem: String,
    key_pem: String,
    pub not_after: Timestamp,
}

impl std::fmt::Debug for WebhookCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCerts")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "attach-operator-webhook-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// rcgen's date for a day `days` from `now`.
fn day_after(now: Timestamp, days: i64) -> Option<(Timestamp, i32, u8, u8)> {
    let then = now
        .checked_add(SignedDuration::from_hours(24 * days))
        .ok()?;
    let date = then.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC).date();
    // rcgen dates are midnight UTC: the reported expiry is that midnight.
    let midnight = date
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .ok()?
        .timestamp();
    Some((
        midnight,
        i32::from(date.year()),
        u8::try_from(date.month()).ok()?,
        u8::try_from(date.day()).ok()?,
    ))
}

/// A new CA: its certificate and key, PEM.
pub fn generate_ca(now: Timestamp) -> Result<(String, String), CertError> {
    let mut params = ca_params()?;
    let (_, y, m, d) = day_after(now, -1).ok_or_else(|| CertError::Unusable("clock".into()))?;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (_, y, m, d) = day_after(now, 3650).ok_or_else(|| CertError::Unusable("clock".into()))?;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names`, signed by the CA key.
pub fn issue(
    ca_pem: &str,
    ca_key_pem: &str,
    names: &[String],
    validity_days: u32,
    now: Timestamp,
) -> Result<WebhookCerts, CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    // The issuer is the same name and key as the stored CA certificate.
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "attach-operator-webhook");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (_, y, m, d) = day_after(now, -1).ok_or_else(|| CertError::Unusable("clock".into()))?;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (not_after, y, m, d) = day_after(now, i64::from(validity_days.max(MIN_VALIDITY_DAYS)))
        .ok_or_else(|| CertError::Unusable("clock".into()))?;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(WebhookCerts {
        ca_pem: ca_pem.to_owned(),
        ca_key_pem: ca_key_pem.to_owned(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// The shortest validity: certificates end at midnight UTC, so a shorter
/// one would be due for renewal as soon as it is issued.
pub const MIN_VALIDITY_DAYS: u32 = 7;

/// Whether a serving certificate valid for `validity_days` and expiring at
/// `not_after` must be renewed: less than a third of its life is left.
pub fn needs_renewal(not_after: Timestamp, validity_days: u32, now: Timestamp) -> bool {
    let days = validity_days.max(MIN_VALIDITY_DAYS);
    let third = SignedDuration::from_hours(24 * i64::from(days)) / 3;
    now.checked_add(third).map_or(true, |t| t >= not_after)
}

impl WebhookCerts {
    /// A certificate and key from files (cert-manager's); no CA is known.
    pub fn from_pem(cert_pem: String, key_pem: String) -> Self {
        Self {
            ca_pem: String::new(),
            ca_key_pem: String::new(),
            cert_pem,
            key_pem,
            not_after: Timestamp::UNIX_EPOCH,
        }
    }

    fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        Some(Self {
            ca_pem: text(CA_CERT)?,
            ca_key_pem: text(CA_KEY)?,
            cert_pem: text(TLS_CERT)?,
            key_pem: text(TLS_KEY)?,
            not_after: secret.annotations().get(NOT_AFTER)?.parse().ok()?,
        })
    }

    fn to_secret(&self, settings: &CertSettings) -> Secret {
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        Secret {
            metadata: ObjectMeta {
                name: Some(settings.secret.clone()),
                namespace: Some(settings.namespace.clone()),
                annotations: Some(BTreeMap::from([(
                    NOT_AFTER.to_owned(),
                    self.not_after.to_string(),
                )])),
                labels: Some(BTreeMap::from([(
                    crate::controller::owned::MANAGED_BY.0.to_owned(),
                    crate::controller::owned::MANAGED_BY.1.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (CA_CERT.to_owned(), bytes(&self.ca_pem)),
                (CA_KEY.to_owned(), bytes(&self.ca_key_pem)),
                (TLS_CERT.to_owned(), bytes(&self.cert_pem)),
                (TLS_KEY.to_owned(), bytes(&self.key_pem)),
            ])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        }
    }

    /// The rustls form of the serving certificate and key.
    pub fn certified_key(&self) -> Result<CertifiedKey, CertError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| CertError::Unusable("tls.crt".into()))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|_| CertError::Unusable("tls.key".into()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
        Ok(CertifiedKey::new(chain, signer))
    }
}

/// Loads the shared certificates, creating or renewing them as needed. Two
/// replicas racing both end up with the one that was written first.
pub async fn ensure(client: &Client, settings: &CertSettings) -> Result<WebhookCerts, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let secret_error = |source| CertError::Secret {
        name: settings.secret.clone(),
        source,
    };
    for _ in 0..5 {
        let now = Timestamp::now();
        let existing = api.get_opt(&settings.secret).await.map_err(secret_error)?;
        let current = existing.as_ref().and_then(WebhookCerts::from_secret);
        let renewed = match &current {
            Some(c) if !needs_renewal(c.not_after, settings.validity_days, now) => {
                return Ok(c.clone());
            }
            // Same CA, new serving certificate.
            Some(c) => issue(
                &c.ca_pem,
                &c.ca_key_pem,
                &settings.names,
                settings.validity_days,
                now,
            )?,
            None => {
                let (ca, ca_key) = generate_ca(now)?;
                issue(&ca, &ca_key, &settings.names, settings.validity_days, now)?
            }
        };
        let mut secret = renewed.to_secret(settings);
        let written = match existing {
            Some(old) => {
                // The Secret the chart created keeps its labels and
                // annotations (Helm's ownership); the data and the expiry
                // are the operator's. Optimistic concurrency: a replica that
                // renewed first wins.
                let mut metadata = old.metadata.clone();
                metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(NOT_AFTER.to_owned(), renewed.not_after.to_string());
                metadata.managed_fields = None;
                secret.metadata = metadata;
                api.replace(&settings.secret, &PostParams::default(), &secret)
                    .await
            }
            None => api.create(&PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %settings.secret, not_after = %renewed.not_after, "webhook certificate written");
                return Ok(renewed);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(secret_error(e)),
        }
    }
    Err(CertError::Unusable(format!(
        "{} kept changing under us",
        settings.secret
    )))
}

/// Sets the CA as the `caBundle` of every webhook in the configuration.
pub async fn patch_ca_bundle(client: &Client, name: &str, ca_pem: &str) -> Result<(), CertError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let error = |source| CertError::CaBundle {
        name: name.to_owned(),
        source,
    };
    let config = api.get(name).await.map_err(error)?;
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let ops: Vec<json_patch::PatchOperation> = config
        .webhooks
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, w)| w.client_config.ca_bundle.as_ref() != Some(&bundle))
        .map(|(i, _)| {
            json_patch::PatchOperation::Add(json_patch::AddOperation {
                path: json_patch::jsonptr::PointerBuf::parse(format!(
                    "/webhooks/{i}/clientConfig/caBundle"
                ))
                .unwrap_or_default(),
                value: serde_json::to_value(&bundle).unwrap_or_default(),
            })
        })
        .collect();
    if ops.is_empty() {
        return Ok(());
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Json::<()>(json_patch::Patch(ops)),
    )
    .await
    .map_err(error)?;
    tracing::info!(configuration = %name, "caBundle set");
    Ok(())
}

/// Serves whichever certificate is current; renewal swaps it in place, so
/// connections in flight and new ones never see a gap.
#[derive(Debug)]
pub struct CurrentCert(arc_swap::ArcSwap<CertifiedKey>);

impl CurrentCert {
    pub fn new(key: CertifiedKey) -> Self {
        Self(arc_swap::ArcSwap::from_pointee(key))
    }

    pub fn replace(&self, key: CertifiedKey) {
        self.0.store(Arc::new(key));
    }

    /// When the served certificate expires, in Unix seconds (`None` if it
    /// cannot be read).
    pub fn not_after(&self) -> Option<i64> {
        let key = self.0.load();
        let leaf = key.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        Some(cert.validity().not_after.timestamp())
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The rustls config serving `cert` (TLS 1.2 and 1.3, HTTP/2 and 1.1).
pub fn server_config(cert: Arc<CurrentCert>) -> Result<rustls::ServerConfig, CertError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn a_serving_certificate_chains_to_the_ca_and_is_renewed_at_two_thirds() {
        let now: Timestamp = "2026-06-01T12:00:00Z".parse().unwrap();
        let (ca, ca_key) = generate_ca(now).unwrap();
        let certs = issue(
            &ca,
            &ca_key,
            &["127.0.0.1".into(), "svc.ns.svc".into()],
            90,
            now,
        )
        .unwrap();
        let served = CurrentCert::new(certs.certified_key().unwrap());
        assert_eq!(
            certs.not_after,
            "2026-08-30T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        // The expiry metric reads the served certificate itself.
        assert_eq!(served.not_after(), Some(certs.not_after.as_second()));
        assert!(!needs_renewal(certs.not_after, 90, now));
        let late: Timestamp = "2026-08-01T00:00:00Z".parse().unwrap();
        assert!(
            needs_renewal(certs.not_after, 90, late),
            "29 days of 90 left"
        );
        // The chain verifies against the CA with rustls' own verifier.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(certs.cert_pem.as_bytes()).unwrap();
        let name = rustls::pki_types::ServerName::try_from("svc.ns.svc").unwrap();
        let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now.as_second()).unwrap(),
        ));
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], at)
            .unwrap();
        // The Secret round trip keeps everything.
        let settings = CertSettings {
            secret: "tls".into(),
            namespace: "ns".into(),
            names: vec![],
            validity_days: 90,
        };
        let back = WebhookCerts::from_secret(&certs.to_secret(&settings)).unwrap();
        assert_eq!(back, certs);
        assert!(
            !format!("{back:?}").contains("PRIVATE"),
            "keys stay out of Debug"
        );
    }
}
