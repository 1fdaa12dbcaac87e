//! A small client for the cluster API, as the agent and the `cairn` CLI use it: HTTPS with the
//! cluster CA pinned, a client certificate (or a bearer token), JSON in and out, and watches
//! read as newline-delimited events. [`Reflector`] keeps a local copy of a list that follows
//! the server's watch and survives reconnects.

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the API server: {0}")]
    Transport(String),
    #[error("the API server answered {code}: {message}")]
    Status { code: u16, message: String },
    #[error("bad credentials: {0}")]
    Credentials(String),
    #[error("cannot read {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("the API server sent something that is not JSON: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status { code: 404, .. })
    }
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Status { code: 409, .. })
    }
    pub fn is_gone(&self) -> bool {
        matches!(self, ClientError::Status { code: 410, .. })
    }
}

/// How the client proves who it is.
#[derive(Clone)]
pub enum Credentials {
    ClientCert { cert_pem: String, key_pem: String },
    Bearer(String),
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Clone)]
pub struct ApiClient {
    server: String,
    http: HttpsClient,
    bearer: Option<String>,
}

/// The TLS settings for talking to our server: its CA pinned, our certificate offered.
pub fn tls_config(
    ca_pem: &str,
    creds: Option<&Credentials>,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| ClientError::Credentials(format!("CA certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Credentials(format!("CA certificate: {e}")))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Credentials(e.to_string()))?
        .with_root_certificates(roots);
    match creds {
        Some(Credentials::ClientCert { cert_pem, key_pem }) => {
            let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| ClientError::Credentials(format!("client certificate: {e}")))?;
            let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
                .map_err(|e| ClientError::Credentials(format!("client key: {e}")))?
                .ok_or_else(|| ClientError::Credentials("no client key".into()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ClientError::Credentials(e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

impl ApiClient {
    pub fn new(server: &str, ca_pem: &str, creds: Credentials) -> Result<Self, ClientError> {
        // hyper-rustls sets ALPN itself from enable_http1/enable_http2 (and panics if the
        // config already has protocols).
        let tls = tls_config(ca_pem, Some(&creds))?;
        // Small requests (a status patch) must not wait for a delayed ACK under Nagle.
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            // HTTP/2 keep-alive pings need a timer, or the first connection panics.
            .timer(hyper_util::rt::TokioTimer::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_keep_alive_interval(Duration::from_secs(15))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .build(connector);
        Ok(ApiClient {
            server: server.trim_end_matches('/').to_string(),
            http,
            bearer: match creds {
                Credentials::Bearer(t) => Some(t),
                Credentials::ClientCert { .. } => None,
            },
        })
    }

    /// A client from a kubeconfig as cairn writes them (first cluster, first user; inline
    /// `-data` fields or a token).
    pub fn from_kubeconfig(path: &Path) -> Result<Self, ClientError> {
        let err = |reason: String| ClientError::Kubeconfig {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let field = |key: &str| -> Option<String> {
            text.lines().find_map(|l| {
                let l = l.trim();
                l.strip_prefix(key)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
        };
        let b64 = |key: &str| -> Result<String, ClientError> {
            use base64::Engine;
            let v = field(key).ok_or_else(|| err(format!("no {key}")))?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| err(format!("{key}: {e}")))?;
            String::from_utf8(raw).map_err(|e| err(format!("{key}: {e}")))
        };
        let server = field("server").ok_or_else(|| err("no server".into()))?;
        let ca = b64("certificate-authority-data")?;
        let creds = if let Some(token) = field("token") {
            Credentials::Bearer(token)
        } else {
            Credentials::ClientCert {
                cert_pem: b64("client-certificate-data")?,
                key_pem: b64("client-key-data")?,
            }
        };
        Self::new(&server, &ca, creds)
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.server, path))
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "cairn-agent");
        if let Some(t) = &self.bearer {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        self.http
            .request(req)
            .await
            .map_err(|e| ClientError::Transport(error_chain(&e)))
    }

    /// One request with a JSON answer; non-2xx statuses become [`ClientError::Status`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            self.send(method, path, content_type, body),
        )
        .await
        .map_err(|_| ClientError::Transport(format!("{path}: timed out")))??;
        let status = resp.status();
        let bytes = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
            .await
            .map_err(|_| ClientError::Transport(format!("{path}: timed out reading")))?
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(status_error(status, &bytes));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn get(&self, path: &str) -> Result<Option<Value>, ClientError> {
        match self.request(Method::GET, path, "", None).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn create(&self, path: &str, obj: &Value) -> Result<Value, ClientError> {
        self.request(Method::POST, path, "application/json", Some(obj))
            .await
    }

    pub async fn replace(&self, path: &str, obj: &Value) -> Result<Value, ClientError> {
        self.request(Method::PUT, path, "application/json", Some(obj))
            .await
    }

    /// A JSON merge patch (RFC 7386).
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ClientError> {
        self.request(
            Method::PATCH,
            path,
            "application/merge-patch+json",
            Some(patch),
        )
        .await
    }

    pub async fn delete(&self, path: &str, options: Option<&Value>) -> Result<(), ClientError> {
        match self
            .request(Method::DELETE, path, "application/json", options)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A list: its items and the resourceVersion to watch from.
    pub async fn list(&self, path: &str) -> Result<(Vec<Value>, String), ClientError> {
        let v = self.request(Method::GET, path, "", None).await?;
        let rv = v
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_string();
        let items = match v.get("items") {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        Ok((items, rv))
    }

    /// Watch events after `resource_version`, until the server ends the stream.
    pub async fn watch(
        &self,
        path: &str,
        resource_version: &str,
        mut on_event: impl FnMut(WatchEvent) + Send,
    ) -> Result<(), ClientError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "{path}{sep}watch=true&allowWatchBookmarks=true&resourceVersion={resource_version}&timeoutSeconds=300"
        );
        let resp = self.send(Method::GET, &url, "", None).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(status_error(status, &bytes));
        }
        let mut body = resp.into_body().into_data_stream();
        let mut buf: Vec<u8> = Vec::new();
        // A silent server (no events, no bookmarks) for this long means a dead connection.
        while let Ok(chunk) = tokio::time::timeout(Duration::from_secs(330), body.next()).await {
            let Some(chunk) = chunk else { break };
            let chunk = chunk.map_err(|e| ClientError::Transport(e.to_string()))?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let ev: Value = serde_json::from_slice(&line)
                    .map_err(|e| ClientError::Decode(e.to_string()))?;
                let kind = ev.get("type").and_then(Value::as_str).unwrap_or("");
                let object = ev.get("object").cloned().unwrap_or(Value::Null);
                match kind {
                    "ADDED" | "MODIFIED" => on_event(WatchEvent::Applied(object)),
                    "DELETED" => on_event(WatchEvent::Deleted(object)),
                    "BOOKMARK" => on_event(WatchEvent::Bookmark(resource_version_of(&object))),
                    "ERROR" => {
                        let code = object.get("code").and_then(Value::as_u64).unwrap_or(500);
                        return Err(ClientError::Status {
                            code: code as u16,
                            message: object
                                .get("message")
                                .and_then(Value::as_str)
                                .unwrap_or("watch error")
                                .to_string(),
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn status_error(status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    ClientError::Status {
        code: status.as_u16(),
        message,
    }
}

pub fn resource_version_of(obj: &Value) -> String {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

pub enum WatchEvent {
    Applied(Value),
    Deleted(Value),
    Bookmark(String),
}

/// `namespace/name` (or `name`) of an object.
pub fn object_key(obj: &Value) -> String {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// A local copy of one list (with its selectors in `path`), kept current by list + watch.
/// Readers take snapshots; `changed()` wakes them after every applied event or re-list.
#[derive(Clone)]
pub struct Reflector {
    objects: Arc<RwLock<BTreeMap<String, Value>>>,
    version: watch::Sender<u64>,
    synced: watch::Sender<bool>,
}

impl Default for Reflector {
    fn default() -> Self {
        Reflector {
            objects: Arc::default(),
            version: watch::channel(0).0,
            synced: watch::channel(false).0,
        }
    }
}

impl Reflector {
    /// Starts following `path` (a collection URL, e.g. `/api/v1/services`).
    pub fn start(client: ApiClient, path: String) -> Reflector {
        let r = Reflector::default();
        let me = r.clone();
        tokio::spawn(async move { me.run(client, path).await });
        r
    }

    async fn run(self, client: ApiClient, path: String) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match client.list(&path).await {
                Ok((items, mut rv)) => {
                    backoff = Duration::from_millis(500);
                    self.replace(items);
                    loop {
                        let mut last_rv = rv.clone();
                        let res = client
                            .watch(&path, &rv, |ev| match ev {
                                WatchEvent::Applied(o) => {
                                    last_rv = resource_version_of(&o);
                                    self.apply(o);
                                }
                                WatchEvent::Deleted(o) => {
                                    last_rv = resource_version_of(&o);
                                    self.remove(&o);
                                }
                                WatchEvent::Bookmark(v) => last_rv = v,
                            })
                            .await;
                        if !last_rv.is_empty() {
                            rv = last_rv;
                        }
                        match res {
                            Ok(()) => continue,
                            Err(e) if e.is_gone() => break,
                            Err(e) => {
                                tracing::debug!(%path, error = %e, "watch ended");
                                tokio::time::sleep(backoff).await;
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(%path, error = %e, "list failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    pub fn replace(&self, items: Vec<Value>) {
        if let Ok(mut m) = self.objects.write() {
            *m = items.into_iter().map(|o| (object_key(&o), o)).collect();
        }
        self.synced.send_replace(true);
        self.bump();
    }

    pub fn apply(&self, obj: Value) {
        if let Ok(mut m) = self.objects.write() {
            m.insert(object_key(&obj), obj);
        }
        self.bump();
    }

    pub fn remove(&self, obj: &Value) {
        if let Ok(mut m) = self.objects.write() {
            m.remove(&object_key(obj));
        }
        self.bump();
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    pub fn snapshot(&self) -> Vec<Value> {
        self.objects
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        self.objects.read().ok().and_then(|m| m.get(key).cloned())
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// A receiver that changes whenever the copy does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reflector_keeps_latest_objects() {
        let r = Reflector::default();
        let mut rx = r.subscribe();
        r.replace(vec![json!({"metadata": {"name": "a", "namespace": "x"}})]);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        r.apply(json!({"metadata": {"name": "b", "namespace": "x"}, "v": 1}));
        r.apply(json!({"metadata": {"name": "b", "namespace": "x"}, "v": 2}));
        assert_eq!(r.get("x/b").unwrap()["v"], 2);
        r.remove(&json!({"metadata": {"name": "a", "namespace": "x"}}));
        assert_eq!(r.snapshot().len(), 1);
        assert!(r.is_synced());
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn kubeconfig_as_the_server_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.yaml");
        // A real CA so the TLS configuration accepts it.
        let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let key = ca.key_pair.serialize_pem();
        let cert = ca.cert.pem();
        std::fs::write(
            &p,
            crate::kubeconfig::render("https://127.0.0.1:1", &cert, &cert, &key),
        )
        .unwrap();
        let c = ApiClient::from_kubeconfig(&p).unwrap();
        assert_eq!(c.server(), "https://127.0.0.1:1");
        let missing = ApiClient::from_kubeconfig(&dir.path().join("nope"));
        assert!(matches!(missing, Err(ClientError::Kubeconfig { .. })));
    }
}
