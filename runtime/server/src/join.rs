//! `POST /cairn/v1/join`: a node proves it holds a join token (the server token as
//! `Basic base64(node:<secret>)`, or a bootstrap token as `Bearer <id>.<secret>`) and its
//! node password, and gets a client certificate `CN=system:node:<name>, O=system:nodes` for
//! the key in its signing request.
//!
//! The node password stops a second machine from taking over a node name: the first join
//! stores a salted hash in Secret `kube-system/<name>.node-password.cairn`, and a later join
//! with another password is refused.

use super::pki::Pki;
use super::tokens::{constant_time_eq, verify_bootstrap, SecretBackend, StoreSecrets};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use cairn_api::status::ApiError;
use cairn_store::Store;
use cairn_wire::join::{JoinRequest, JoinResponse};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const NAMESPACE: &str = "kube-system";
const PASSWORD_TYPE: &str = "cairn.io/node-password";

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

impl JoinError {
    fn into_api(self) -> ApiError {
        match self {
            JoinError::Unauthorized => ApiError::unauthorized(),
            JoinError::BadRequest(m) => ApiError::bad_request(m),
            JoinError::Forbidden(m) => {
                let mut e = ApiError::bad_request(m);
                e.code = StatusCode::FORBIDDEN;
                e.reason = "Forbidden";
                e
            }
            JoinError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<super::tokens::TokenError> for JoinError {
    fn from(e: super::tokens::TokenError) -> Self {
        JoinError::Internal(e.to_string())
    }
}

/// What the join endpoint needs: the CA to sign with, the server token's secret, the store.
pub struct Joiner {
    pub pki: Arc<Pki>,
    pub server_secret: String,
    pub store: Arc<dyn Store>,
}

impl Joiner {
    /// Answers one join request.
    pub async fn handle(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        match self.join(headers, body).await {
            Ok(r) => (StatusCode::OK, axum::Json(r)).into_response(),
            Err(e) => {
                tracing::info!(error = %e, "join refused");
                e.into_api().into_response()
            }
        }
    }

    async fn join(&self, headers: &HeaderMap, body: &[u8]) -> Result<JoinResponse, JoinError> {
        let secrets = StoreSecrets(self.store.clone());
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !self.token_is_valid(&secrets, auth).await? {
            return Err(JoinError::Unauthorized);
        }
        let req: JoinRequest = serde_json::from_slice(body)
            .map_err(|e| JoinError::BadRequest(format!("the join request is not valid: {e}")))?;
        if !is_node_name(&req.node_name) {
            return Err(JoinError::BadRequest(format!(
                "{:?} is not a valid node name (lower-case letters, digits, '-' and '.')",
                req.node_name
            )));
        }
        if req.node_password.len() < 16 {
            return Err(JoinError::BadRequest(
                "the node password is too short".into(),
            ));
        }
        check_node_password(&secrets, &req.node_name, &req.node_password).await?;
        let client_cert = self
            .pki
            .sign_node_certificate(&req.csr, &req.node_name)
            .map_err(|e| JoinError::BadRequest(format!("the signing request: {e}")))?;
        tracing::info!(node = %req.node_name, "node joined");
        Ok(JoinResponse {
            ca_cert: self.pki.ca_cert_pem.clone(),
            client_cert,
        })
    }

    async fn token_is_valid(&self, secrets: &StoreSecrets, auth: &str) -> Result<bool, JoinError> {
        if let Some(b) = auth.strip_prefix("Basic ") {
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else {
                return Ok(false);
            };
            let raw = String::from_utf8_lossy(&raw);
            let secret = raw.split_once(':').map_or("", |(_, s)| s);
            return Ok(constant_time_eq(
                secret.as_bytes(),
                self.server_secret.as_bytes(),
            ));
        }
        if let Some(t) = auth.strip_prefix("Bearer ") {
            return Ok(verify_bootstrap(secrets, t.trim()).await?);
        }
        Ok(false)
    }
}

/// A DNS subdomain, as Kubernetes requires of node names.
fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

pub fn password_secret_name(node: &str) -> String {
    format!("{node}.node-password.cairn")
}

fn hash_password(salt: &str, password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(password.as_bytes());
    hex::encode(h.finalize())
}

fn password_secret(node: &str, salt: &str, password: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": password_secret_name(node), "namespace": NAMESPACE},
        "type": PASSWORD_TYPE,
        "data": {"salt": b64(salt), "hash": b64(&hash_password(salt, password))},
    })
}

fn password_matches(secret: &Value, password: &str) -> bool {
    let field = |f: &str| {
        secret["data"][f]
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .and_then(|b| String::from_utf8(b).ok())
    };
    match (field("salt"), field("hash")) {
        (Some(salt), Some(hash)) => {
            constant_time_eq(hash_password(&salt, password).as_bytes(), hash.as_bytes())
        }
        _ => false,
    }
}

/// Records the node's password on its first join; refuses a different one afterwards.
pub async fn check_node_password(
    secrets: &dyn SecretBackend,
    node: &str,
    password: &str,
) -> Result<(), JoinError> {
    let taken = || {
        JoinError::Forbidden(format!(
            "node name {node} is taken by another machine: remove the node and secret {NAMESPACE}/{} to reuse it",
            password_secret_name(node)
        ))
    };
    if let Some(s) = secrets
        .get_secret(NAMESPACE, &password_secret_name(node))
        .await?
    {
        return if password_matches(&s, password) {
            Ok(())
        } else {
            Err(taken())
        };
    }
    let salt =
        cairn_wire::secret::random_secret(16).map_err(|e| JoinError::Internal(e.to_string()))?;
    match secrets
        .create_secret(NAMESPACE, password_secret(node, &salt, password))
        .await
    {
        Ok(()) => Ok(()),
        // Two machines joining the same new name at once: the first one wins.
        Err(super::tokens::TokenError::Store(cairn_store::StoreError::AlreadyExists)) => {
            match secrets
                .get_secret(NAMESPACE, &password_secret_name(node))
                .await?
            {
                Some(s) if password_matches(&s, password) => Ok(()),
                _ => Err(taken()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(is_node_name("n1"));
        assert!(is_node_name("edge-1.site.example"));
        assert!(!is_node_name(""));
        assert!(!is_node_name("N1"));
        assert!(!is_node_name("-n"));
        assert!(!is_node_name("a..b"));
        assert!(!is_node_name("a/b"));
    }

    #[tokio::test]
    async fn a_second_machine_cannot_take_a_node_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(cairn_store::SqliteStore::open(&dir.path().join("state.db")).expect("store"));
        crate::bootstrap(&store).await.expect("bootstrap");
        let secrets = StoreSecrets(store);
        check_node_password(&secrets, "n1", "first-machine-password")
            .await
            .expect("first join");
        check_node_password(&secrets, "n1", "first-machine-password")
            .await
            .expect("same machine again");
        let err = check_node_password(&secrets, "n1", "other-machine-password")
            .await
            .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "node name n1 is taken by another machine: remove the node and secret kube-system/n1.node-password.cairn to reuse it"
        );
        assert_eq!(err.into_api().code, StatusCode::FORBIDDEN);
        let stored = secrets
            .get_secret(NAMESPACE, "n1.node-password.cairn")
            .await
            .expect("get")
            .expect("secret");
        assert!(!stored.to_string().contains("first-machine-password"));
        check_node_password(&secrets, "n2", "other-machine-password")
            .await
            .expect("another name is free");
    }
}
