//! Joining a cluster: the agent checks the server's CA against the hash in the join token
//! before trusting it, proves it holds the token, and gets a client certificate
//! (`system:node:<name>`) for a key that never leaves the node. The credentials are kept under
//! `<data_dir>/node/` and reused on restart, so an agent starts without the server.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The prefix of a join token that carries the CA hash (K3s's version 1 token).
pub const TOKEN_PREFIX: &str = "K10";

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the join token is malformed: {0}")]
    Token(String),
    #[error("server address {0:?} is not an https URL")]
    Url(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the server's CA does not match the join token: wrong server or token")]
    CaMismatch,
    #[error("the server refused to join this node ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JoinError + '_ {
    move |source| JoinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// sha256 (hex) of the CA certificate PEM the server serves at `/cacerts`; `None` for a
    /// bare secret, which trusts whatever CA the server presents.
    pub ca_hash: Option<String>,
    /// `node` (or another user) for the server token, the token id for a bootstrap token.
    pub user: String,
    pub secret: String,
    /// A bootstrap token (`<id>.<secret>`), sent as a bearer token.
    pub bootstrap: bool,
}

impl Token {
    /// Accepts `K10<hash>::<user>:<secret>`, `K10<hash>::<id>.<secret>`, or a bare secret
    /// (`<secret>` or `<id>.<secret>`).
    pub fn parse(s: &str) -> Result<Token, JoinError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(JoinError::Token("it is empty".into()));
        }
        let (ca_hash, creds) = match s
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|r| r.split_once("::"))
        {
            Some((hash, creds)) => {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(JoinError::Token(
                        "the CA hash after K10 must be 64 hex digits".into(),
                    ));
                }
                (Some(hash.to_ascii_lowercase()), creds)
            }
            None => (None, s),
        };
        if let Some((user, secret)) = creds.split_once(':') {
            if user.is_empty() || secret.is_empty() {
                return Err(JoinError::Token("empty user or secret".into()));
            }
            return Ok(Token {
                ca_hash,
                user: user.into(),
                secret: secret.into(),
                bootstrap: false,
            });
        }
        if let Some((id, secret)) = creds.split_once('.') {
            if is_bootstrap_id(id) && is_bootstrap_secret(secret) {
                return Ok(Token {
                    ca_hash,
                    user: id.into(),
                    secret: secret.into(),
                    bootstrap: true,
                });
            }
        }
        if creds.is_empty() {
            return Err(JoinError::Token("no secret after the CA hash".into()));
        }
        Ok(Token {
            ca_hash,
            user: "node".into(),
            secret: creds.into(),
            bootstrap: false,
        })
    }

    /// The `Authorization` header value the join endpoint expects.
    pub fn authorization(&self) -> String {
        use base64::Engine;
        if self.bootstrap {
            format!("Bearer {}.{}", self.user, self.secret)
        } else {
            let raw = format!("{}:{}", self.user, self.secret);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        }
    }
}

/// A bootstrap token id: 6 characters of `[a-z0-9]`.
pub fn is_bootstrap_id(s: &str) -> bool {
    s.len() == 6
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A bootstrap token secret: 16 characters of `[a-z0-9]`.
pub fn is_bootstrap_secret(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// sha256 (hex) of the CA PEM bytes, as carried by a join token.
pub fn ca_hash(ca_pem: &[u8]) -> String {
    hex::encode(Sha256::digest(ca_pem))
}

/// The node's credentials: what it uses to talk to the server.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub server: String,
}

impl NodeCredentials {
    /// A TLS client config that trusts only the cluster CA and presents the node certificate.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, JoinError> {
        let roots = roots_from_pem(&self.ca_pem)?;
        let certs = certs_from_pem(&self.cert_pem)?;
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .map_err(|e| JoinError::Cert(e.to_string()))?
            .ok_or_else(|| JoinError::Cert("no private key in node.key".into()))?;
        let mut cfg = builder()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| JoinError::Tls(e.to_string()))?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, JoinError>
{
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Tls(e.to_string()))
}

fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, JoinError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| JoinError::Cert(e.to_string()))?;
    if certs.is_empty() {
        return Err(JoinError::Cert("no certificate in PEM".into()));
    }
    Ok(certs)
}

fn roots_from_pem(pem: &str) -> Result<rustls::RootCertStore, JoinError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem(pem)? {
        roots.add(c).map_err(|e| JoinError::Cert(e.to_string()))?;
    }
    Ok(roots)
}

/// Host, port and `host:port` authority of an `https://` URL.
fn parse_https(url: &str) -> Result<(String, u16, String), JoinError> {
    let uri: hyper::Uri = url.parse().map_err(|_| JoinError::Url(url.into()))?;
    if uri.scheme_str() != Some("https") {
        return Err(JoinError::Url(url.into()));
    }
    let host = uri.host().ok_or_else(|| JoinError::Url(url.into()))?;
    let port = uri.port_u16().unwrap_or(443);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((bare, port, format!("{host}:{port}")))
}

/// A TLS connection to the server named by `url`; also returns its `host:port` authority.
pub async fn connect_tls(
    url: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        String,
    ),
    JoinError,
> {
    let (host, port, authority) = parse_https(url)?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| JoinError::Connect {
            addr: authority.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.clone()).map_err(|_| JoinError::Url(url.into()))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| JoinError::Tls(format!("{authority}: {e}")))?;
    Ok((tls, authority))
}

/// One HTTP/1.1 request over a fresh TLS connection; returns status and body.
async fn request(
    url: &str,
    cfg: Arc<rustls::ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), JoinError> {
    let (tls, authority) = connect_tls(url, cfg).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| JoinError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    parts.headers.insert(
        hyper::header::HOST,
        authority
            .parse()
            .map_err(|_| JoinError::Url(url.to_string()))?,
    );
    let res = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| JoinError::Http(e.to_string()))?;
    let status = res.status();
    let body = http_body_util::Limited::new(res.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| JoinError::Http(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

/// Accepts any server certificate. Used for fetching `/cacerts`, whose answer is then checked
/// against the token's hash before anything else is trusted, and by HTTPS probes (pods serve
/// whatever certificate they like, and kubelet does not check them either).
#[derive(Debug)]
pub struct AcceptAnyServer(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Fetches the server's CA without verifying the server, and checks it against the token.
pub async fn fetch_ca(server_url: &str, token: &Token) -> Result<String, JoinError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    let req = Request::get("/cacerts")
        .body(Full::new(Bytes::new()))
        .map_err(|e| JoinError::Http(e.to_string()))?;
    let (status, body) = request(server_url, Arc::new(cfg), req).await?;
    if status != StatusCode::OK {
        return Err(JoinError::Http(format!("GET /cacerts answered {status}")));
    }
    match &token.ca_hash {
        Some(want) if *want != ca_hash(&body) => return Err(JoinError::CaMismatch),
        Some(_) => {}
        None => tracing::warn!(
            server = %server_url,
            "the join token carries no CA hash: trusting the CA the server presents; use the full K10 token to pin it"
        ),
    }
    let pem =
        String::from_utf8(body.to_vec()).map_err(|_| JoinError::Cert("CA is not PEM".into()))?;
    roots_from_pem(&pem)?;
    Ok(pem)
}

/// The body of `POST /cairn/v1/join`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub node_name: String,
    pub node_password: String,
    /// PEM certificate signing request for the node's key.
    pub csr: String,
}

/// The answer of `POST /cairn/v1/join`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub ca_cert: String,
    pub client_cert: String,
}

/// Files under `<data_dir>/node/`.
struct Paths {
    dir: PathBuf,
}

impl Paths {
    fn new(data_dir: &Path) -> Paths {
        Paths {
            dir: data_dir.join("node"),
        }
    }
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("node.crt")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    fn password(&self) -> PathBuf {
        self.dir.join("node-password")
    }
    fn server(&self) -> PathBuf {
        self.dir.join("server")
    }
    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig.yaml")
    }
}

/// The path of the kubeconfig [`join`] writes for the node.
pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    Paths::new(data_dir).kubeconfig()
}

fn write_file(path: &Path, content: &str, private: bool) -> Result<(), JoinError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    std::io::Write::write_all(&mut f, content.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn read_optional(path: &Path) -> Result<Option<String>, JoinError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The node's password, made once: it proves to the server that a later join of the same
/// node name comes from the same machine.
fn node_password(paths: &Paths) -> Result<String, JoinError> {
    if let Some(p) = read_optional(&paths.password())? {
        let p = p.trim().to_string();
        if !p.is_empty() {
            return Ok(p);
        }
    }
    let p = crate::secret::random_secret(16).map_err(io_err(&paths.password()))?;
    write_file(&paths.password(), &format!("{p}\n"), true)?;
    Ok(p)
}

/// Seconds since the epoch until which the certificate is valid, if it names `node_name`.
fn certificate_valid_for(cert_pem: &str, node_name: &str) -> Option<i64> {
    let der = certs_from_pem(cert_pem).ok()?.into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    (cn == format!("system:node:{node_name}")).then(|| cert.validity().not_after.timestamp())
}

/// Credentials saved by an earlier join, if they are complete, for this node and server,
/// still valid for a day, and (when the token pins a CA) under that CA.
fn saved_credentials(
    paths: &Paths,
    server_url: &str,
    token: &Token,
    node_name: &str,
) -> Result<Option<NodeCredentials>, JoinError> {
    let (Some(ca_pem), Some(cert_pem), Some(key_pem)) = (
        read_optional(&paths.ca())?,
        read_optional(&paths.cert())?,
        read_optional(&paths.key())?,
    ) else {
        return Ok(None);
    };
    let server = read_optional(&paths.server())?.unwrap_or_default();
    if server.trim() != server_url {
        return Ok(None);
    }
    if token
        .ca_hash
        .as_ref()
        .is_some_and(|h| *h != ca_hash(ca_pem.as_bytes()))
    {
        return Ok(None);
    }
    let day = 86_400;
    match certificate_valid_for(&cert_pem, node_name) {
        Some(until) if until > crate::time::now_secs() + day => {}
        _ => return Ok(None),
    }
    Ok(Some(NodeCredentials {
        ca_pem,
        cert_pem,
        key_pem,
        server: server_url.to_string(),
    }))
}

/// Joins the cluster at `server_url` as `node_name`, or reuses the credentials of an earlier
/// join kept in `<data_dir>/node/` (without contacting the server).
pub async fn join(
    server_url: &str,
    token: &Token,
    node_name: &str,
    data_dir: &Path,
) -> Result<NodeCredentials, JoinError> {
    let server_url = server_url.trim_end_matches('/');
    let paths = Paths::new(data_dir);
    std::fs::create_dir_all(&paths.dir).map_err(io_err(&paths.dir))?;
    if let Some(c) = saved_credentials(&paths, server_url, token, node_name)? {
        tracing::info!(node = %node_name, "using the node credentials of an earlier join");
        return Ok(c);
    }
    let ca_pem = fetch_ca(server_url, token).await?;
    let password = node_password(&paths)?;
    let key = match read_optional(&paths.key())? {
        Some(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| JoinError::Cert(e.to_string()))?,
        None => {
            let k = rcgen::KeyPair::generate().map_err(|e| JoinError::Cert(e.to_string()))?;
            write_file(&paths.key(), &k.serialize_pem(), true)?;
            k
        }
    };
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| JoinError::Cert(e.to_string()))?;
    let body = serde_json::to_vec(&JoinRequest {
        node_name: node_name.to_string(),
        node_password: password,
        csr,
    })
    .map_err(|e| JoinError::Http(e.to_string()))?;
    let req = Request::post("/cairn/v1/join")
        .header(hyper::header::AUTHORIZATION, token.authorization())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| JoinError::Http(e.to_string()))?;
    let pinned = builder()?
        .with_root_certificates(roots_from_pem(&ca_pem)?)
        .with_no_client_auth();
    let (status, body) = request(server_url, Arc::new(pinned), req).await?;
    if status != StatusCode::OK {
        return Err(JoinError::Refused {
            status,
            message: refusal_message(&body),
        });
    }
    let answer: JoinResponse =
        serde_json::from_slice(&body).map_err(|e| JoinError::Http(format!("join answer: {e}")))?;
    let creds = NodeCredentials {
        ca_pem,
        cert_pem: answer.client_cert,
        key_pem: key.serialize_pem(),
        server: server_url.to_string(),
    };
    save(&paths, &creds)?;
    tracing::info!(node = %node_name, server = %server_url, "joined the cluster");
    Ok(creds)
}

/// The message of a metav1.Status answer, or the body as text.
fn refusal_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

fn save(paths: &Paths, c: &NodeCredentials) -> Result<(), JoinError> {
    write_file(&paths.ca(), &c.ca_pem, false)?;
    write_file(&paths.cert(), &c.cert_pem, false)?;
    write_file(&paths.key(), &c.key_pem, true)?;
    write_file(&paths.server(), &c.server, false)?;
    write_file(
        &paths.kubeconfig(),
        &crate::kubeconfig::render(&c.server, &c.ca_pem, &c.cert_pem, &c.key_pem),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";

    #[test]
    fn parses_every_token_shape() {
        let t = Token::parse(&format!("K10{HASH}::node:s3cret")).expect("server token");
        assert_eq!(t.ca_hash.as_deref(), Some(HASH));
        assert_eq!((t.user.as_str(), t.secret.as_str()), ("node", "s3cret"));
        assert!(!t.bootstrap);
        assert!(t.authorization().starts_with("Basic "));

        let t = Token::parse(&format!("K10{HASH}::abcdef.0123456789abcdef")).expect("bootstrap");
        assert!(t.bootstrap);
        assert_eq!(t.user, "abcdef");
        assert_eq!(t.authorization(), "Bearer abcdef.0123456789abcdef");

        let t = Token::parse("plainsecret").expect("bare");
        assert_eq!(t.ca_hash, None);
        assert_eq!(
            (t.user.as_str(), t.secret.as_str()),
            ("node", "plainsecret")
        );

        let t = Token::parse("abcdef.0123456789abcdef").expect("bare bootstrap");
        assert!(t.bootstrap && t.ca_hash.is_none());
    }

    #[test]
    fn refuses_malformed_tokens() {
        assert!(Token::parse("").is_err());
        assert!(Token::parse("K10abc::node:x").is_err(), "short hash");
        assert!(Token::parse(&format!("K10{HASH}::")).is_err());
        assert!(Token::parse(&format!("K10{HASH}::node:")).is_err());
    }

    #[test]
    fn ca_hash_is_sha256_of_the_pem_bytes() {
        assert_eq!(
            ca_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn saved_credentials_are_reused_only_when_they_fit() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A CA and a node certificate it signed, as the server's PKI would issue them.
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:n1");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("sign").pem();
        let ca_pem = ca.pem();
        let paths = Paths::new(dir.path());
        std::fs::create_dir_all(&paths.dir).expect("mkdir");
        let creds = NodeCredentials {
            ca_pem: ca_pem.clone(),
            cert_pem: cert,
            key_pem: key.serialize_pem(),
            server: "https://10.0.0.1:6443".into(),
        };
        save(&paths, &creds).expect("save");
        let token =
            Token::parse(&format!("K10{}::node:x", ca_hash(ca_pem.as_bytes()))).expect("token");
        let url = "https://10.0.0.1:6443";
        assert!(saved_credentials(&paths, url, &token, "n1")
            .expect("read")
            .is_some());
        assert!(saved_credentials(&paths, url, &token, "n2")
            .expect("read")
            .is_none());
        assert!(
            saved_credentials(&paths, "https://other:6443", &token, "n1")
                .expect("read")
                .is_none()
        );
        let wrong = Token::parse(&format!("K10{HASH}::node:x")).expect("token");
        assert!(saved_credentials(&paths, url, &wrong, "n1")
            .expect("read")
            .is_none());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(paths.key())
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(creds.client_config(&[b"h2"]).is_ok());
    }
}
