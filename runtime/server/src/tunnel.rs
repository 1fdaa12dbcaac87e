//! The server's end of the node tunnels, and the pod subresources carried over them.
//!
//! An agent opens `GET /cairn/v1/tunnel` with its node certificate and `Upgrade:
//! cairn-tunnel`; after the 101 the server speaks HTTP/2 as the *client* on that connection,
//! so `pods/{name}/log` and `pods/{name}/exec` become HTTP/2 requests to the node, many at
//! once, without the node listening on any port. See `agent::tunnel` for the requests.

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cairn_api::status::ApiError;
use cairn_store::Store;
use cairn_wire::tunnel::{
    encode_frame, is_relayed_header, ExecRequest, FrameDecoder, LogRequest, ProxyRequest,
    CHANNEL_CLOSE, CHANNEL_ERROR, CHANNEL_RESIZE, CHANNEL_STDIN, EXEC_HEADER, PROXY_HEADER,
    UPGRADE_PROTOCOL,
};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The WebSocket subprotocols of exec the server speaks, best first.
const EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

struct Entry {
    id: u64,
    sender: SendRequest<Body>,
}

/// The connected nodes' tunnels by node name.
#[derive(Clone, Default)]
pub struct Tunnels {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    next_id: Arc<AtomicU64>,
}

impl Tunnels {
    /// Answers a node's tunnel request with 101 and keeps the upgraded connection as that
    /// node's tunnel, replacing an older one of the same node.
    pub fn accept(&self, node: String, mut req: Request<Body>) -> Response {
        let wants_tunnel = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
        if !wants_tunnel {
            return ApiError::bad_request(format!("the tunnel needs Upgrade: {UPGRADE_PROTOCOL}"))
                .into_response();
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let tunnels = self.clone();
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(%node, error = %e, "tunnel upgrade failed");
                    return;
                }
            };
            let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(15)))
                .keep_alive_timeout(Duration::from_secs(20))
                .handshake::<_, Body>(upgraded)
                .await;
            let (sender, conn) = match handshake {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%node, error = %e, "tunnel HTTP/2 handshake failed");
                    return;
                }
            };
            let id = tunnels.insert(&node, sender);
            tracing::info!(%node, "node tunnel connected");
            if let Err(e) = conn.await {
                tracing::info!(%node, error = %e, "node tunnel ended");
            }
            tunnels.remove(&node, id);
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, UPGRADE_PROTOCOL)
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave the map half-changed.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, node: &str, sender: SendRequest<Body>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(node.to_string(), Entry { id, sender });
        id
    }

    /// Forgets the tunnel `id` of `node`, unless a newer connection already replaced it.
    fn remove(&self, node: &str, id: u64) {
        let mut map = self.lock();
        if map.get(node).is_some_and(|e| e.id == id) {
            map.remove(node);
        }
    }

    /// A handle to send requests to `node`, if it is connected.
    pub fn get(&self, node: &str) -> Option<SendRequest<Body>> {
        self.lock()
            .get(node)
            .filter(|e| !e.sender.is_closed())
            .map(|e| e.sender.clone())
    }

    /// The names of the connected nodes.
    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }
}

fn query_pairs(req: &Request<Body>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn first<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn flag(q: &[(String, String)], key: &str) -> bool {
    matches!(first(q, key), Some("true") | Some("1"))
}

fn number(q: &[(String, String)], key: &str) -> Result<Option<i64>, ApiError> {
    match first(q, key) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{key}: {v:?} is not a number"))),
    }
}

/// The pod's node and the container a request is for.
struct Target {
    node: String,
    container: String,
}

/// Every container of the pod a log or exec may name: regular, init and ephemeral ones.
fn container_names(pod: &Value) -> Vec<String> {
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The container to use: the one asked for, else kubectl's default-container annotation,
/// else the first container.
fn pick_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let valid = container_names(pod);
    let regular: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let chosen = match asked.filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => {
            let annotated = pod["metadata"]["annotations"]
                ["kubectl.kubernetes.io/default-container"]
                .as_str()
                .filter(|c| regular.contains(c));
            match annotated.or_else(|| regular.first().copied()) {
                Some(c) => c.to_string(),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "pod {name} has no containers"
                    )))
                }
            }
        }
    };
    if !valid.contains(&chosen) {
        return Err(ApiError::bad_request(format!(
            "container {chosen} is not valid for pod {name}: choose one of [{}]",
            valid.join(" ")
        )));
    }
    Ok(chosen)
}

async fn resolve(
    store: &Arc<dyn Store>,
    namespace: &str,
    name: &str,
    container: Option<&str>,
) -> Result<Target, ApiError> {
    let pods = cairn_api::resources::find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("the pods resource is not registered"))?;
    let pod = cairn_controllers::util::get(&**store, &pods.key(Some(namespace), name))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found("pods", "", name))?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!("pod {name} has no node yet")));
    }
    Ok(Target {
        node: node.to_string(),
        container: pick_container(&pod, container)?,
    })
}

pub(crate) fn tunnel_to(tunnels: &Tunnels, node: &str) -> Result<SendRequest<Body>, ApiError> {
    tunnels
        .get(node)
        .ok_or_else(|| ApiError::unavailable(format!("node {node} is not connected")))
}

/// Serves `pods/{name}/log` and `pods/{name}/exec` through the pod's node's tunnel.
pub struct TunnelPodStreams {
    pub store: Arc<dyn Store>,
    pub tunnels: Tunnels,
}

#[async_trait::async_trait]
impl cairn_api::PodStreams for TunnelPodStreams {
    async fn serve(
        &self,
        namespace: &str,
        name: &str,
        subresource: &str,
        req: Request<Body>,
    ) -> Response {
        let (store, tunnels) = (&self.store, &self.tunnels);
        let result = match subresource {
            "log" => logs(store, tunnels, namespace, name, req).await,
            "exec" => exec(store, tunnels, namespace, name, req).await,
            // exec's protocol, to the container's own process (no command).
            "attach" => session(store, tunnels, namespace, name, req, Vec::new()).await,
            "portforward" => crate::portforward::serve(store, tunnels, namespace, name, req).await,
            _ => Err(ApiError::not_found_path()),
        };
        result.unwrap_or_else(IntoResponse::into_response)
    }

    async fn proxy(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
        path: &str,
        req: Request<Body>,
    ) -> Response {
        let result = match plural {
            "pods" => proxy_pod(self, namespace, name, path, req).await,
            "services" => proxy_service(self, namespace, name, path, req).await,
            _ => Err(ApiError::not_found_path()),
        };
        result.unwrap_or_else(IntoResponse::into_response)
    }
}

/// `[scheme:]name[:port]`, as the names of pods/proxy and services/proxy are written.
fn split_proxy_name(name: &str) -> Result<(&str, Option<&str>), ApiError> {
    let parts: Vec<&str> = name.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [n] => ("", *n, None),
        [n, p] => ("", *n, Some(*p)),
        [s, n, p] => (*s, *n, Some(*p).filter(|p| !p.is_empty())),
        _ => {
            return Err(ApiError::bad_request(format!(
                "invalid proxy target {name:?}"
            )))
        }
    };
    if !matches!(scheme, "" | "http") {
        return Err(ApiError::bad_request(format!(
            "scheme {scheme:?} is not supported: cairn proxies plain HTTP"
        )));
    }
    Ok((name, port))
}

pub(crate) async fn get_object(
    store: &Arc<dyn Store>,
    plural: &str,
    namespace: &str,
    name: &str,
) -> Result<Value, ApiError> {
    let r = cairn_api::resources::find("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("the {plural} resource is not registered")))?;
    cairn_controllers::util::get(&**store, &r.key(Some(namespace), name))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found(plural, "", name))
}

/// A pod's port: a number, a container port's name, or (absent) 80.
fn pod_port(pod: &Value, port: Option<&str>) -> Result<u16, ApiError> {
    let Some(port) = port else { return Ok(80) };
    if let Ok(n) = port.parse::<u16>() {
        return Ok(n);
    }
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .find(|p| p["name"] == port)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "pod {} has no port named {port:?}",
                pod["metadata"]["name"].as_str().unwrap_or_default()
            ))
        })
}

async fn proxy_pod(
    streams: &TunnelPodStreams,
    namespace: &str,
    name: &str,
    path: &str,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let (pod_name, port) = split_proxy_name(name)?;
    let pod = get_object(&streams.store, "pods", namespace, pod_name).await?;
    let port = pod_port(&pod, port)?;
    relay_http(streams, &pod, port, path, req).await
}

/// A service's port (by name or number; the only one when absent) sends to a ready
/// endpoint's pod, on the endpoint port of the same name.
async fn proxy_service(
    streams: &TunnelPodStreams,
    namespace: &str,
    name: &str,
    path: &str,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let (svc_name, port) = split_proxy_name(name)?;
    let svc = get_object(&streams.store, "services", namespace, svc_name).await?;
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let svc_port = match port {
        Some(p) => ports
            .iter()
            .find(|sp| {
                sp["name"] == p || sp["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(p)
            })
            .cloned(),
        None if ports.len() == 1 => ports.first().cloned(),
        None => None,
    }
    .ok_or_else(|| {
        ApiError::unavailable(format!(
            "no service port {:?} found for service \"{svc_name}\"",
            port.unwrap_or("")
        ))
    })?;
    let port_name = svc_port["name"].as_str().unwrap_or_default();
    let endpoints = get_object(&streams.store, "endpoints", namespace, svc_name)
        .await
        .map_err(|_| {
            ApiError::unavailable(format!("no endpoints available for service \"{svc_name}\""))
        })?;
    let target = endpoints["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|subset| {
            let port = subset["ports"]
                .as_array()?
                .iter()
                .find(|p| p["name"].as_str().unwrap_or_default() == port_name)?["port"]
                .as_u64()?;
            let address = subset["addresses"]
                .as_array()?
                .iter()
                .find(|a| a["targetRef"]["kind"] == "Pod")?;
            Some((address["targetRef"]["name"].as_str()?.to_string(), port))
        })
        .ok_or_else(|| {
            ApiError::unavailable(format!("no endpoints available for service \"{svc_name}\""))
        })?;
    let pod = get_object(&streams.store, "pods", namespace, &target.0).await?;
    let port = u16::try_from(target.1)
        .map_err(|_| ApiError::internal(format!("endpoint port {} is out of range", target.1)))?;
    relay_http(streams, &pod, port, path, req).await
}

/// Sends `req` to `pod`'s `port` through its node's tunnel and answers with the pod's answer.
async fn relay_http(
    streams: &TunnelPodStreams,
    pod: &Value,
    port: u16,
    path: &str,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!("pod {name} has no node yet")));
    }
    let pr = ProxyRequest {
        namespace: pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        pod: name.to_string(),
        port,
        path: path.to_string(),
    };
    let header_value = serde_json::to_string(&pr)
        .ok()
        .and_then(|s| HeaderValue::from_str(&s).ok())
        .ok_or_else(|| ApiError::bad_request("the proxied path cannot be carried in a header"))?;
    let mut sender = tunnel_to(&streams.tunnels, node)?;
    let (parts, body) = req.into_parts();
    let mut out = Request::builder()
        .method(parts.method)
        .uri("http://cairn-node/proxy")
        .header(PROXY_HEADER, header_value);
    for (k, v) in &parts.headers {
        if is_relayed_header(k.as_str()) {
            out = out.header(k, v);
        }
    }
    let out = out
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let res = sender
        .send_request(out)
        .await
        .map_err(|e| ApiError::unavailable(format!("node {node}: {e}")))?;
    let (mut parts, body) = res.into_parts();
    let dropped: Vec<header::HeaderName> = parts
        .headers
        .keys()
        .filter(|k| !is_relayed_header(k.as_str()))
        .cloned()
        .collect();
    for k in dropped {
        parts.headers.remove(k);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The message of an error answer from the agent.
pub(crate) async fn agent_error(res: hyper::Response<hyper::body::Incoming>) -> ApiError {
    let status = res.status();
    let body = http_body_util::Limited::new(res.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_default();
    let mut e = ApiError::internal(body);
    e.code = status;
    e.reason = match status {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::BAD_REQUEST => "BadRequest",
        _ => "InternalError",
    };
    e
}

async fn logs(
    store: &Arc<dyn Store>,
    tunnels: &Tunnels,
    namespace: &str,
    name: &str,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let q = query_pairs(&req);
    let target = resolve(store, namespace, name, first(&q, "container")).await?;
    let lr = LogRequest {
        namespace: namespace.to_string(),
        pod: name.to_string(),
        container: target.container,
        follow: flag(&q, "follow"),
        tail_lines: number(&q, "tailLines")?,
        timestamps: flag(&q, "timestamps"),
        previous: flag(&q, "previous"),
        since_seconds: number(&q, "sinceSeconds")?,
        since_time: first(&q, "sinceTime").map(str::to_string),
        limit_bytes: number(&q, "limitBytes")?,
    };
    let mut sender = tunnel_to(tunnels, &target.node)?;
    let body = serde_json::to_vec(&lr).map_err(|e| ApiError::internal(e.to_string()))?;
    let agent_req = Request::post("http://cairn-node/logs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let res = sender
        .send_request(agent_req)
        .await
        .map_err(|e| ApiError::unavailable(format!("node {}: {e}", target.node)))?;
    if res.status() != StatusCode::OK {
        return Err(agent_error(res).await);
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::new(res.into_body()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// The first exec subprotocol the client offers that the server speaks.
fn choose_protocol(headers: &axum::http::HeaderMap) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    offered
        .iter()
        .find_map(|o| EXEC_PROTOCOLS.iter().find(|p| **p == o).copied())
}

async fn exec(
    store: &Arc<dyn Store>,
    tunnels: &Tunnels,
    namespace: &str,
    name: &str,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let q = query_pairs(&req);
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    session(store, tunnels, namespace, name, req, command).await
}

/// An exec (`command` given) or attach (none) session: the WebSocket upgrade, then the relay
/// to the node.
async fn session(
    store: &Arc<dyn Store>,
    tunnels: &Tunnels,
    namespace: &str,
    name: &str,
    req: Request<Body>,
    command: Vec<String>,
) -> Result<Response, ApiError> {
    let q = query_pairs(&req);
    let verb = if command.is_empty() { "attach" } else { "exec" };
    let target = resolve(store, namespace, name, first(&q, "container")).await?;
    let er = ExecRequest {
        namespace: namespace.to_string(),
        pod: name.to_string(),
        container: target.container,
        command,
        stdin: flag(&q, "stdin"),
        stdout: flag(&q, "stdout"),
        stderr: flag(&q, "stderr"),
        tty: flag(&q, "tty"),
    };
    let sender = tunnel_to(tunnels, &target.node)?;
    let Some(protocol) = choose_protocol(req.headers()) else {
        return Err(ApiError::bad_request(format!(
            "{verb} needs a WebSocket upgrade with one of the subprotocols {}",
            EXEC_PROTOCOLS.join(", ")
        )));
    };
    let (mut parts, _) = req.into_parts();
    let mut ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("{verb} needs a WebSocket upgrade: {e}")))?;
    ws.set_selected_protocol(HeaderValue::from_static(protocol));
    let node = target.node;
    Ok(ws.on_upgrade(move |socket| async move {
        relay_exec(socket, sender, er, &node, verb).await;
    }))
}

/// A WebSocket binary message: the channel byte, then the data.
fn ws_message(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

fn failure_status(message: &str) -> Vec<u8> {
    serde_json::json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
        .to_string()
        .into_bytes()
}

/// Relays one exec between the client's WebSocket and the node: client messages become
/// frames in the request body, frames of the answer become client messages.
async fn relay_exec(
    socket: WebSocket,
    mut sender: SendRequest<Body>,
    er: ExecRequest,
    node: &str,
    verb: &str,
) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (to_node, to_node_rx) = mpsc::channel::<Bytes>(32);
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(to_node_rx).map(Ok::<_, std::io::Error>),
    );
    let header_value = serde_json::to_string(&er)
        .ok()
        .and_then(|s| HeaderValue::from_str(&s).ok());
    let answer = match header_value {
        Some(h) => match Request::post(format!("http://cairn-node/{verb}"))
            .header(EXEC_HEADER, h)
            .body(body)
        {
            Ok(r) => sender.send_request(r).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        None => Err("the command cannot be carried in a header".to_string()),
    };
    let res = match answer {
        Ok(res) if res.status() == StatusCode::OK => res,
        Ok(res) => {
            let e = agent_error(res).await;
            let _ = ws_tx
                .send(ws_message(CHANNEL_ERROR, &failure_status(&e.message)))
                .await;
            let _ = ws_tx.send(close_message()).await;
            return;
        }
        Err(e) => {
            let msg = format!("node {node}: {e}");
            let _ = ws_tx
                .send(ws_message(CHANNEL_ERROR, &failure_status(&msg)))
                .await;
            let _ = ws_tx.send(close_message()).await;
            return;
        }
    };
    // Client to node: stdin, resize and close signals; the body ends when the client closes.
    let from_client = tokio::spawn(async move {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            if matches!(channel, CHANNEL_STDIN | CHANNEL_RESIZE | CHANNEL_CLOSE)
                && to_node.send(encode_frame(channel, payload)).await.is_err()
            {
                break;
            }
        }
    });
    let mut body = res.into_body();
    let mut decoder = FrameDecoder::default();
    'relay: while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        decoder.push(&data);
        loop {
            match decoder.next_frame() {
                Ok(Some((channel, data))) => {
                    if ws_tx.send(ws_message(channel, &data)).await.is_err() {
                        break 'relay;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%node, error = %e, "exec: bad frame from the node");
                    break 'relay;
                }
            }
        }
    }
    let _ = ws_tx.send(close_message()).await;
    from_client.abort();
}

fn close_message() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], annotation: Option<&str>) -> Value {
        let mut p = json!({
            "metadata": {"name": "web", "annotations": {}},
            "spec": {"containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>(),
                     "initContainers": [{"name": "setup"}]},
        });
        if let Some(a) = annotation {
            p["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] = json!(a);
        }
        p
    }

    #[test]
    fn containers_default_and_validate() {
        assert_eq!(pick_container(&pod(&["a"], None), None).expect("only"), "a");
        assert_eq!(
            pick_container(&pod(&["a", "b"], None), None).expect("first"),
            "a"
        );
        assert_eq!(
            pick_container(&pod(&["a", "b"], Some("b")), None).expect("annotated"),
            "b"
        );
        assert_eq!(
            pick_container(&pod(&["a", "b"], Some("zz")), None).expect("bad annotation"),
            "a"
        );
        assert_eq!(
            pick_container(&pod(&["a", "b"], None), Some("setup")).expect("init"),
            "setup"
        );
        let e = pick_container(&pod(&["a", "b"], None), Some("c")).expect_err("wrong");
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.message,
            "container c is not valid for pod web: choose one of [a b setup]"
        );
    }

    #[test]
    fn protocol_follows_the_client_order() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io, v5.channel.k8s.io"),
        );
        assert_eq!(choose_protocol(&h), Some("v4.channel.k8s.io"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("channel.k8s.io"),
        );
        assert_eq!(choose_protocol(&h), None);
    }

    #[test]
    fn query_numbers() {
        let q = vec![
            ("tailLines".to_string(), "5".to_string()),
            ("limitBytes".to_string(), "x".to_string()),
        ];
        assert_eq!(number(&q, "tailLines").expect("n"), Some(5));
        assert_eq!(number(&q, "sinceSeconds").expect("none"), None);
        assert!(number(&q, "limitBytes").is_err());
    }
}
