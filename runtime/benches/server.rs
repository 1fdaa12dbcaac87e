//! `make bench`: cairn server figures, each against a baseline measured in the same run.
//! Writes bench/results/server.json (or the path given with --out).
//!
//! - create 5,000 ConfigMaps from 16 concurrent clients, as a ratio to raw single-row SQLite
//!   inserts with the same durability (WAL, synchronous=FULL, one transaction per row)
//! - LIST of 5,000 objects, p50/p99
//! - 100 watchers: delay from a create request to each watcher receiving its event, p99
//! - server RSS idle and with 5,000 objects; stripped binary size
//! - RSS under load (500 open watches and a 2,000-request burst of lists, gets and patches
//!   over the 5,000 objects), its peak, and 30 s after the load ended, against idle

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
const LOAD_WATCHES: usize = 500;
const BURST: usize = 2_000;

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
        let s = watch_stream(
            &server,
            "labelSelector=watch%3Dyes&timeoutSeconds=60",
            Duration::from_secs(60),
        );
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

    drop(watchers);
    let load = load_memory(&server, rss_idle);

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
        "rss_under_load": load,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).expect("results dir");
    }
    let text = serde_json::to_string_pretty(&result).expect("json") + "\n";
    std::fs::write(&out, &text).expect("write results");
    print!("{text}");
}

/// A watch request on the bench namespace's ConfigMaps with `query`, sent; reads then time
/// out after `read_timeout`. HTTP/1.0: the event stream comes unchunked, one JSON object a line.
fn watch_stream(
    server: &Server,
    query: &str,
    read_timeout: Duration,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    // The handshake may wait behind hundreds of others.
    tcp.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let c = rustls::ClientConnection::new(server.tls.clone(), name).expect("tls");
    let mut s = rustls::StreamOwned::new(c, tcp);
    write!(
        s,
        "GET /api/v1/namespaces/bench/configmaps?watch=true&{query} HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n",
        server.token
    )
    .expect("watch request");
    s.flush().expect("watch request");
    s.sock
        .set_read_timeout(Some(read_timeout))
        .expect("timeout");
    s
}

/// A watch on the bench namespace from now on, read until the server or `stop` ends it.
fn open_watch(
    server: &Server,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let s = watch_stream(
        server,
        "resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=300",
        Duration::from_millis(500),
    );
    std::thread::spawn(move || {
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let mut events = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match r.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => events += 1,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
            line.clear();
        }
        events
    })
}

/// RSS while 500 watches are open and 2,000 requests hit the 5,000 objects from 16
/// clients (every fourth a full LIST, a quarter label patches every watcher sees, the
/// rest GETs), sampled every 50 ms; then 30 s after the watches closed.
fn load_memory(server: &Arc<Server>, rss_idle: u64) -> serde_json::Value {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    eprintln!("bench: {LOAD_WATCHES} watches and a {BURST}-request burst");
    let pid = server.child.id();
    let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let watches: Vec<_> = (0..LOAD_WATCHES)
        .map(|_| open_watch(server, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let rss_watching = rss_kib(pid);
    let start = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let server = server.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(server.port, &server.tls, &server.token);
                for i in (c..BURST).step_by(CLIENTS) {
                    let name = format!("cm-{}", (i * 7919) % OBJECTS);
                    let (status, _) = match i % 4 {
                        0 => conn.request("GET", "/api/v1/namespaces/bench/configmaps", b""),
                        1 => conn.request_with(
                            "PATCH",
                            &format!("/api/v1/namespaces/bench/configmaps/{name}"),
                            "application/merge-patch+json",
                            format!(r#"{{"metadata":{{"labels":{{"burst":"{i}"}}}}}}"#).as_bytes(),
                        ),
                        _ => conn.request(
                            "GET",
                            &format!("/api/v1/namespaces/bench/configmaps/{name}"),
                            b"",
                        ),
                    };
                    assert_eq!(status, 200, "burst request {i}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("burst client");
    }
    let burst_secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let events: usize = watches.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let peak_kib = peak.load(Ordering::Relaxed);
    eprintln!("bench: 30 s after the load");
    std::thread::sleep(Duration::from_secs(30));
    let after = rss_kib(pid);
    serde_json::json!({
        "watches": LOAD_WATCHES, "requests": BURST, "burst_secs": burst_secs,
        "watch_lines_received": events,
        "idle_kib": rss_idle,
        "with_watches_open_kib": rss_watching,
        "peak_kib": peak_kib, "target_peak_kib": 128 * 1024,
        "after_30s_kib": after,
        "after_30s_ratio_to_idle": after as f64 / rss_idle.max(1) as f64, "target_after_ratio": 2.0,
    })
}
