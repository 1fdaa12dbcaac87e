//! `/readyz` over a Unix socket beside the data directory, in plain HTTP: what PID 1 asks
//! before it declares the node ready (it has no TLS client, and needs no credentials).

use crate::store::Store;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The socket's place for a server whose state is in `data_dir`.
pub fn socket_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("health.sock")
}

/// Serves until the process ends. Ready means the store answers.
pub fn spawn(data_dir: &Path, store: Arc<dyn Store>) -> std::io::Result<()> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let ok = match path {
                    "/livez" | "/healthz" => true,
                    "/readyz" => store.current_revision().await.is_ok(),
                    _ => false,
                };
                let (status, body) = if ok {
                    ("200 OK", "ok")
                } else {
                    ("503 Service Unavailable", "not ready")
                };
                let _ = write
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    Ok(())
}
