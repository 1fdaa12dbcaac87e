//! Join tokens. The server token `K10<ca hash>::node:<secret>` lives in `<data-dir>/node-token`
//! (separate from the admin bearer token in `<data-dir>/token`). Bootstrap tokens
//! `K10<ca hash>::<id>.<secret>` are Secrets `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token`, the Kubernetes convention, so they can be listed, expire
//! and be revoked without restarting the server.

use async_trait::async_trait;
use base64::Engine;
use cairn_store::{Store, StoreError};
use cairn_wire::join::{is_bootstrap_id, is_bootstrap_secret, TOKEN_PREFIX};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const BOOTSTRAP_TYPE: &str = "bootstrap.kubernetes.io/token";
const NAMESPACE: &str = "kube-system";
const NAME_PREFIX: &str = "bootstrap-token-";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("API: {0}")]
    Api(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no bootstrap token with id {0}")]
    NotFound(String),
}

/// The server's own join token.
#[derive(Debug, Clone)]
pub struct ServerToken {
    /// What follows `node:` in the token.
    pub secret: String,
    /// `K10<ca hash>::node:<secret>`.
    pub full: String,
}

/// The secret part of a configured `--token`: either the full `K10...::node:<secret>` form or
/// the bare secret.
fn secret_of(configured: &str) -> String {
    let t = configured.trim();
    let creds = t
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|r| r.split_once("::"))
        .map_or(t, |(_, c)| c);
    creds.split_once(':').map_or(creds, |(_, s)| s).to_string()
}

/// Reads or makes the server token and writes it, in full, to `<data_dir>/node-token` (0600).
/// A configured token wins; otherwise the secret of an earlier start is kept.
pub fn load_or_create_server_token(
    data_dir: &Path,
    configured: Option<&str>,
    ca_hash: &str,
) -> Result<ServerToken, TokenError> {
    let path = data_dir.join("node-token");
    let io = |source| TokenError::Io {
        path: path.clone(),
        source,
    };
    let secret = match configured.filter(|t| !t.trim().is_empty()) {
        Some(t) => secret_of(t),
        None => match std::fs::read_to_string(&path) {
            Ok(s) if !secret_of(&s).is_empty() => secret_of(&s),
            Ok(_) => cairn_wire::secret::random_secret(16).map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                cairn_wire::secret::random_secret(16).map_err(io)?
            }
            Err(e) => return Err(io(e)),
        },
    };
    if secret.is_empty() {
        return Err(TokenError::Invalid("the server token is empty".into()));
    }
    let full = format!("{TOKEN_PREFIX}{ca_hash}::node:{secret}");
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    std::io::Write::write_all(&mut f, format!("{full}\n").as_bytes()).map_err(io)?;
    Ok(ServerToken { secret, full })
}

/// Where the Secrets of bootstrap tokens are kept: the store inside the server, or the API
/// for the `cairn token` command (which implements this over its API client).
#[async_trait]
pub trait SecretBackend: Send + Sync {
    async fn get_secret(&self, namespace: &str, name: &str) -> Result<Option<Value>, TokenError>;
    async fn list_secrets(&self, namespace: &str) -> Result<Vec<Value>, TokenError>;
    async fn create_secret(&self, namespace: &str, secret: Value) -> Result<(), TokenError>;
    /// False when there was nothing to delete.
    async fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool, TokenError>;
}

/// Secrets straight in the server's store.
pub struct StoreSecrets(pub Arc<dyn Store>);

fn secrets() -> Result<&'static cairn_api::resources::Resource, TokenError> {
    cairn_api::resources::find("", "v1", "secrets")
        .ok_or_else(|| TokenError::Api("the secrets resource is not registered".into()))
}

fn anyhow_to_token(e: anyhow::Error) -> TokenError {
    match e.downcast::<StoreError>() {
        Ok(s) => TokenError::Store(s),
        Err(e) => TokenError::Api(e.to_string()),
    }
}

#[async_trait]
impl SecretBackend for StoreSecrets {
    async fn get_secret(&self, namespace: &str, name: &str) -> Result<Option<Value>, TokenError> {
        cairn_controllers::util::get(&*self.0, &secrets()?.key(Some(namespace), name))
            .await
            .map_err(anyhow_to_token)
    }

    async fn list_secrets(&self, namespace: &str) -> Result<Vec<Value>, TokenError> {
        cairn_controllers::util::list(&*self.0, &secrets()?.key_prefix(Some(namespace)))
            .await
            .map_err(anyhow_to_token)
    }

    async fn create_secret(&self, _namespace: &str, secret: Value) -> Result<(), TokenError> {
        cairn_controllers::util::create(&*self.0, secrets()?, secret)
            .await
            .map(|_| ())
            .map_err(anyhow_to_token)
    }

    async fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool, TokenError> {
        let r = secrets()?;
        let found = cairn_controllers::util::get(&*self.0, &r.key(Some(namespace), name))
            .await
            .map_err(anyhow_to_token)?;
        match found {
            Some(secret) => cairn_controllers::util::delete(&*self.0, r, &secret)
                .await
                .map(|_| true)
                .map_err(anyhow_to_token),
            None => Ok(false),
        }
    }
}

/// Secrets through the API with an admin client: what `cairn token` uses.
pub struct ApiSecrets(pub cairn_wire::client::ApiClient);

fn secret_path(namespace: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("/api/v1/namespaces/{namespace}/secrets/{n}"),
        None => format!("/api/v1/namespaces/{namespace}/secrets"),
    }
}

fn client_error(e: cairn_wire::client::ClientError) -> TokenError {
    TokenError::Api(e.to_string())
}

#[async_trait]
impl SecretBackend for ApiSecrets {
    async fn get_secret(&self, namespace: &str, name: &str) -> Result<Option<Value>, TokenError> {
        self.0
            .get(&secret_path(namespace, Some(name)))
            .await
            .map_err(client_error)
    }

    async fn list_secrets(&self, namespace: &str) -> Result<Vec<Value>, TokenError> {
        Ok(self
            .0
            .list(&secret_path(namespace, None))
            .await
            .map_err(client_error)?
            .0)
    }

    async fn create_secret(&self, namespace: &str, secret: Value) -> Result<(), TokenError> {
        self.0
            .create(&secret_path(namespace, None), &secret)
            .await
            .map(|_| ())
            .map_err(client_error)
    }

    async fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool, TokenError> {
        // The client treats a missing object as deleted; look first to tell the user.
        if self.get_secret(namespace, name).await?.is_none() {
            return Ok(false);
        }
        self.0
            .delete(&secret_path(namespace, Some(name)), None)
            .await
            .map_err(client_error)?;
        Ok(true)
    }
}

/// The join-token CA hash of the cluster a kubeconfig points at: sha256 of its
/// `certificate-authority-data` (the same PEM the server serves at `/cacerts`).
pub fn ca_hash_from_kubeconfig(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
        path: path.to_owned(),
        source,
    })?;
    let data = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .map(|v| v.trim().trim_matches('"'))
        .ok_or_else(|| {
            TokenError::Invalid(format!(
                "{} has no certificate-authority-data",
                path.display()
            ))
        })?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| TokenError::Invalid(format!("certificate-authority-data: {e}")))?;
    Ok(cairn_wire::join::ca_hash(&pem))
}

/// `cairn token create`: prints nothing itself; returns the full token to print.
pub async fn create_with_kubeconfig(
    kubeconfig: &Path,
    ttl: &str,
    description: &str,
) -> Result<String, TokenError> {
    let hash = ca_hash_from_kubeconfig(kubeconfig)?;
    let client =
        cairn_wire::client::ApiClient::from_kubeconfig(kubeconfig).map_err(client_error)?;
    create(&ApiSecrets(client), &hash, parse_ttl(ttl)?, description).await
}

/// `cairn token list`: the table to print.
pub async fn list_with_kubeconfig(kubeconfig: &Path) -> Result<String, TokenError> {
    let client =
        cairn_wire::client::ApiClient::from_kubeconfig(kubeconfig).map_err(client_error)?;
    Ok(format_table(&list(&ApiSecrets(client)).await?))
}

/// `cairn token delete <id>`.
pub async fn delete_with_kubeconfig(kubeconfig: &Path, id: &str) -> Result<(), TokenError> {
    let client =
        cairn_wire::client::ApiClient::from_kubeconfig(kubeconfig).map_err(client_error)?;
    delete(&ApiSecrets(client), id).await
}

/// The `cairn token list` table: id, expiry, usages, description (never the secret).
pub fn format_table(tokens: &[BootstrapToken]) -> String {
    let mut out = format!(
        "{:<8}{:<24}{:<30}{}\n",
        "TOKEN", "EXPIRES", "USAGES", "DESCRIPTION"
    );
    for t in tokens {
        out.push_str(&format!(
            "{:<8}{:<24}{:<30}{}\n",
            t.id,
            t.expiration.as_deref().unwrap_or("<forever>"),
            t.usages.join(","),
            t.description
        ));
    }
    out
}

/// A bootstrap token as `cairn token list` shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    /// RFC3339 expiry; `None` never expires.
    pub expiration: Option<String>,
    pub description: String,
    pub usages: Vec<String>,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn data_field(secret: &Value, field: &str) -> Option<String> {
    let raw = secret["data"][field].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    String::from_utf8(bytes).ok()
}

/// `n` random characters of `[a-z0-9]`, the bootstrap token alphabet.
fn random_token_chars(n: usize) -> Result<String, TokenError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::getrandom(&mut buf).map_err(|e| TokenError::Io {
            path: PathBuf::from("/dev/urandom"),
            source: std::io::Error::other(e.to_string()),
        })?;
        // Rejection sampling keeps the characters uniform (252 = 7 * 36).
        for b in buf {
            if b < 252 && out.len() < n {
                out.push(ALPHABET[(b % 36) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// The Secret that holds a bootstrap token.
fn bootstrap_secret(id: &str, secret: &str, expiration: Option<&str>, description: &str) -> Value {
    let mut data = json!({
        "token-id": b64(id),
        "token-secret": b64(secret),
        "usage-bootstrap-authentication": b64("true"),
        "usage-bootstrap-signing": b64("true"),
        "description": b64(description),
    });
    if let Some(e) = expiration {
        data["expiration"] = json!(b64(e));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("{NAME_PREFIX}{id}"), "namespace": NAMESPACE},
        "type": BOOTSTRAP_TYPE,
        "data": data,
    })
}

/// Makes a bootstrap token and returns it in full (`K10<ca hash>::<id>.<secret>`); this is
/// the only time its secret is shown.
pub async fn create(
    api: &dyn SecretBackend,
    ca_hash: &str,
    ttl: Option<Duration>,
    description: &str,
) -> Result<String, TokenError> {
    let id = random_token_chars(6)?;
    let secret = random_token_chars(16)?;
    let expiration =
        ttl.map(|d| cairn_wire::time::rfc3339(cairn_wire::time::now_secs() + d.as_secs() as i64));
    api.create_secret(
        NAMESPACE,
        bootstrap_secret(&id, &secret, expiration.as_deref(), description),
    )
    .await?;
    Ok(format!("{TOKEN_PREFIX}{ca_hash}::{id}.{secret}"))
}

/// Every bootstrap token, oldest id order.
pub async fn list(api: &dyn SecretBackend) -> Result<Vec<BootstrapToken>, TokenError> {
    let mut out: Vec<BootstrapToken> = api
        .list_secrets(NAMESPACE)
        .await?
        .iter()
        .filter(|s| s["type"] == BOOTSTRAP_TYPE)
        .filter_map(|s| {
            let id = data_field(s, "token-id")?;
            let usages = ["authentication", "signing"]
                .iter()
                .filter(|u| {
                    data_field(s, &format!("usage-bootstrap-{u}")).as_deref() == Some("true")
                })
                .map(|u| u.to_string())
                .collect();
            Some(BootstrapToken {
                id,
                expiration: data_field(s, "expiration"),
                description: data_field(s, "description").unwrap_or_default(),
                usages,
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Revokes a bootstrap token. Accepts the id or the whole `<id>.<secret>`.
pub async fn delete(api: &dyn SecretBackend, id: &str) -> Result<(), TokenError> {
    let id = id.split('.').next().unwrap_or(id);
    if !is_bootstrap_id(id) {
        return Err(TokenError::Invalid(format!(
            "{id:?} is not a token id (6 characters of a-z and 0-9)"
        )));
    }
    if api
        .delete_secret(NAMESPACE, &format!("{NAME_PREFIX}{id}"))
        .await?
    {
        Ok(())
    } else {
        Err(TokenError::NotFound(id.to_string()))
    }
}

/// Whether `<id>.<secret>` is a bootstrap token that exists, has not expired and may
/// authenticate.
pub async fn verify_bootstrap(api: &dyn SecretBackend, token: &str) -> Result<bool, TokenError> {
    let Some((id, secret)) = token.split_once('.') else {
        return Ok(false);
    };
    if !is_bootstrap_id(id) || !is_bootstrap_secret(secret) {
        return Ok(false);
    }
    let Some(s) = api
        .get_secret(NAMESPACE, &format!("{NAME_PREFIX}{id}"))
        .await?
    else {
        return Ok(false);
    };
    if s["type"] != BOOTSTRAP_TYPE
        || data_field(&s, "usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return Ok(false);
    }
    let stored = data_field(&s, "token-secret").unwrap_or_default();
    if !constant_time_eq(stored.as_bytes(), secret.as_bytes()) {
        return Ok(false);
    }
    if let Some(exp) = data_field(&s, "expiration") {
        match cairn_wire::time::parse_rfc3339(&exp) {
            Some(t) if t > cairn_wire::time::now_secs() => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a TTL such as `24h`, `30m`, `90s`, `7d` or `1h30m`; `0` means no expiry.
pub fn parse_ttl(s: &str) -> Result<Option<Duration>, TokenError> {
    let s = s.trim();
    if s == "0" {
        return Ok(None);
    }
    let bad = || TokenError::Invalid(format!("{s:?} is not a duration like 24h, 30m or 7d"));
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Some(Duration::from_secs(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn server_token_is_written_in_full_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create_server_token(dir.path(), None, HASH).expect("token");
        assert!(a.full.starts_with(&format!("K10{HASH}::node:")));
        let b = load_or_create_server_token(dir.path(), None, HASH).expect("token");
        assert_eq!(a.secret, b.secret);
        let on_disk = std::fs::read_to_string(dir.path().join("node-token")).expect("read");
        assert_eq!(on_disk.trim(), a.full);
        let c = load_or_create_server_token(dir.path(), Some("mine"), HASH).expect("token");
        assert_eq!(c.secret, "mine");
        let d =
            load_or_create_server_token(dir.path(), Some(&format!("K10{HASH}::node:xyz")), HASH)
                .expect("token");
        assert_eq!(d.secret, "xyz");
        let parsed = cairn_wire::join::Token::parse(&d.full).expect("parse");
        assert_eq!(parsed.secret, "xyz");
        assert_eq!(parsed.ca_hash.as_deref(), Some(HASH));
    }

    #[test]
    fn ttls() {
        assert_eq!(
            parse_ttl("24h").expect("24h"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_ttl("1h30m").expect("1h30m"),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(parse_ttl("0").expect("0"), None);
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("10").is_err());
    }

    #[tokio::test]
    async fn bootstrap_tokens_create_list_verify_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(cairn_store::SqliteStore::open(&dir.path().join("state.db")).expect("store"));
        crate::bootstrap(&store).await.expect("bootstrap");
        let api = StoreSecrets(store);
        let full = create(&api, HASH, Some(Duration::from_secs(3600)), "for n2")
            .await
            .expect("create");
        let t = cairn_wire::join::Token::parse(&full).expect("parse");
        assert!(t.bootstrap);
        let pair = format!("{}.{}", t.user, t.secret);
        assert!(verify_bootstrap(&api, &pair).await.expect("verify"));
        assert!(
            !verify_bootstrap(&api, &format!("{}.0000000000000000", t.user))
                .await
                .expect("verify")
        );
        let listed = list(&api).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, t.user);
        assert_eq!(listed[0].description, "for n2");
        assert!(listed[0].expiration.is_some());
        assert!(listed[0].usages.contains(&"authentication".to_string()));

        // An expired token no longer authenticates.
        let old = bootstrap_secret(
            "abc123",
            "0123456789abcdef",
            Some("2020-01-01T00:00:00Z"),
            "",
        );
        api.create_secret(NAMESPACE, old).await.expect("create");
        assert!(!verify_bootstrap(&api, "abc123.0123456789abcdef")
            .await
            .expect("verify"));

        delete(&api, &t.user).await.expect("delete");
        assert!(!verify_bootstrap(&api, &pair).await.expect("verify"));
        assert!(matches!(
            delete(&api, &t.user).await,
            Err(TokenError::NotFound(_))
        ));
        assert!(matches!(
            delete(&api, "BAD").await,
            Err(TokenError::Invalid(_))
        ));
    }
}
