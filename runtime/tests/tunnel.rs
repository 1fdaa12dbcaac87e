//! Joining a node and carrying logs and exec through its tunnel: a real `cairn server`, the
//! agent's join and tunnel code in-process, and the real kubectl driving `logs` and `exec`.

mod common;

use bytes::Bytes;
use cairn_agent::logs::{self, LogStream, ReadOptions};
use cairn_agent::tunnel::{self, ExecIo, NodeStreams};
use cairn_wire::join::{self, JoinError, Token};
use cairn_wire::tunnel::{ExecRequest, LogRequest, StreamError};
use common::Server;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const LOG: &str = "2024-05-01T10:00:00.000000001Z stdout F one\n\
                   2024-05-01T10:00:01.500000000Z stderr F two\n\
                   2024-05-01T10:00:03.000000000Z stdout F three\n";

/// A test double at the boundary the real agent fills with containerd: it serves a fixed CRI
/// log file for container `c1` and runs exec commands as local processes.
struct LocalStreams {
    log_path: PathBuf,
    /// Keeps followers open (the "container" never exits during the test).
    running: Mutex<Vec<watch::Sender<bool>>>,
}

#[async_trait::async_trait]
impl NodeStreams for LocalStreams {
    async fn logs(&self, req: LogRequest) -> Result<LogStream, StreamError> {
        if req.container != "c1" {
            return Err(StreamError::NotFound(format!(
                "container {} not found",
                req.container
            )));
        }
        let (tx, rx) = watch::channel(!req.follow);
        if let Ok(mut r) = self.running.lock() {
            r.push(tx);
        }
        Ok(logs::read(
            &self.log_path,
            &ReadOptions::from_request(&req),
            rx,
        ))
    }

    async fn exec(&self, req: ExecRequest, io: ExecIo) -> Result<i32, StreamError> {
        let (program, args) = req
            .command
            .split_first()
            .ok_or_else(|| StreamError::BadRequest("no command".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(if io.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StreamError::Internal(format!("{program}: {e}")))?;
        let mut threads = Vec::new();
        if let (Some(mut rx), Some(mut stdin)) = (io.stdin, child.stdin.take()) {
            threads.push(std::thread::spawn(move || {
                while let Some(b) = rx.blocking_recv() {
                    if stdin.write_all(&b).is_err() {
                        break;
                    }
                }
            }));
        }
        for (pipe, tx) in [
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
                io.stdout,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
                io.stderr,
            ),
        ] {
            let Some(mut pipe) = pipe else { continue };
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 || tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        break;
                    }
                }
            }));
        }
        let status = tokio::task::spawn_blocking(move || {
            let status = child.wait();
            for t in threads {
                let _ = t.join();
            }
            status
        })
        .await
        .map_err(|e| StreamError::Internal(e.to_string()))?
        .map_err(|e| StreamError::Internal(e.to_string()))?;
        Ok(status.code().unwrap_or(128))
    }

    async fn pod_ip(&self, _namespace: &str, _pod: &str) -> Result<String, StreamError> {
        Ok("127.0.0.1".into())
    }

    async fn attach(&self, _req: ExecRequest, _io: ExecIo) -> Result<(), StreamError> {
        // This node runs no containers; attach is tested against the real agent.
        Err(StreamError::BadRequest(
            "no container runs here to attach to".into(),
        ))
    }

    /// The test host's loopback stands in for the pod's.
    async fn connect_port(
        &self,
        _namespace: &str,
        _pod: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, StreamError> {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| {
                StreamError::Internal(format!("failed to connect to localhost:{port}: {e}"))
            })
    }
}

/// A TCP service on 127.0.0.1 standing in for a pod's port: it sends back what it gets,
/// and `bye` once the client has closed its side.
fn tcp_echo() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 16 << 10];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        let _ = conn.write_all(b"bye");
                        return;
                    }
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// One connection through the forward: `payload` goes there and comes back, then the
/// half-close reaches the service, whose `bye` comes back before the end.
fn round_trip(local: u16, payload: &[u8]) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let writer = {
        let mut conn = conn.try_clone().expect("clone");
        let payload = payload.to_vec();
        std::thread::spawn(move || {
            conn.write_all(&payload).expect("send");
            conn.shutdown(std::net::Shutdown::Write)
                .expect("half-close");
        })
    };
    let mut back = Vec::new();
    conn.read_to_end(&mut back).expect("read back");
    writer.join().expect("writer");
    assert_eq!(
        back.len(),
        payload.len() + 3,
        "every byte came back, then bye"
    );
    assert!(
        back[..payload.len()] == *payload,
        "the bytes came back unchanged"
    );
    assert_eq!(&back[payload.len()..], b"bye");
}

/// An HTTP/1.1 server on 127.0.0.1 standing in for a pod's: it answers every request with
/// its method, path, `x-test` header and body, and says whether it saw credentials.
fn echo_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let Ok(n) = conn.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..at]).to_string();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        let chunked = head
                            .to_ascii_lowercase()
                            .contains("transfer-encoding: chunked");
                        let mut body = buf[at + 4..].to_vec();
                        let complete = |b: &[u8]| {
                            if chunked {
                                b.ends_with(b"0\r\n\r\n")
                            } else {
                                b.len() >= length
                            }
                        };
                        while !complete(&body) {
                            let Ok(n) = conn.read(&mut chunk) else { return };
                            if n == 0 {
                                break;
                            }
                            body.extend_from_slice(&chunk[..n]);
                        }
                        if chunked {
                            // size CRLF data CRLF ... 0 CRLF CRLF
                            let mut plain = Vec::new();
                            let mut rest = &body[..];
                            while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
                                let size = usize::from_str_radix(
                                    String::from_utf8_lossy(&rest[..eol]).trim(),
                                    16,
                                )
                                .unwrap_or(0);
                                if size == 0 || rest.len() < eol + 2 + size {
                                    break;
                                }
                                plain.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
                                rest = &rest[(eol + 4 + size).min(rest.len())..];
                            }
                            body = plain;
                        }
                        break (head, body);
                    }
                };
                let request_line = head.lines().next().unwrap_or("").to_string();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let answer = format!(
                    "{request_line}|x-test={}|authorization={}|body={}",
                    header("x-test"),
                    header("authorization"),
                    String::from_utf8_lossy(&body)
                );
                let _ = write!(
                    conn,
                    "HTTP/1.1 203 Non-Authoritative Information\r\nContent-Type: text/plain\r\nX-Pod: yes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });
    port
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn pod_manifest(name: &str, node: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"default"}},
            "spec":{{"nodeName":"{node}","containers":[{{"name":"c1","image":"busybox"}}]}}}}"#
    )
}

/// kubectl's stdout, or a panic with its stderr.
fn eventually_ok(s: &Server, args: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let out = s.kubectl(args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "kubectl {args:?} kept failing: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn join_then_logs_and_exec_through_the_tunnel() {
    let server = Server::start();
    let url = format!("https://127.0.0.1:{}", server.port);
    let node_token = std::fs::read_to_string(server.data_dir().join("node-token"))
        .expect("node-token")
        .trim()
        .to_string();
    let token = Token::parse(&node_token).expect("token");
    assert!(token.ca_hash.is_some(), "{node_token}");
    let rt = rt();
    let agent_dir = tempfile::tempdir().expect("agent dir");

    // Refusals: wrong secret, wrong CA hash.
    let wrong_secret = Token {
        secret: "nope".into(),
        ..token.clone()
    };
    match rt.block_on(join::join(&url, &wrong_secret, "n1", agent_dir.path())) {
        Err(JoinError::Refused { status, .. }) => assert_eq!(status.as_u16(), 401),
        other => panic!("wrong secret: {other:?}"),
    }
    let wrong_ca = Token {
        ca_hash: Some("0".repeat(64)),
        ..token.clone()
    };
    let err = rt
        .block_on(join::join(&url, &wrong_ca, "n1", agent_dir.path()))
        .expect_err("wrong CA");
    assert_eq!(
        err.to_string(),
        "the server's CA does not match the join token: wrong server or token"
    );

    // The real join, and a restart that reuses the credentials with the server unreachable.
    let creds = rt
        .block_on(join::join(&url, &token, "n1", agent_dir.path()))
        .expect("join");
    assert!(join::kubeconfig_path(agent_dir.path()).exists());
    let again = rt
        .block_on(join::join(&url, &token, "n1", agent_dir.path()))
        .expect("rejoin");
    assert_eq!(again.cert_pem, creds.cert_pem, "saved credentials reused");

    // The node's kubeconfig authenticates as the node.
    let node_kubeconfig = join::kubeconfig_path(agent_dir.path());
    let who = Command::new("kubectl")
        .env("KUBECONFIG", &node_kubeconfig)
        .args(["get", "--raw", "/api/v1/namespaces/default/pods"])
        .output()
        .expect("kubectl");
    assert!(
        who.status.success(),
        "node kubeconfig: {}",
        String::from_utf8_lossy(&who.stderr)
    );

    // Another machine (another password) cannot take n1.
    let other_dir = tempfile::tempdir().expect("other dir");
    match rt.block_on(join::join(&url, &token, "n1", other_dir.path())) {
        Err(JoinError::Refused { status, message }) => {
            assert_eq!(status.as_u16(), 403);
            assert!(
                message.contains(
                    "node name n1 is taken by another machine: remove the node and secret kube-system/n1.node-password.cairn"
                ),
                "{message}"
            );
        }
        other => panic!("taken name: {other:?}"),
    }

    // A bootstrap token made as the Kubernetes convention says joins too.
    server.ok(&[
        "create",
        "secret",
        "generic",
        "bootstrap-token-abc123",
        "-n",
        "kube-system",
        "--type",
        "bootstrap.kubernetes.io/token",
        "--from-literal=token-id=abc123",
        "--from-literal=token-secret=0123456789abcdef",
        "--from-literal=usage-bootstrap-authentication=true",
    ]);
    let hash = token.ca_hash.clone().unwrap_or_default();
    let bootstrap = Token::parse(&format!("K10{hash}::abc123.0123456789abcdef")).expect("parse");
    rt.block_on(join::join(&url, &bootstrap, "n2", other_dir.path()))
        .expect("bootstrap join");

    // The tunnel, with the test node implementation.
    let log_path = agent_dir.path().join("c1.log");
    std::fs::write(&log_path, LOG).expect("log");
    let streams = Arc::new(LocalStreams {
        log_path: log_path.clone(),
        running: Mutex::new(Vec::new()),
    });
    rt.spawn(tunnel::run(url.clone(), creds, "n1".into(), streams));
    server.ok_stdin(&["apply", "-f", "-"], &pod_manifest("web", "n1"));
    server.ok_stdin(&["apply", "-f", "-"], &pod_manifest("lost", "ghost"));

    assert_eq!(
        eventually_ok(&server, &["logs", "web"]),
        "one\ntwo\nthree\n"
    );
    assert_eq!(
        server.ok(&["logs", "web", "--tail=1", "--timestamps"]),
        "2024-05-01T10:00:03Z three\n"
    );
    assert_eq!(server.ok(&["logs", "web", "--limit-bytes=5"]), "one\nt");

    // Wrong container, unconnected node.
    let out = server.kubectl(&["logs", "web", "-c", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container nope is not valid for pod web"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.kubectl(&["logs", "lost"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node ghost is not connected"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Follow: what is appended after kubectl started arrives while the stream stays open.
    let mut follower = server
        .kubectl_cmd(&["logs", "-f", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let mut out = follower.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = lines_tx.send(seen.clone());
        }
    });
    let wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(seen) if seen.contains(want) => return,
                Ok(_) => continue,
                Err(e) => panic!("kubectl logs -f never showed {want:?}: {e}"),
            }
        }
    };
    wait_for("three\n");
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .expect("open log");
        f.write_all(b"2024-05-01T10:00:04.000000000Z stdout F four\n")
            .expect("append");
    }
    wait_for("three\nfour\n");
    assert!(
        follower.try_wait().expect("try_wait").is_none(),
        "follow ended early"
    );
    let _ = follower.kill();
    let _ = follower.wait();

    // Exec: output, stdin, exit codes.
    assert_eq!(server.ok(&["exec", "web", "--", "echo", "hi"]), "hi\n");
    assert_eq!(
        server.ok_stdin(&["exec", "-i", "web", "--", "cat"], "hello\nworld\n"),
        "hello\nworld\n"
    );
    let out = server.kubectl(&["exec", "web", "--", "sh", "-c", "echo err >&2; exit 3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    let out = server.kubectl(&["exec", "lost", "--", "true"]);
    assert!(!out.status.success());

    // Proxies: pods/proxy and services/proxy reach the pod's port through the tunnel.
    let port = echo_server();
    let answer = server.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/pods/web:{port}/proxy/hello/there?x=1"),
    ]);
    assert_eq!(
        answer, "GET /hello/there?timeout=30s&x=1 HTTP/1.1|x-test=|authorization=|body=",
        "the pod sees the path and query, never the client's credentials"
    );
    let file = server.dir.path().join("body.txt");
    std::fs::write(&file, "posted").expect("body");
    let answer = server.ok(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/default/pods/web:{port}/proxy/submit"),
        "-f",
        file.to_str().expect("path"),
    ]);
    assert!(
        answer.starts_with("POST /submit?timeout=30s HTTP/1.1"),
        "{answer}"
    );
    assert!(answer.ends_with("|body=posted"), "{answer}");

    server.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: echo}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: {port}}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: echo}}\nsubsets:\n- addresses: [{{ip: 127.0.0.1, targetRef: {{kind: Pod, name: web, namespace: default}}}}]\n  ports: [{{name: http, port: {port}}}]\n"
        ),
    );
    let answer = server.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/services/echo:http/proxy/svc",
    ]);
    assert!(
        answer.starts_with("GET /svc?timeout=30s HTTP/1.1"),
        "{answer}"
    );
    let out = server.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/services/echo:nope/proxy/",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no service port \"nope\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kubectl proxy in front of the server: headers and status of the pod's answer arrive.
    let mut proxy = server
        .kubectl_cmd(&["proxy", "--port=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl proxy");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("kubectl proxy says where it serves");
    let local = line.trim().rsplit(' ').next().expect("address").to_string();
    let mut conn = std::net::TcpStream::connect(&local).expect("connect to kubectl proxy");
    write!(
        conn,
        "GET /api/v1/namespaces/default/services/echo:http/proxy/through?y=2 HTTP/1.1\r\nHost: localhost\r\nX-Test: kept\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("reply");
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(reply.starts_with("HTTP/1.1 203"), "{reply}");
    assert!(reply.to_ascii_lowercase().contains("x-pod: yes"), "{reply}");
    assert!(
        reply.ends_with("GET /through?y=2 HTTP/1.1|x-test=kept|authorization=|body="),
        "{reply}"
    );

    // port-forward: kubectl checks that the pod runs, then forwards over a SPDY session,
    // tunnelled in a WebSocket (1.31 and newer) or after an SPDY upgrade (older, or
    // with the WebSocket path switched off).
    server.ok(&[
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);
    let service = tcp_echo();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let target = format!(":{service}");
    let versions = common::kubectl_versions();
    let oldest = versions.first().expect("kubectl versions").clone();
    for (label, binary, websockets) in [
        ("WebSocket tunnel", PathBuf::from("kubectl"), "true"),
        ("SPDY upgrade", PathBuf::from("kubectl"), "false"),
        ("oldest kubectl", oldest, "true"),
    ] {
        let mut cmd =
            server.kubectl_binary_cmd(&binary, &["port-forward", "-v=4", "pod/web", &target]);
        cmd.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets);
        let (mut pf, local) = common::start_port_forward(&mut cmd);
        round_trip(local, b"hello");
        // Several connections at once, each its own pair of streams, one of them large.
        let together: Vec<_> = (0..3)
            .map(|i| {
                let payload = if i == 0 {
                    big.clone()
                } else {
                    format!("conn {i}").into_bytes()
                };
                std::thread::spawn(move || round_trip(local, &payload))
            })
            .collect();
        for t in together {
            t.join()
                .unwrap_or_else(|_| panic!("{label}: a connection failed"));
        }
        let _ = pf.kill();
        let mut err = String::new();
        let _ = pf.stderr.take().map(|mut e| e.read_to_string(&mut err));
        let _ = pf.wait();
        // kubectl says at -v=4 when it falls back from the WebSocket to the SPDY upgrade.
        if label == "WebSocket tunnel" {
            assert!(err.contains("WebSocket Upgrade"), "{label}: {err}");
            assert!(!err.contains("fallback"), "{label}: {err}");
        }
    }
    // Nothing listens on the port: the connection closes and kubectl names the failure.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (mut pf, local) = common::start_port_forward(&mut server.kubectl_cmd(&[
        "port-forward",
        "pod/web",
        &format!(":{closed}"),
    ]));
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut back = Vec::new();
    let _ = conn.read_to_end(&mut back);
    assert!(back.is_empty(), "nothing comes from a port nobody serves");
    std::thread::sleep(Duration::from_millis(500));
    let _ = pf.kill();
    let mut err = String::new();
    let _ = pf.stderr.take().map(|mut e| e.read_to_string(&mut err));
    let _ = pf.wait();
    assert!(
        err.contains(&format!("error forwarding port {closed} to pod web")),
        "kubectl reports why: {err}"
    );
    // A pod that does not run is refused before any upgrade.
    server.ok(&[
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Pending"}}"#,
    ]);
    let out = server.kubectl(&["port-forward", "pod/web", &target]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pod is not running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(rt);
}

#[test]
fn bootstrap_tokens_through_the_admin_api() {
    use cairn_server::tokens;
    let server = Server::start();
    let url = format!("https://127.0.0.1:{}", server.port);
    let rt = rt();
    let full = rt
        .block_on(tokens::create_with_kubeconfig(
            &server.kubeconfig,
            "1h",
            "for ci",
        ))
        .expect("create");
    let token = Token::parse(&full).expect("parse");
    assert!(token.bootstrap, "{full}");
    let node_token = std::fs::read_to_string(server.data_dir().join("node-token")).expect("read");
    assert_eq!(
        token.ca_hash,
        Token::parse(&node_token).expect("node token").ca_hash,
        "the kubeconfig's CA hash is the server's"
    );
    let table = rt
        .block_on(tokens::list_with_kubeconfig(&server.kubeconfig))
        .expect("list");
    assert!(
        table.contains(&token.user) && table.contains("for ci"),
        "{table}"
    );
    assert!(
        !table.contains(&token.secret),
        "list shows a secret: {table}"
    );

    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(join::join(&url, &token, "n3", dir.path()))
        .expect("join with a bootstrap token");
    rt.block_on(tokens::delete_with_kubeconfig(
        &server.kubeconfig,
        &token.user,
    ))
    .expect("delete");
    let other = tempfile::tempdir().expect("dir");
    match rt.block_on(join::join(&url, &token, "n4", other.path())) {
        Err(JoinError::Refused { status, .. }) => assert_eq!(status.as_u16(), 401),
        other => panic!("deleted token still joins: {other:?}"),
    }
}
