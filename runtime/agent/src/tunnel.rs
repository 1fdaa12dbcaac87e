//! The agent's end of the tunnel (the protocol is `cairn_wire::tunnel`): it keeps the
//! connection to the server open and answers the server's log and exec requests on it.

use bytes::Bytes;
use cairn_wire::join::NodeCredentials;
use cairn_wire::tunnel::*;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub use super::logs::LogStream;

/// The exec process's streams as the node implementation sees them.
pub struct ExecIo {
    /// `None` when the client sends no stdin; the channel closes at the client's EOF.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: mpsc::Sender<Bytes>,
    pub stderr: mpsc::Sender<Bytes>,
    /// Terminal size changes (width, height) when a tty is used.
    pub resize: mpsc::Receiver<(u16, u16)>,
}

/// What the node does for logs and exec (the containerd side is the lead's implementation).
#[async_trait::async_trait]
pub trait NodeStreams: Send + Sync + 'static {
    async fn logs(&self, req: LogRequest) -> Result<LogStream, StreamError>;
    /// Runs the command to completion and returns its exit code.
    async fn exec(&self, req: ExecRequest, io: ExecIo) -> Result<i32, StreamError>;
    /// Connects `io` to the running container's own process (`req.command` is unused)
    /// until it exits or the client goes.
    async fn attach(&self, req: ExecRequest, io: ExecIo) -> Result<(), StreamError>;
    /// The IP of a running pod of this node.
    async fn pod_ip(&self, namespace: &str, pod: &str) -> Result<String, StreamError>;
    /// A connection to `port` on the pod's own loopback (inside its network namespace).
    async fn connect_port(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, StreamError>;
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Reaching the server: its address, the connection, TLS with the node's credentials.
    #[error(transparent)]
    Connect(#[from] cairn_wire::join::JoinError),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the tunnel request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the server refused the tunnel: {status} {body}")]
    Refused { status: StatusCode, body: String },
}

/// Keeps the tunnel to the server up for ever, reconnecting with back-off (1 s doubling to
/// 30 s; back to 1 s after a connection that worked).
pub async fn run(
    server_url: String,
    creds: NodeCredentials,
    node_name: String,
    streams: Arc<dyn NodeStreams>,
) {
    let mut delay = Duration::from_secs(1);
    loop {
        match serve_once(&server_url, &creds, streams.clone()).await {
            Ok(()) => {
                tracing::info!(node = %node_name, "tunnel to the server closed; reconnecting");
                delay = Duration::from_secs(1);
            }
            Err(e) => {
                tracing::warn!(node = %node_name, error = %e, retry_in = ?delay, "tunnel to the server failed");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Opens one tunnel and serves requests on it until it closes.
async fn serve_once(
    server_url: &str,
    creds: &NodeCredentials,
    streams: Arc<dyn NodeStreams>,
) -> Result<(), TunnelError> {
    let cfg = creds.client_config(&[b"http/1.1"])?;
    let (tls, authority) = cairn_wire::join::connect_tls(server_url, cfg).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(tls))
            .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "tunnel HTTP/1 connection ended");
        }
    });
    let req = Request::get(TUNNEL_PATH)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, UPGRADE_PROTOCOL)
        .body(http_body_util::Empty::new())?;
    let res = sender.send_request(req).await?;
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(TunnelError::Refused { status, body });
    }
    let upgraded = hyper::upgrade::on(res).await?;
    tracing::info!("tunnel to the server is up");
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let streams = streams.clone();
        async move { Ok::<_, std::convert::Infallible>(dispatch(streams, req).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(15)))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(upgraded, service)
        .await?;
    Ok(())
}

type TunnelBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

fn text(status: StatusCode, msg: impl Into<String>) -> Response<TunnelBody> {
    let mut res = Response::new(
        http_body_util::Full::new(Bytes::from(msg.into()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    res
}

/// The request's description, carried as JSON in header `name`; or the 400 answer.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
fn header_json<T: serde::de::DeserializeOwned>(
    req: &Request<Incoming>,
    name: &str,
) -> Result<T, Response<TunnelBody>> {
    match req.headers().get(name) {
        Some(v) => serde_json::from_slice(v.as_bytes())
            .map_err(|e| text(StatusCode::BAD_REQUEST, format!("bad {name} header: {e}"))),
        None => Err(text(
            StatusCode::BAD_REQUEST,
            format!("missing {name} header"),
        )),
    }
}

/// Answers one request from the server.
pub async fn dispatch(
    streams: Arc<dyn NodeStreams>,
    req: Request<Incoming>,
) -> Response<TunnelBody> {
    match (req.method().as_str(), req.uri().path()) {
        ("POST", "/logs") => serve_logs(streams, req).await,
        ("POST", "/exec") => serve_exec(streams, req, false),
        ("POST", "/attach") => serve_exec(streams, req, true),
        (_, "/proxy") => serve_proxy(streams, req).await,
        ("POST", "/portforward") => serve_port_forward(streams, req).await,
        _ => text(StatusCode::NOT_FOUND, "no such tunnel endpoint"),
    }
}

/// Carries one forwarded connection: the request body to the pod's port, what the port
/// sends back as the answer; each direction ends on its own (a half-close stays one).
async fn serve_port_forward(
    streams: Arc<dyn NodeStreams>,
    req: Request<Incoming>,
) -> Response<TunnelBody> {
    let pf: PortForwardRequest = match header_json(&req, PORT_FORWARD_HEADER) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let conn = match streams.connect_port(&pf.namespace, &pf.pod, pf.port).await {
        Ok(c) => c,
        Err(e) => return text(e.status(), e.to_string()),
    };
    let (from_pod, mut to_pod) = conn.into_split();
    let mut body = req.into_body();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                if to_pod.write_all(&data).await.is_err() {
                    return;
                }
            }
        }
        // The client closed its side: so does the connection to the pod, for writing.
        let _ = to_pod.shutdown().await;
    });
    let out = futures_util::stream::unfold(from_pod, |mut from_pod| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 32 << 10];
        match from_pod.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), from_pod))
            }
            Err(e) => Some((Err(e), from_pod)),
        }
    });
    Response::new(StreamBody::new(out).boxed_unsync())
}

/// Relays one HTTP request to a pod's port (HTTP/1.1, one connection per request).
async fn serve_proxy(
    streams: Arc<dyn NodeStreams>,
    req: Request<Incoming>,
) -> Response<TunnelBody> {
    let pr: ProxyRequest = match header_json(&req, PROXY_HEADER) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let ip = match streams.pod_ip(&pr.namespace, &pr.pod).await {
        Ok(ip) => ip,
        Err(e) => return text(e.status(), e.to_string()),
    };
    let addr = match ip.parse::<std::net::IpAddr>() {
        Ok(a) => std::net::SocketAddr::new(a, pr.port),
        Err(_) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("pod IP {ip:?} is not an address"),
            )
        }
    };
    let stream = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return text(StatusCode::BAD_GATEWAY, format!("dial {addr}: {e}")),
        Err(_) => return text(StatusCode::BAD_GATEWAY, format!("dial {addr}: timed out")),
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(stream)).await {
            Ok(x) => x,
            Err(e) => return text(StatusCode::BAD_GATEWAY, format!("{addr}: {e}")),
        };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "proxied connection ended");
        }
    });
    let (parts, body) = req.into_parts();
    let mut out = Request::builder()
        .method(parts.method)
        .uri(pr.path.as_str())
        .header(hyper::header::HOST, addr.to_string());
    for (k, v) in &parts.headers {
        if k.as_str() != PROXY_HEADER && is_relayed_header(k.as_str()) {
            out = out.header(k, v);
        }
    }
    let out = match out.body(body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match sender.send_request(out).await {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            let dropped: Vec<hyper::header::HeaderName> = parts
                .headers
                .keys()
                .filter(|k| !is_relayed_header(k.as_str()))
                .cloned()
                .collect();
            for k in dropped {
                parts.headers.remove(k);
            }
            Response::from_parts(
                parts,
                body.map_err(|e| std::io::Error::other(e.to_string()))
                    .boxed_unsync(),
            )
        }
        Err(e) => text(StatusCode::BAD_GATEWAY, format!("{addr}: {e}")),
    }
}

async fn serve_logs(streams: Arc<dyn NodeStreams>, req: Request<Incoming>) -> Response<TunnelBody> {
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let lr: LogRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad log request: {e}")),
    };
    match streams.logs(lr).await {
        Ok(stream) => {
            let frames = stream.map(|r| r.map(Frame::data));
            Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)))
        }
        Err(e) => text(e.status(), e.to_string()),
    }
}

/// Exec (a new process) or, with `attach`, the container's own process.
fn serve_exec(
    streams: Arc<dyn NodeStreams>,
    req: Request<Incoming>,
    attach: bool,
) -> Response<TunnelBody> {
    let er: ExecRequest = match header_json(&req, EXEC_HEADER) {
        Ok(r) => r,
        Err(res) => return res,
    };
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(32);
    let (stdout_tx, stdout_rx) = mpsc::channel::<Bytes>(32);
    let (stderr_tx, stderr_rx) = mpsc::channel::<Bytes>(32);
    let (resize_tx, resize_rx) = mpsc::channel::<(u16, u16)>(4);
    let (stdin_tx, stdin_rx) = if er.stdin {
        let (t, r) = mpsc::channel::<Bytes>(32);
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    tokio::spawn(read_client_frames(req.into_body(), stdin_tx, resize_tx));
    tokio::spawn(async move {
        let io = ExecIo {
            stdin: stdin_rx,
            stdout: stdout_tx,
            stderr: stderr_tx,
            resize: resize_rx,
        };
        let forward = forward_output(stdout_rx, stderr_rx, out_tx.clone());
        let run = async {
            if attach {
                streams.attach(er, io).await.map(|()| 0)
            } else {
                streams.exec(er, io).await
            }
        };
        let (result, ()) = tokio::join!(run, forward);
        let status = match result {
            Ok(code) => exit_status(code),
            Err(e) => error_status(&e),
        };
        let _ = out_tx
            .send(encode_frame(CHANNEL_ERROR, status.to_string().as_bytes()))
            .await;
    });
    let frames = tokio_stream::wrappers::ReceiverStream::new(out_rx)
        .map(|b| Ok::<_, std::io::Error>(Frame::data(b)));
    Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)))
}

/// Moves the process's output into the response as frames until both outputs close (the
/// implementation drops its senders when the process ends).
async fn forward_output(
    mut stdout: mpsc::Receiver<Bytes>,
    mut stderr: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Bytes>,
) {
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let (channel, data) = tokio::select! {
            d = stdout.recv(), if out_open => match d {
                Some(d) => (CHANNEL_STDOUT, d),
                None => { out_open = false; continue; }
            },
            d = stderr.recv(), if err_open => match d {
                Some(d) => (CHANNEL_STDERR, d),
                None => { err_open = false; continue; }
            },
        };
        if out.send(encode_frame(channel, &data)).await.is_err() {
            return;
        }
    }
}

/// Splits the client's frames into stdin data and resize events; stdin closes at the
/// client's close frame or when the request body ends.
async fn read_client_frames(
    mut body: Incoming,
    mut stdin: Option<mpsc::Sender<Bytes>>,
    resize: mpsc::Sender<(u16, u16)>,
) {
    let mut decoder = FrameDecoder::default();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        decoder.push(&data);
        loop {
            let (channel, data) = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "exec: bad frame from the server");
                    return;
                }
            };
            match channel {
                CHANNEL_STDIN => {
                    if let Some(tx) = &stdin {
                        if tx.send(data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                CHANNEL_RESIZE => {
                    if let Some(size) = parse_resize(&data) {
                        let _ = resize.try_send(size);
                    }
                }
                CHANNEL_CLOSE if data.first() == Some(&CHANNEL_STDIN) => stdin = None,
                _ => {}
            }
        }
    }
}
