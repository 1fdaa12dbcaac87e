//! `/readyz` over a Unix socket beside the data directory, in plain HTTP: what PID 1 asks
//! before it declares the node ready (it has no TLS client, and needs no credentials).
//!
//! `GET /readyz` is ready when the store answers. `GET /readyz?node=<name>` is ready only when,
//! in addition, the Node object `<name>` exists and its `Ready` condition is `True`: a machine
//! running the embedded agent is not usable before its own node can take pods.

use cairn_store::{Store, StoreError};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The socket's place for a server whose state is in `data_dir`.
pub fn socket_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("health.sock")
}

/// Why a health question was answered "no".
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("node {0:?} is not registered")]
    NodeMissing(String),
    #[error("node {name:?} is not Ready (Ready={status})")]
    NodeNotReady { name: String, status: String },
    #[error("node {0:?}: stored object is not valid JSON")]
    NodeUnreadable(String),
    #[error("{0:?} is not a valid node name")]
    BadNodeName(String),
    #[error("no such health check: {0}")]
    UnknownPath(String),
}

impl HealthError {
    fn status_line(&self) -> &'static str {
        match self {
            HealthError::BadNodeName(_) => "400 Bad Request",
            HealthError::UnknownPath(_) => "404 Not Found",
            _ => "503 Service Unavailable",
        }
    }
}

/// Serves until the process ends.
pub fn spawn(data_dir: &Path, store: Arc<dyn Store>) -> std::io::Result<()> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "health socket accept");
                    continue;
                }
            };
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let target = line.split_whitespace().nth(1).unwrap_or("");
                let response = render(check(target, store.as_ref()).await);
                let _ = write.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// Answers one request target (path and query) of the health socket.
pub async fn check(target: &str, store: &dyn Store) -> Result<(), HealthError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/livez" | "/healthz" => Ok(()),
        "/readyz" => {
            store.current_revision().await?;
            match node_in_query(query)? {
                Some(name) => node_ready(store, &name).await,
                None => Ok(()),
            }
        }
        other => Err(HealthError::UnknownPath(other.to_string())),
    }
}

/// The `node=` parameter, checked to be a DNS subdomain name so it cannot reach outside the
/// nodes' keys.
fn node_in_query(query: &str) -> Result<Option<String>, HealthError> {
    let Some(name) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("node="))
        .map(str::to_string)
    else {
        return Ok(None);
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if valid {
        Ok(Some(name))
    } else {
        Err(HealthError::BadNodeName(name))
    }
}

async fn node_ready(store: &dyn Store, name: &str) -> Result<(), HealthError> {
    let key = format!("/registry/core/nodes/{name}");
    let record = store
        .get(&key)
        .await?
        .ok_or_else(|| HealthError::NodeMissing(name.to_string()))?;
    let node: Value = serde_json::from_slice(&record.value)
        .map_err(|_| HealthError::NodeUnreadable(name.to_string()))?;
    let status = ready_condition(&node).unwrap_or("Unknown");
    if status == "True" {
        Ok(())
    } else {
        Err(HealthError::NodeNotReady {
            name: name.to_string(),
            status: status.to_string(),
        })
    }
}

/// The status of the node's `Ready` condition, if it reports one.
fn ready_condition(node: &Value) -> Option<&str> {
    node.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))?
        .get("status")?
        .as_str()
}

fn render(result: Result<(), HealthError>) -> String {
    let (status, body) = match result {
        Ok(()) => ("200 OK", "ok".to_string()),
        Err(e) => (e.status_line(), format!("not ready: {e}")),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::SqliteStore;
    use serde_json::json;
    use tokio::io::AsyncReadExt;

    fn store_in(dir: &Path) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(&dir.join("state.db")).expect("open store"))
    }

    fn node(name: &str, ready: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name},
            "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": ready},
            ]},
        }))
        .expect("json")
    }

    #[tokio::test]
    async fn readyz_without_a_node_only_needs_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(dir.path());
        assert_eq!(check("/readyz", store.as_ref()).await, Ok(()));
        assert_eq!(check("/livez", store.as_ref()).await, Ok(()));
        assert!(matches!(
            check("/nope", store.as_ref()).await,
            Err(HealthError::UnknownPath(p)) if p == "/nope"
        ));
    }

    #[tokio::test]
    async fn node_must_exist_and_be_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(dir.path());
        let target = "/readyz?node=edge-1";
        assert_eq!(
            check(target, store.as_ref()).await,
            Err(HealthError::NodeMissing("edge-1".into()))
        );

        let key = "/registry/core/nodes/edge-1";
        let created = store
            .create(key, node("edge-1", "False"))
            .await
            .expect("create");
        assert_eq!(
            check(target, store.as_ref()).await,
            Err(HealthError::NodeNotReady {
                name: "edge-1".into(),
                status: "False".into()
            })
        );

        store
            .update(key, node("edge-1", "True"), created.revision)
            .await
            .expect("update");
        assert_eq!(check(target, store.as_ref()).await, Ok(()));
        // Another node's readiness says nothing about this one.
        assert_eq!(
            check("/readyz?node=edge-2", store.as_ref()).await,
            Err(HealthError::NodeMissing("edge-2".into()))
        );
    }

    #[tokio::test]
    async fn a_node_without_conditions_is_not_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(dir.path());
        let bare = serde_json::to_vec(&json!({"metadata": {"name": "n"}})).expect("json");
        store
            .create("/registry/core/nodes/n", bare)
            .await
            .expect("create");
        assert_eq!(
            check("/readyz?node=n", store.as_ref()).await,
            Err(HealthError::NodeNotReady {
                name: "n".into(),
                status: "Unknown".into()
            })
        );
    }

    #[tokio::test]
    async fn names_that_are_not_dns_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(dir.path());
        for bad in ["", "../pods", "a/b", "UPPER", "-lead", "x%2Fy"] {
            let got = check(&format!("/readyz?node={bad}"), store.as_ref()).await;
            assert_eq!(got, Err(HealthError::BadNodeName(bad.into())), "{bad:?}");
        }
    }

    async fn ask(socket: &Path, target: &str) -> String {
        let mut s = tokio::net::UnixStream::connect(socket)
            .await
            .expect("connect");
        s.write_all(format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn the_socket_answers_what_init_asks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(dir.path());
        spawn(dir.path(), store.clone()).expect("spawn");
        let socket = socket_path(dir.path());

        let plain = ask(&socket, "/readyz").await;
        assert!(plain.starts_with("HTTP/1.1 200 OK\r\n"), "{plain}");
        assert!(plain.ends_with("\r\n\r\nok"), "{plain}");

        let missing = ask(&socket, "/readyz?node=cairn").await;
        assert!(missing.starts_with("HTTP/1.1 503 "), "{missing}");
        assert!(
            missing.contains("node \"cairn\" is not registered"),
            "{missing}"
        );

        store
            .create("/registry/core/nodes/cairn", node("cairn", "True"))
            .await
            .expect("create");
        let ready = ask(&socket, "/readyz?node=cairn").await;
        assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");

        let bad = ask(&socket, "/readyz?node=a/b").await;
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    }
}
