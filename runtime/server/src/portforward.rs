//! `pods/{name}/portforward`: kubectl's port-forward protocol (`portforward.k8s.io`) on a
//! SPDY session, reached by `Upgrade: SPDY/3.1` (kubectl up to 1.30) or tunnelled in a
//! WebSocket with the subprotocol `SPDY/3.1+portforward.k8s.io` (1.31 and newer, which
//! fall back to the former when the server refuses). Every forwarded connection is a pair of
//! streams with one `requestID`: `error`, on which the server says why forwarding failed,
//! and `data`, the connection's bytes. The pair becomes one `POST /portforward` on the pod's
//! node's tunnel, so the node needs no open port.

use crate::spdy::{self, Stream};
use crate::tunnel::{agent_error, get_object, tunnel_to, Tunnels};
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use cairn_api::status::ApiError;
use cairn_store::Store;
use cairn_wire::tunnel::{PortForwardRequest, PORT_FORWARD_HEADER};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The port-forward protocol kubectl and the kubelet speak.
const PROTOCOL: &str = "portforward.k8s.io";
/// That protocol tunnelled in a WebSocket.
const TUNNELLED: &str = "SPDY/3.1+portforward.k8s.io";
const SPDY_UPGRADE: &str = "SPDY/3.1";
const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";

/// The pod the session forwards to.
struct Target {
    namespace: String,
    pod: String,
    uid: String,
    node: String,
}

fn header_values<'a>(req: &'a Request<Body>, name: &str) -> Vec<&'a str> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect()
}

/// Answers the upgrade and serves the session on it.
pub async fn serve(
    store: &Arc<dyn Store>,
    tunnels: &Tunnels,
    namespace: &str,
    name: &str,
    mut req: Request<Body>,
) -> Result<Response, ApiError> {
    let pod = get_object(store, "pods", namespace, name).await?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!("pod {name} has no node yet")));
    }
    if pod["status"]["phase"].as_str() != Some("Running") {
        return Err(ApiError::bad_request(format!(
            "unable to forward to pod {name}: it is not running (phase {})",
            pod["status"]["phase"].as_str().unwrap_or("Unknown")
        )));
    }
    let sender = tunnel_to(tunnels, node)?;
    let target = Arc::new(Target {
        namespace: namespace.to_string(),
        pod: name.to_string(),
        uid: pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        node: node.to_string(),
    });
    let upgrade = header_values(&req, header::UPGRADE.as_str());
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
        if !header_values(&req, header::SEC_WEBSOCKET_PROTOCOL.as_str()).contains(&TUNNELLED) {
            return Err(ApiError::bad_request(format!(
                "port-forward over a WebSocket needs the subprotocol {TUNNELLED}"
            )));
        }
        let (mut parts, _) = req.into_parts();
        let mut ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("port-forward upgrade: {e}")))?;
        ws.set_selected_protocol(HeaderValue::from_static(TUNNELLED));
        return Ok(ws.on_upgrade(move |socket| async move {
            run(websocket_bytes(socket), sender, target).await;
        }));
    }
    if !upgrade.iter().any(|u| u.eq_ignore_ascii_case(SPDY_UPGRADE)) {
        return Err(ApiError::bad_request(format!(
            "port-forward needs an upgrade to {SPDY_UPGRADE} or a WebSocket ({TUNNELLED})"
        )));
    }
    let offered = header_values(&req, PROTOCOL_HEADER);
    // As the kubelet: a client that names protocols must name ours; one that names none is
    // an old client of the only protocol there is.
    if !offered.is_empty() && !offered.contains(&PROTOCOL) {
        let mut e = ApiError::bad_request(format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [{PROTOCOL:?}]"
        ));
        e.code = StatusCode::FORBIDDEN;
        e.reason = "Forbidden";
        return Err(e);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => run(hyper_util::rt::TokioIo::new(upgraded), sender, target).await,
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, SPDY_UPGRADE)
        .header(PROTOCOL_HEADER, PROTOCOL)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// The byte stream a WebSocket tunnels: binary messages in, each write out as one.
fn websocket_bytes(socket: WebSocket) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let (mut from_session, mut to_session) = tokio::io::split(ours);
    let (mut ws_tx, mut ws_rx) = socket.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) if to_session.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_session.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match from_session.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if ws_tx.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    });
    theirs
}

#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
}

/// The request a stream belongs to: its `requestID`, or for clients that send none, the
/// error stream's id (the data stream follows it, two ids later), as the kubelet reckons.
fn request_id(s: &Stream) -> String {
    match s.header("requestid") {
        Some(r) => r.to_string(),
        None if s.header("streamtype") == Some("data") => s.id.saturating_sub(2).to_string(),
        None => s.id.to_string(),
    }
}

async fn run<IO>(io: IO, sender: SendRequest<Body>, target: Arc<Target>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let mut streams = spdy::serve(io);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = streams.recv().await {
        let id = request_id(&stream);
        let pair = pairs.entry(id.clone()).or_default();
        match stream.header("streamtype") {
            Some("error") => pair.error = Some(stream),
            Some("data") => pair.data = Some(stream),
            other => {
                tracing::debug!(?other, "port-forward: stream of unknown type");
                stream.writer.reset(spdy::PROTOCOL_ERROR).await;
                continue;
            }
        }
        if pair.error.is_some() && pair.data.is_some() {
            if let Some(Pair {
                error: Some(error),
                data: Some(data),
            }) = pairs.remove(&id)
            {
                tokio::spawn(forward(error, data, sender.clone(), target.clone()));
            }
        }
    }
}

/// One forwarded connection, to its end in both directions.
async fn forward(error: Stream, data: Stream, mut sender: SendRequest<Body>, target: Arc<Target>) {
    let port = data.header("port").unwrap_or_default().to_string();
    let outcome = match port.parse::<u16>() {
        Ok(p) if p > 0 => relay(data, &mut sender, &target, p).await,
        _ => {
            data.writer.finish().await;
            Err(format!("invalid port {port:?}"))
        }
    };
    if let Err(why) = outcome {
        let msg = format!(
            "error forwarding port {port} to pod {}, uid {}: {why}",
            target.pod, target.uid
        );
        let _ = error.writer.send(Bytes::from(msg)).await;
    }
    error.writer.finish().await;
}

async fn relay(
    data: Stream,
    sender: &mut SendRequest<Body>,
    target: &Target,
    port: u16,
) -> Result<(), String> {
    let Stream {
        incoming, writer, ..
    } = data;
    let pf = PortForwardRequest {
        namespace: target.namespace.clone(),
        pod: target.pod.clone(),
        port,
    };
    let header = serde_json::to_string(&pf)
        .ok()
        .and_then(|s| HeaderValue::from_str(&s).ok())
        .ok_or("the request cannot be carried in a header")?;
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(incoming).map(Ok::<_, std::io::Error>),
    );
    let req = Request::post("http://cairn-node/portforward")
        .header(PORT_FORWARD_HEADER, header)
        .body(body)
        .map_err(|e| e.to_string())?;
    let res = match sender.send_request(req).await {
        Ok(res) => res,
        Err(e) => {
            writer.finish().await;
            return Err(format!("node {}: {e}", target.node));
        }
    };
    if res.status() != StatusCode::OK {
        writer.finish().await;
        return Err(agent_error(res).await.message);
    }
    let mut from_pod = res.into_body();
    let mut watcher = writer.clone();
    loop {
        tokio::select! {
            frame = from_pod.frame() => match frame {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        if writer.send(d).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Err(_)) | None => break,
            },
            // The client reset the stream (it closed its connection): stop reading the pod.
            _ = watcher.closed_by_peer() => break,
        }
    }
    writer.finish().await;
    Ok(())
}
