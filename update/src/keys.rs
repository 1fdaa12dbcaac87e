//! ed25519 signing keys for update bundles, in the PEM forms OpenSSL reads and writes:
//! `PRIVATE KEY` (PKCS#8) for the signer, `PUBLIC KEY` (SubjectPublicKeyInfo) for devices.

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::path::{Path, PathBuf};

/// DER prefix of an ed25519 SubjectPublicKeyInfo; the 32 key bytes follow.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a PEM {label} (make one with `cairn-image keygen`)")]
    NotPem { path: PathBuf, label: &'static str },
    #[error("{path}: not an ed25519 key")]
    NotEd25519 { path: PathBuf },
    #[error("no trusted update keys in {0}: copy a `.pub` made by `cairn-image keygen` there")]
    NoKeys(PathBuf),
    #[error("cannot make a key: the system random source failed")]
    Random,
}

/// DER prefix of an ed25519 PKCS#8 (v1) private key; the 32-byte seed follows.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A public key a device trusts, with its id (the SHA-256 of the 32 key bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub bytes: [u8; 32],
    /// Where it was read from, for messages.
    pub source: String,
}

impl PublicKey {
    /// The SHA-256 of the key, as a bundle's header names its signer.
    pub fn id(&self) -> [u8; 32] {
        let mut id = [0u8; 32];
        id.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &self.bytes).as_ref());
        id
    }

    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.bytes);
        pem("PUBLIC KEY", &der)
    }

    pub fn from_pem(text: &str, path: &Path) -> Result<PublicKey, KeyError> {
        let der = unpem(text, "PUBLIC KEY").ok_or_else(|| KeyError::NotPem {
            path: path.into(),
            label: "PUBLIC KEY",
        })?;
        let raw = der
            .strip_prefix(&SPKI_PREFIX[..])
            .filter(|k| k.len() == 32)
            .ok_or_else(|| KeyError::NotEd25519 { path: path.into() })?;
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(raw);
        Ok(PublicKey {
            bytes,
            source: path.display().to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.into(),
            source,
        })?;
        PublicKey::from_pem(&text, path)
    }
}

/// A short, printable form of a key id.
pub fn short_id(id: &[u8; 32]) -> String {
    hex::encode(&id[..8])
}

/// Every `*.pub` in a directory (several, for key rotation).
pub fn load_trusted(dir: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let mut keys = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|source| KeyError::Io {
        path: dir.into(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
        .collect();
    paths.sort();
    for p in paths {
        keys.push(PublicKey::load(&p)?);
    }
    if keys.is_empty() {
        return Err(KeyError::NoKeys(dir.into()));
    }
    Ok(keys)
}

/// The signer's key pair.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A new random key, as PKCS#8 PEM (the RFC 8410 form OpenSSL writes: the 32-byte seed).
    pub fn generate_pem() -> Result<String, KeyError> {
        use ring::rand::SecureRandom;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Ok(pem("PRIVATE KEY", &der))
    }

    pub fn from_pem(text: &str, path: &Path) -> Result<SigningKey, KeyError> {
        let der = unpem(text, "PRIVATE KEY").ok_or_else(|| KeyError::NotPem {
            path: path.into(),
            label: "PRIVATE KEY",
        })?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| KeyError::NotEd25519 { path: path.into() })?;
        Ok(SigningKey { pair })
    }

    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.into(),
            source,
        })?;
        SigningKey::from_pem(&text, path)
    }

    pub fn public(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey {
            bytes,
            source: "signing key".into(),
        }
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(message).as_ref());
        sig
    }
}

/// Checks an ed25519 signature.
pub fn verify(key: &PublicKey, message: &[u8], signature: &[u8; 64]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.bytes)
        .verify(message, signature)
        .is_ok()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text.split_once(&begin)?.1.split_once(&end)?.0;
    let joined: String = body.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(joined)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_and_its_public_half_verifies() {
        let pem = SigningKey::generate_pem().unwrap();
        let key = SigningKey::from_pem(&pem, Path::new("k")).unwrap();
        let public = PublicKey::from_pem(&key.public().to_pem(), Path::new("k.pub")).unwrap();
        let sig = key.sign(b"manifest");
        assert!(verify(&public, b"manifest", &sig));
        assert!(!verify(&public, b"manifesT", &sig));
    }

    #[test]
    fn openssl_reads_our_keys() {
        let dir = tempfile::tempdir().unwrap();
        let pem = SigningKey::generate_pem().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, &pem).unwrap();
        let Ok(out) = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&path)
            .output()
        else {
            panic!("openssl is missing: make deps installs it");
        };
        let ours = SigningKey::from_pem(&pem, &path).unwrap().public().to_pem();
        assert_eq!(String::from_utf8_lossy(&out.stdout), ours);
    }

    #[test]
    fn a_directory_of_keys_loads_every_pub_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load_trusted(dir.path()), Err(KeyError::NoKeys(_))));
        for n in ["old.pub", "new.pub"] {
            let k =
                SigningKey::from_pem(&SigningKey::generate_pem().unwrap(), Path::new(n)).unwrap();
            std::fs::write(dir.path().join(n), k.public().to_pem()).unwrap();
        }
        std::fs::write(dir.path().join("README"), "not a key").unwrap();
        assert_eq!(load_trusted(dir.path()).unwrap().len(), 2);
    }
}
