//! Certificates and keys for the test control plane: a CA, the API server's
//! serving certificate, an admin client certificate in `system:masters`, and
//! the service-account signing key; with a node, also the client
//! certificates of the node's components and the kubelet's serving
//! certificate. All ECDSA P-256, made fresh per world.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::HarnessError;

/// A client certificate to issue: the API server reads the user from the
/// common name and the groups from the organizations.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The file stem (`<name>.crt`, `<name>.key`) and the map key.
    pub name: String,
    pub user: String,
    pub groups: Vec<String>,
}

impl ClientIdentity {
    pub fn new(name: &str, user: &str, groups: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            user: user.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }
}

/// What to issue besides the control plane's own certificates.
#[derive(Debug, Clone, Default)]
pub struct PkiOptions {
    /// Extra subject names of the API server's serving certificate (the
    /// address pods reach it on, the `kubernetes` Service's IP).
    pub serving_sans: Vec<String>,
    /// Client certificates for the node's components.
    pub clients: Vec<ClientIdentity>,
    /// Subject names of the kubelet's serving certificate (none: no node).
    pub kubelet_sans: Vec<String>,
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct KeyPairFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Paths of the PEM files written by [`ControlPlanePki::write`].
#[derive(Debug, Clone)]
pub struct ControlPlanePki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
    /// The client certificates of [`PkiOptions::clients`], by name.
    pub clients: BTreeMap<String, KeyPairFiles>,
    /// The kubelet's serving certificate, when [`PkiOptions::kubelet_sans`] asked for one.
    pub kubelet_serving: Option<KeyPairFiles>,
}

impl ControlPlanePki {
    /// Generates every certificate and key and writes them under `dir`.
    pub fn write(dir: &Path) -> Result<Self, HarnessError> {
        Self::write_with(dir, &PkiOptions::default())
    }

    /// [`ControlPlanePki::write`], plus what `options` asks for.
    pub fn write_with(dir: &Path, options: &PkiOptions) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "attach-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

        let mut serving_sans = vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default.svc.cluster.local".to_owned(),
        ];
        serving_sans.extend(options.serving_sans.iter().cloned());
        let mut serving = CertificateParams::new(serving_sans)?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &ca)?;

        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "attach-test-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_key = KeyPair::generate()?;
        let admin_cert = admin.signed_by(&admin_key, &ca)?;

        let sa_key = KeyPair::generate()?;

        let mut extra = Vec::new();
        let mut clients = BTreeMap::new();
        for client in &options.clients {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(DnType::CommonName, client.user.as_str());
            for group in &client.groups {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, group.as_str());
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            let files = KeyPairFiles {
                cert: dir.join(format!("{}.crt", client.name)),
                key: dir.join(format!("{}.key", client.name)),
            };
            extra.push((files.cert.clone(), cert.pem()));
            extra.push((files.key.clone(), key.serialize_pem()));
            clients.insert(client.name.clone(), files);
        }
        let kubelet_serving = if options.kubelet_sans.is_empty() {
            None
        } else {
            let mut params = CertificateParams::new(options.kubelet_sans.clone())?;
            params
                .distinguished_name
                .push(DnType::CommonName, "kubelet");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            let files = KeyPairFiles {
                cert: dir.join("kubelet-serving.crt"),
                key: dir.join("kubelet-serving.key"),
            };
            extra.push((files.cert.clone(), cert.pem()));
            extra.push((files.key.clone(), key.serialize_pem()));
            Some(files)
        };

        let pki = Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
            clients,
            kubelet_serving,
        };
        for (path, pem) in [
            (&pki.ca_cert, ca.pem()),
            (&pki.ca_key, ca_key_pem),
            (&pki.serving_cert, serving_cert.pem()),
            (&pki.serving_key, serving_key.serialize_pem()),
            (&pki.admin_cert, admin_cert.pem()),
            (&pki.admin_key, admin_key.serialize_pem()),
            (&pki.service_account_key, sa_key.serialize_pem()),
            (&pki.service_account_pub, sa_key.public_key_pem()),
        ] {
            std::fs::write(path, pem).map_err(HarnessError::io(path))?;
        }
        for (path, pem) in extra {
            std::fs::write(&path, pem).map_err(HarnessError::io(&path))?;
        }
        Ok(pki)
    }
}
