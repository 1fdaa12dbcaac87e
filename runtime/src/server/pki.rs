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
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

impl Pki {
    /// sha256 of the CA certificate (DER), as a join token carries it.
    pub fn ca_hash(&self) -> String {
        let der = rustls_pemfile::certs(&mut self.ca_cert_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .map(|c| c.to_vec())
            .unwrap_or_default();
        hex::encode(Sha256::digest(der))
    }
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
        // New names remake the serving certificate under the same CA.
        let c = load_or_create(dir.path(), &["10.0.0.1".to_string()]).unwrap();
        assert_eq!(a.ca_cert_pem, c.ca_cert_pem);
        assert_ne!(a.server_cert_pem, c.server_cert_pem);
    }
}
