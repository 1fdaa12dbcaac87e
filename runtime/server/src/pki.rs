//! The server's certificate authority, serving certificate and admin client certificate, made
//! on first start and reused after (like K3s's `server/tls`).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{0}: not a PEM certificate or key")]
    Pem(PathBuf),
}

/// PEM files under `<data-dir>/tls`.
pub struct Pki {
    pub ca_cert_pem: String,
    /// Kept to sign node client certificates when nodes join.
    pub ca_key_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

impl Pki {
    /// sha256 of the CA certificate PEM exactly as `/cacerts` serves it, as a join token
    /// carries it (K3s hashes the same bytes, so an agent can check before it trusts).
    pub fn ca_hash(&self) -> String {
        hex::encode(Sha256::digest(self.ca_cert_pem.as_bytes()))
    }

    /// Signs a node's certificate signing request: the subject is always
    /// `CN=system:node:<node_name>, O=system:nodes` whatever the request asks, for client
    /// authentication, valid for a year. Returns the certificate PEM.
    pub fn sign_node_certificate(
        &self,
        csr_pem: &str,
        node_name: &str,
    ) -> Result<String, PkiError> {
        let subject = dn(&format!("system:node:{node_name}"), Some("system:nodes"));
        self.sign_client_certificate(csr_pem, Some(subject), 365 * 86_400)
    }

    /// Signs a client certificate for the CSR's key, naming `subject` (the CSR's own subject
    /// when `None`), valid for about `valid_secs` (whole days, at least one).
    pub fn sign_client_certificate(
        &self,
        csr_pem: &str,
        subject: Option<DistinguishedName>,
        valid_secs: i64,
    ) -> Result<String, PkiError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer =
            CertificateParams::from_ca_cert_pem(&self.ca_cert_pem)?.self_signed(&ca_key)?;
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::default();
        params.distinguished_name =
            subject.unwrap_or_else(|| csr.params.distinguished_name.clone());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = cairn_wire::time::now_secs();
        let date = |secs: i64| {
            let (y, m, d) = cairn_wire::time::civil_from_days(secs.div_euclid(86_400));
            // Feb 29 has no twin in most years; the 28th is close enough.
            rcgen::date_time_ymd(y as i32, m as u8, (d as u8).min(28))
        };
        params.not_before = date(now);
        params.not_after = date(now + valid_secs.max(86_400));
        params.serial_number = Some(random_serial()?);
        csr.params = params;
        Ok(csr.signed_by(&issuer, &ca_key)?.pem())
    }
}

/// A random positive serial number, so no two node certificates share one.
fn random_serial() -> Result<rcgen::SerialNumber, PkiError> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| PkiError::Io {
        path: PathBuf::from("/dev/urandom"),
        source: std::io::Error::other(e.to_string()),
    })?;
    b[0] &= 0x7f;
    Ok(rcgen::SerialNumber::from_slice(&b))
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write(path: &Path, content: &str, private: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    std::io::Write::write_all(&mut f, content.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn validity(params: &mut CertificateParams, years: i32) {
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2024 + years, 1, 1);
}

/// Loads the PKI from `dir`, making whatever is missing. `sans` are the serving
/// certificate's names and addresses.
pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let ca_cert_path = dir.join("server-ca.crt");
    let ca_key_path = dir.join("server-ca.key");
    let (ca_cert_pem, ca_key_pem) = match (read(&ca_cert_path)?, read(&ca_key_path)?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name = dn("cairn-server-ca", None);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, 20);
            let cert = params.self_signed(&key)?;
            write(&ca_key_path, &key.serialize_pem(), true)?;
            write(&ca_cert_path, &cert.pem(), false)?;
            (cert.pem(), key.serialize_pem())
        }
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_cert_pem)?;
    let issuer = ca_params.self_signed(&ca_key)?;

    let leaf = |name: &str,
                cn: &str,
                org: Option<&str>,
                names: Vec<String>,
                usage: ExtendedKeyUsagePurpose|
     -> Result<(String, String), PkiError> {
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        let sans_path = dir.join(format!("{name}.sans"));
        let wanted_sans = names.join(",");
        if let (Some(c), Some(k)) = (read(&cert_path)?, read(&key_path)?) {
            // A serving certificate is remade when the names it must carry change.
            if read(&sans_path)?.unwrap_or_default() == wanted_sans {
                return Ok((c, k));
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = dn(cn, org);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        validity(&mut params, 10);
        let cert = params.signed_by(&key, &issuer, &ca_key)?;
        write(&key_path, &key.serialize_pem(), true)?;
        write(&cert_path, &cert.pem(), false)?;
        write(&sans_path, &wanted_sans, false)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert_pem, server_key_pem) = leaf(
        "serving",
        "cairn",
        None,
        sans.to_vec(),
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (admin_cert_pem, admin_key_pem) = leaf(
        "client-admin",
        "system:admin",
        Some("system:masters"),
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(Pki {
        ca_cert_pem,
        ca_key_pem,
        server_cert_pem,
        server_key_pem,
        admin_cert_pem,
        admin_key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let a = load_or_create(dir.path(), &sans).unwrap();
        let b = load_or_create(dir.path(), &sans).unwrap();
        assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
        assert_eq!(a.server_cert_pem, b.server_cert_pem);
        assert_eq!(a.ca_hash().len(), 64);
        assert_eq!(
            a.ca_hash(),
            hex::encode(Sha256::digest(a.ca_cert_pem.as_bytes()))
        );
        // New names remake the serving certificate under the same CA.
        let c = load_or_create(dir.path(), &["10.0.0.1".to_string()]).unwrap();
        assert_eq!(a.ca_cert_pem, c.ca_cert_pem);
        assert_ne!(a.server_cert_pem, c.server_cert_pem);
    }

    #[test]
    fn node_certificates_name_the_node_whatever_the_request_says() {
        let dir = tempfile::tempdir().unwrap();
        let pki = load_or_create(dir.path(), &[]).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("system:admin", Some("system:masters"));
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let pem = pki.sign_node_certificate(&csr, "n1").unwrap();
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let id = crate::auth::from_client_certificate(&der).unwrap();
        assert_eq!(id.user, "system:node:n1");
        assert_eq!(id.groups, vec!["system:nodes".to_string()]);
        assert!(pki.sign_node_certificate("not a csr", "n1").is_err());
    }
}
