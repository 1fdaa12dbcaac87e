//! A minimal HTTP file server on the host, for what a VM downloads in tests.

use anyhow::Result;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Serves files to a VM over HTTP on the host's loopback, which QEMU's user network shows
/// the guest as 10.0.2.2. Each request streams one file, as a plain web server would.
pub struct FileServer {
    pub port: u16,
    files: Arc<Mutex<std::collections::BTreeMap<String, PathBuf>>>,
}

impl FileServer {
    pub fn start() -> Result<FileServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let files: Arc<Mutex<std::collections::BTreeMap<String, PathBuf>>> = Arc::default();
        let table = files.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let table = table.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &table);
                });
            }
        });
        Ok(FileServer { port, files })
    }

    /// Makes `path` available as `http://10.0.2.2:<port>/<name>` to the guest.
    pub fn publish(&self, name: &str, path: &Path) -> String {
        if let Ok(mut f) = self.files.lock() {
            f.insert(name.to_string(), path.to_path_buf());
        }
        format!("http://10.0.2.2:{}/{name}", self.port)
    }
}

fn serve_one(
    conn: std::net::TcpStream,
    table: &Mutex<std::collections::BTreeMap<String, PathBuf>>,
) -> Result<()> {
    let mut reader = std::io::BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let name = request
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let path = table.lock().ok().and_then(|t| t.get(&name).cloned());
    let mut out = conn;
    match path.and_then(|p| std::fs::File::open(p).ok()) {
        Some(mut f) => {
            let len = f.metadata()?.len();
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )?;
            std::io::copy(&mut f, &mut out)?;
        }
        None => {
            write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
