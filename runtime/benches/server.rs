//! `make bench`: cairn server figures, each against a baseline measured in the same run.
//! Writes bench/results/server.json (or the path given with --out).
//!
//! - create 5,000 ConfigMaps from 16 concurrent clients, as a ratio to raw single-row SQLite
//!   inserts with the same durability (WAL, synchronous=FULL, one transaction per row)
//! - LIST of 5,000 objects, p50/p99
//! - 100 watchers: delay from a create request to each watcher receiving its event, p99
//! - server RSS idle and with 5,000 objects; stripped binary size

#[path = "../tests/common/http.rs"]
mod http;

use http::Conn;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OBJECTS: usize = 5_000;
const CLIENTS: usize = 16;
const WATCHERS: usize = 100;
const WATCH_EVENTS: usize = 50;
const LISTS: usize = 30;

struct Server {
    child: Child,
    port: u16,
    token: String,
    tls: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start_server(binary: &Path) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let data = dir.path().join("data");
    let child = Command::new(binary)
        .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
        .arg("--https-listen-port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(&data)
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
    let start = Instant::now();
    while !data.join("health.sock").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        child,
        port,
        token: http::token_for(&data),
        tls: http::tls_for(&data),
        _dir: dir,
    }
}

fn configmap(name: &str) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","labels":{{"bench":"yes"}}}},"data":{{"key":"{}"}}}}"#,
        "v".repeat(200)
    )
    .into_bytes()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The baseline: the same number of rows, each its own durable transaction, one writer.
fn raw_sqlite_inserts_per_sec(dir: &Path) -> f64 {
    let db = rusqlite::Connection::open(dir.join("raw.db")).expect("sqlite");
    db.pragma_update(None, "journal_mode", "WAL").expect("wal");
    db.pragma_update(None, "synchronous", "FULL").expect("sync");
    db.execute(
        "CREATE TABLE kv (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, value BLOB)",
        [],
    )
    .expect("table");
    let start = Instant::now();
    for i in 0..OBJECTS {
        db.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2)",
            rusqlite::params![
                format!("/registry/core/configmaps/bench/raw-{i}"),
                configmap(&format!("raw-{i}"))
            ],
        )
        .expect("insert");
    }
    OBJECTS as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("bench/results/server.json"));
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/cairn");
    assert!(
        binary.exists(),
        "build the server first: cargo build --release -p cairn-runtime"
    );

    let scratch = tempfile::tempdir().expect("tempdir");
    eprintln!("bench: raw SQLite baseline ({OBJECTS} durable single-row inserts)");
    let raw_per_sec = raw_sqlite_inserts_per_sec(scratch.path());

    let server = start_server(&binary);
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = rss_kib(server.child.id());
    let ns = br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"bench"}}"#;
    assert_eq!(
        Conn::open(server.port, &server.tls, &server.token)
            .request("POST", "/api/v1/namespaces", ns)
            .0,
        201
    );

    eprintln!("bench: {OBJECTS} ConfigMap creates from {CLIENTS} clients");
    let server = Arc::new(server);
    let start = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let server = server.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(server.port, &server.tls, &server.token);
                for i in (c..OBJECTS).step_by(CLIENTS) {
                    let (status, _) = conn.request(
                        "POST",
                        "/api/v1/namespaces/bench/configmaps",
                        &configmap(&format!("cm-{i}")),
                    );
                    assert_eq!(status, 201, "create cm-{i}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client");
    }
    let create_per_sec = OBJECTS as f64 / start.elapsed().as_secs_f64();
    let rss_loaded = rss_kib(server.child.id());

    eprintln!("bench: {LISTS} LISTs of {OBJECTS} objects");
    let mut conn = Conn::open(server.port, &server.tls, &server.token);
    let mut list_ms = Vec::new();
    for _ in 0..LISTS {
        let t = Instant::now();
        let (status, body) = conn.request("GET", "/api/v1/namespaces/bench/configmaps", b"");
        assert_eq!(status, 200);
        assert!(body.len() > OBJECTS * 200);
        list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    list_ms.sort_by(|a, b| a.total_cmp(b));

    eprintln!("bench: {WATCHERS} watchers, {WATCH_EVENTS} events");
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let tcp = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let c = rustls::ClientConnection::new(server.tls.clone(), name).expect("tls");
        let mut s = rustls::StreamOwned::new(c, tcp);
        // HTTP/1.0: the event stream comes unchunked, one JSON object a line.
        write!(
            s,
            "GET /api/v1/namespaces/bench/configmaps?watch=true&labelSelector=watch%3Dyes&timeoutSeconds=60 HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n",
            server.token
        )
        .expect("watch request");
        let tx = tx.clone();
        watchers.push(std::thread::spawn(move || {
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if let Some(i) = line.find("\"name\":\"w-") {
                    let name: String = line[i + 8..].chars().take_while(|c| *c != '"').collect();
                    let _ = tx.send((name, Instant::now()));
                }
                line.clear();
            }
        }));
    }
    drop(tx);
    std::thread::sleep(Duration::from_secs(2));
    let mut acked = std::collections::HashMap::new();
    for i in 0..WATCH_EVENTS {
        let name = format!("w-{i}");
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","labels":{{"watch":"yes"}}}}}}"#
        );
        let sent = Instant::now();
        let (status, _) = conn.request(
            "POST",
            "/api/v1/namespaces/bench/configmaps",
            body.as_bytes(),
        );
        assert_eq!(status, 201);
        acked.insert(name, sent);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut delivery_ms = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivery_ms.len() < WATCHERS * WATCH_EVENTS && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok((name, at)) => {
                if let Some(sent) = acked.get(&name) {
                    delivery_ms.push(at.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
                }
            }
            Err(_) => continue,
        }
    }
    delivery_ms.sort_by(|a, b| a.total_cmp(b));

    let binary_bytes = std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0);
    let ratio = create_per_sec / raw_per_sec;
    let result = serde_json::json!({
        "create_configmaps": {
            "objects": OBJECTS, "clients": CLIENTS,
            "per_sec": create_per_sec,
            "baseline_raw_sqlite_durable_inserts_per_sec": raw_per_sec,
            "ratio_to_baseline": ratio,
            "target_ratio": 0.3,
        },
        "list_5000": {"requests": LISTS, "p50_ms": percentile(&list_ms, 0.5), "p99_ms": percentile(&list_ms, 0.99)},
        "watch_delivery": {
            "watchers": WATCHERS, "events": WATCH_EVENTS,
            "delivered": delivery_ms.len(), "expected": WATCHERS * WATCH_EVENTS,
            "p50_ms": percentile(&delivery_ms, 0.5), "p99_ms": percentile(&delivery_ms, 0.99),
        },
        "rss_kib": {"idle": rss_idle, "with_5000_objects": rss_loaded, "target_idle_kib": 40 * 1024},
        "binary": {"host_stripped_bytes": binary_bytes, "target_bytes": 20 * 1024 * 1024},
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).expect("results dir");
    }
    let text = serde_json::to_string_pretty(&result).expect("json") + "\n";
    std::fs::write(&out, &text).expect("write results");
    print!("{text}");
    let _ = watchers;
}
