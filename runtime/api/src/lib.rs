//! The Kubernetes-compatible API: routing of every URL to discovery or the generic handler.

pub mod apply;
pub mod conversion;
pub mod crd;
pub mod cron;
pub mod discovery;
pub mod eviction;
pub mod fieldvalidation;
pub mod handler;
pub mod metrics;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod resources;
pub mod scale;
pub mod selectors;
pub mod status;
pub mod structural;
pub mod table;
pub mod user;
pub mod validation;

use user::Identity;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_store::Store;
use http_body_util::BodyExt;
use serde_json::json;
use status::ApiError;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Api {
    pub store: Arc<dyn Store>,
    pub ca_pem: String,
    /// Where `pods/log` and `pods/exec` are answered (the pod's node); `None` serves neither.
    pub pod_streams: Option<Arc<dyn PodStreams>>,
}

/// The pod subresources that stream from the pod's node rather than from the store.
#[async_trait::async_trait]
pub trait PodStreams: Send + Sync {
    /// Answers `pods/{name}/{subresource}` in `namespace` (`log`, `exec`, `attach` or `portforward`).
    async fn serve(
        &self,
        namespace: &str,
        name: &str,
        subresource: &str,
        req: Request<Body>,
    ) -> Response;

    /// Relays `req` to `{plural}/{name}/proxy{path}` (`pods` or `services`; `name` may carry
    /// `scheme:` and `:port` as in Kubernetes) through the node running the pod.
    async fn proxy(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
        path: &str,
        req: Request<Body>,
    ) -> Response;
}

fn json_ok(v: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

pub fn version() -> serde_json::Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": format!("v1.32.0+cairn.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

impl Api {
    /// Answers one request; `who` is None when the client did not authenticate.
    pub async fn serve(&self, who: Option<Identity>, req: Request<Body>) -> Response {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // What a load balancer, a probe or a joining node needs, without credentials.
        match segments.as_slice() {
            ["version"] => return json_ok(version()),
            ["healthz"] | ["livez"] | ["readyz"] => return (StatusCode::OK, "ok").into_response(),
            ["cacerts"] => {
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/x-pem-file")],
                    self.ca_pem.clone(),
                )
                    .into_response()
            }
            _ => {}
        }
        let Some(_who) = who else {
            return ApiError::unauthorized().into_response();
        };
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if matches!(segments.as_slice(), ["api"] | ["apis"]) && discovery::wants_aggregated(accept)
        {
            let doc = discovery::aggregated(segments == ["api"]);
            return (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, discovery::AGGREGATED_CONTENT_TYPE),
                    (header::VARY, "Accept"),
                ],
                serde_json::to_vec(&doc).unwrap_or_default(),
            )
                .into_response();
        }
        match segments.as_slice() {
            ["metrics"] => (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                metrics::metrics().render(&*self.store).await,
            )
                .into_response(),
            ["api"] => json_ok(discovery::api_versions()),
            ["apis"] => json_ok(discovery::api_group_list()),
            ["api", v] => discovery::api_resource_list("", v)
                .map(json_ok)
                .unwrap_or_else(|| ApiError::not_found_path().into_response()),
            ["apis", g] => discovery::api_group(g)
                .map(json_ok)
                .unwrap_or_else(|| ApiError::not_found_path().into_response()),
            ["apis", g, v] => discovery::api_resource_list(g, v)
                .map(json_ok)
                .unwrap_or_else(|| ApiError::not_found_path().into_response()),
            ["openapi", "v2"] => openapi::serve_v2(
                Some(accept),
                req.headers()
                    .get(header::IF_NONE_MATCH)
                    .and_then(|v| v.to_str().ok()),
            ),
            ["openapi", "v3", rest @ ..] => openapi::serve(
                rest,
                req.uri().query(),
                req.headers()
                    .get(header::IF_NONE_MATCH)
                    .and_then(|v| v.to_str().ok()),
            ),
            ["api", v, rest @ ..] => self.resource_request("", v, rest, req).await,
            ["apis", g, v, rest @ ..] => self.resource_request(g, v, rest, req).await,
            _ => ApiError::not_found_path().into_response(),
        }
    }

    async fn resource_request(
        &self,
        group: &str,
        version: &str,
        rest: &[&str],
        req: Request<Body>,
    ) -> Response {
        // namespaces/{ns}/{plural}[/{name}[/{sub}]] or {plural}[/{name}[/{sub}]]
        let (namespace, rest) = match rest {
            ["namespaces", ns, plural, tail @ ..] => (Some(*ns), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            }),
            other => (None, other.to_vec()),
        };
        let Some(plural) = rest.first() else {
            return ApiError::not_found_path().into_response();
        };
        let Some(resource) = resources::find(group, version, plural) else {
            return ApiError::not_found_path().into_response();
        };
        // Proxies to a pod's or service's port go through the pod's node, like exec.
        if let (true, Some(ns), Some(name), Some("proxy")) = (
            group.is_empty() && matches!(*plural, "pods" | "services"),
            namespace,
            rest.get(1),
            rest.get(2).copied(),
        ) {
            let marker = format!("/{plural}/{name}/proxy");
            let path = req.uri().path();
            let tail = path
                .find(&marker)
                .map(|at| &path[at + marker.len()..])
                .filter(|t| !t.is_empty())
                .unwrap_or("/")
                .to_string();
            let tail = match req.uri().query() {
                Some(q) => format!("{tail}?{q}"),
                None => tail,
            };
            return match &self.pod_streams {
                Some(streams) => streams.proxy(plural, ns, name, &tail, req).await,
                None => ApiError::not_found_path().into_response(),
            };
        }
        if rest.len() > 3 {
            return ApiError::not_found_path().into_response();
        }
        // Logs, exec, attach and port-forward stream from the pod's node through its tunnel.
        if let (
            true,
            Some(ns),
            Some(name),
            Some(sub @ ("log" | "exec" | "attach" | "portforward")),
        ) = (
            group.is_empty() && *plural == "pods",
            namespace,
            rest.get(1),
            rest.get(2).copied(),
        ) {
            return match &self.pod_streams {
                Some(streams) => streams.serve(ns, name, sub, req).await,
                None => ApiError::not_found_path().into_response(),
            };
        }
        let method = req.method().clone();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let body = if matches!(method, Method::GET | Method::HEAD) {
            bytes::Bytes::new()
        } else {
            match read_body(req.into_body(), handler::MAX_BODY).await {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            }
        };
        let name = rest.get(1).copied();
        let verb = match (&method, name) {
            (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                "WATCH"
            }
            (&Method::GET, None) => "LIST",
            (&Method::DELETE, None) => "DELETECOLLECTION",
            (m, _) => m.as_str(),
        };
        let verb = verb.to_string();
        let started = std::time::Instant::now();
        let response = handler::handle(
            &self.store,
            handler::Request {
                method,
                target: handler::Target {
                    resource,
                    namespace,
                    name,
                    subresource: rest.get(2).copied(),
                },
                query,
                content_type,
                accept,
                body,
            },
        )
        .await;
        metrics::metrics().observe(
            &verb,
            resource.group,
            resource.plural,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        response
    }
}

/// How much of a body over the limit is read and thrown away before the 413 goes out: an
/// HTTP/2 client still sending sees its stream reset, not the answer, when the server stops
/// reading; past this the connection is not worth keeping.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// The request body, at most `max` bytes; a larger one is drained (up to [`DRAIN_LIMIT`],
/// holding one frame at a time) and answered with 413.
async fn read_body(mut body: Body, max: usize) -> Result<bytes::Bytes, ApiError> {
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen > DRAIN_LIMIT {
            break;
        }
        if seen <= max {
            buf.extend_from_slice(&data);
        } else if !buf.is_empty() {
            buf = bytes::BytesMut::new();
        }
    }
    if seen > max {
        return Err(ApiError::too_large());
    }
    Ok(buf.freeze())
}
