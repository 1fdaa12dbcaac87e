//! A minimal keep-alive HTTPS/1.1 client for load and crash tests, where kubectl would be the
//! bottleneck: bearer token, Content-Length or chunked responses.

#![allow(dead_code)] // shared by tests and the bench, each using a part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

/// TLS settings trusting the CA in a server's data directory.
pub fn tls_for(data_dir: &Path) -> Arc<rustls::ClientConfig> {
    let ca = std::fs::read(data_dir.join("tls/server-ca.crt")).expect("server CA");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// The admin token in a server's data directory.
pub fn token_for(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("token"))
        .expect("token")
        .trim()
        .to_string()
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    stream: BufReader<Tls>,
    token: String,
}

impl Conn {
    /// A TLS connection to 127.0.0.1:`port` trusting `tls`'s roots, authenticating with `token`.
    pub fn open(port: u16, tls: &Arc<rustls::ClientConfig>, token: &str) -> Conn {
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_nodelay(true).ok();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let conn = rustls::ClientConnection::new(tls.clone(), name).expect("tls");
        Conn {
            stream: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
            token: token.to_string(),
        }
    }

    /// Sends one request and reads the whole response: (status, body).
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.request_with(method, path, "application/json", body)
    }

    /// [`Conn::request`] with the body's content type.
    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.token,
            body.len()
        );
        let w = self.stream.get_mut();
        w.write_all(head.as_bytes()).expect("write");
        w.write_all(body).expect("write body");
        w.flush().expect("flush");
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).expect("status");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            self.stream.read_line(&mut h).expect("header");
            if h == "\r\n" || h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.stream.read_line(&mut size).expect("chunk size");
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                self.stream.read_exact(&mut chunk).expect("chunk");
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(len, 0);
            self.stream.read_exact(&mut body).expect("body");
        }
        (status, body)
    }
}
