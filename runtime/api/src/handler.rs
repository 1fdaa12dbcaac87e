//! One generic REST handler for every kind in the resource table: get, list (selectors,
//! limit/continue), watch, create, update, patch, delete.

use super::apply;
use super::fieldvalidation;
use super::objects::{self, decode, encode};
use super::patch;
use super::registry;
use super::resources::Resource;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use cairn_store::{EventKind, Store, StoreError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The largest request body accepted, as kube-apiserver's limit.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// One resource request, parsed from the URL.
pub struct Target<'a> {
    pub resource: &'static Resource,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub subresource: Option<&'a str>,
}

pub struct Request<'a> {
    pub method: Method,
    pub target: Target<'a>,
    pub query: HashMap<String, String>,
    pub content_type: String,
    /// The Accept header: GETs answer a Table when it asks for one (see `table::wants_table`).
    pub accept: String,
    pub body: bytes::Bytes,
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, axum::Json(v)).into_response()
}

pub(super) use super::registry::store_error;

fn parse_body(req: &Request<'_>) -> Result<Value, ApiError> {
    if req.body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let ct = req.content_type.split(';').next().unwrap_or("").trim();
    if ct.contains("protobuf") {
        return super::protobuf::decode(&req.body).map_err(|e| match e {
            super::protobuf::ProtoError::UnsupportedKind(_) => {
                ApiError::unsupported_media(e.to_string())
            }
            other => ApiError::bad_request(other.to_string()),
        });
    }
    // YAML bodies (`application/yaml`, and apply patches, which are YAML by definition).
    if ct.ends_with("yaml") {
        return serde_yaml_ng::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
        });
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

pub async fn handle(store: &Arc<dyn Store>, req: Request<'_>) -> Response {
    match dispatch(store, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(store: &Arc<dyn Store>, req: Request<'_>) -> Result<Response, ApiError> {
    let t = &req.target;
    // pods/log, exec, attach, portforward and the proxies are routed to the node tunnels
    // before this handler (lib.rs).
    if t.resource.namespaced && t.namespace.is_none() && t.name.is_some() {
        return Err(ApiError::not_found_path());
    }
    if let (Some("eviction"), Some(name), Some(ns)) = (t.subresource, t.name, t.namespace) {
        if t.resource.kind != "Pod" || !t.resource.group.is_empty() {
            return Err(ApiError::not_found_path());
        }
        if req.method != Method::POST {
            return Err(ApiError::method_not_allowed());
        }
        let body = parse_body(&req)?;
        let dry_run = write_options(&req)?.dry_run;
        let done = super::eviction::evict(&**store, ns, name, &body, dry_run).await?;
        return Ok(json_response(StatusCode::CREATED, &done));
    }
    if let (Some("binding"), Some(name)) = (t.subresource, t.name) {
        if t.resource.kind != "Pod" || !t.resource.group.is_empty() || req.method != Method::POST {
            return Err(ApiError::method_not_allowed());
        }
        return bind(store, &req, name).await;
    }
    if let (Some("scale"), Some(name)) = (t.subresource, t.name) {
        if !t.resource.subresources.contains(&"scale") {
            return Err(ApiError::not_found_path());
        }
        let opts = write_options(&req)?;
        return super::scale::handle(
            store,
            t,
            name,
            &req.method,
            &req.content_type,
            &req.body,
            &opts,
        )
        .await;
    }
    match (&req.method, t.name) {
        (&Method::GET, None) => {
            if is_true(req.query.get("watch")) {
                watch(store, &req).await
            } else {
                list(store, &req).await
            }
        }
        (&Method::POST, None) => create(store, &req).await,
        (&Method::DELETE, None) => delete_collection(store, &req).await,
        (&Method::GET, Some(name)) => get(store, &req, name).await,
        (&Method::PUT, Some(name)) => update(store, &req, name).await,
        (&Method::PATCH, Some(name)) => patch_object(store, &req, name).await,
        (&Method::DELETE, Some(name)) => delete(store, &req, name).await,
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn is_true(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("true") | Some("1"))
}

async fn get(store: &Arc<dyn Store>, req: &Request<'_>, name: &str) -> Result<Response, ApiError> {
    let t = &req.target;
    let r = t.resource;
    let rec = store
        .get(&r.key(t.namespace, name))
        .await
        .map_err(|e| store_error(e, r, name))?
        .ok_or_else(|| ApiError::not_found(r.plural, r.group, name))?;
    let obj = super::table::respond(t.resource, &req.accept, &req.query, decode_for(r, &rec)?);
    Ok(json_response(StatusCode::OK, &obj))
}

struct Filters {
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
}

impl Filters {
    fn parse(req: &Request<'_>) -> Result<Filters, ApiError> {
        let labels = match req.query.get("labelSelector").filter(|s| !s.is_empty()) {
            Some(s) => {
                Some(LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?)
            }
            None => None,
        };
        let fields = match req.query.get("fieldSelector").filter(|s| !s.is_empty()) {
            Some(s) => {
                let f =
                    FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
                if let Some(bad) = f.fields().find(|f| !req.target.resource.supports_field(f)) {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {bad}"
                    )));
                }
                Some(f)
            }
            None => None,
        };
        Ok(Filters { labels, fields })
    }

    fn matches(&self, obj: &Value) -> bool {
        if let Some(l) = &self.labels {
            if !l.matches_object(obj) {
                return false;
            }
        }
        if let Some(f) = &self.fields {
            if !f.matches(obj) {
                return false;
            }
        }
        true
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: i64,
    start: String,
}

/// How many objects a LIST reads from the store at a time. A LIST walks its result page by
/// page at one revision and encodes each object as it goes, so a large LIST holds its
/// encoded answer and one page of objects, never every object decoded at once.
const LIST_PAGE: usize = 250;

async fn list(store: &Arc<dyn Store>, req: &Request<'_>) -> Result<Response, ApiError> {
    let r = req.target.resource;
    let filters = Filters::parse(req)?;
    let prefix = r.key_prefix(req.target.namespace);
    let limit: usize = match req.query.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let (mut at, mut cursor) = match req.query.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            let tok: ContinueToken = serde_json::from_slice(&raw)
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            (Some(tok.rv), Some(tok.start))
        }
        None => (None, None),
    };
    let table = super::table::wants_table(&req.accept);
    // Tables need every row's object; plain lists are encoded item by item.
    let mut objects = Vec::new();
    let mut encoded = Vec::new();
    let mut count = 0usize;
    let mut more;
    let mut revision;
    loop {
        let want = if limit == 0 {
            LIST_PAGE
        } else {
            (limit - count).min(LIST_PAGE)
        };
        let page = store
            .list(&prefix, cursor.as_deref(), want, at)
            .await
            .map_err(|e| match e {
                StoreError::Compacted { .. } => ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ),
                e => store_error(e, r, ""),
            })?;
        revision = page.revision;
        at = Some(revision);
        more = page.more;
        for rec in page.records {
            let obj = decode_for(r, &rec)?;
            cursor = Some(rec.key);
            if !filters.matches(&obj) {
                continue;
            }
            count += 1;
            if table {
                objects.push(obj);
            } else {
                if count > 1 {
                    encoded.push(b',');
                }
                serde_json::to_writer(&mut encoded, &obj)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
            }
        }
        // With a limit, kube-apiserver keeps reading until it has that many matching
        // objects or the store has no more.
        if !more || (limit != 0 && count >= limit) {
            break;
        }
    }
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if more {
        if let Some(last) = cursor {
            let tok = ContinueToken {
                rv: revision,
                start: last,
            };
            let raw = serde_json::to_vec(&tok).map_err(|e| ApiError::internal(e.to_string()))?;
            metadata["continue"] =
                json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
        }
    }
    let head = json!({
        "kind": format!("{}List", r.kind),
        "apiVersion": r.api_version(),
        "metadata": metadata,
    });
    if table {
        let mut list = head;
        list["items"] = Value::Array(objects);
        let list = super::table::respond(r, &req.accept, &req.query, list);
        return Ok(json_response(StatusCode::OK, &list));
    }
    // `{"kind":…,"apiVersion":…,"metadata":{…},"items":[…]}` with the items already encoded.
    let mut body = serde_json::to_vec(&head).map_err(|e| ApiError::internal(e.to_string()))?;
    body.pop();
    body.reserve(encoded.len() + 12);
    body.extend_from_slice(br#","items":["#);
    body.extend_from_slice(&encoded);
    drop(encoded);
    body.extend_from_slice(b"]}");
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// How many objects a watch lists at a time for its initial ADDED events: small, since
/// every open watch holds one page while its client takes it.
const WATCH_PAGE: usize = 100;

fn watch_event(kind: &str, obj: &Value) -> bytes::Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
    line.push(b'\n');
    bytes::Bytes::from(line)
}

async fn watch(store: &Arc<dyn Store>, req: &Request<'_>) -> Result<Response, ApiError> {
    let r = req.target.resource;
    let filters = Filters::parse(req)?;
    let prefix = r.key_prefix(req.target.namespace);
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let bookmarks = is_true(req.query.get("allowWatchBookmarks"));
    // kubectl get -w: every event's object is a one-row Table.
    let as_table = super::table::wants_table(&req.accept).then(|| {
        super::table::IncludeObject::from_query(req.query.get("includeObject").map(String::as_str))
    });
    let rv = req
        .query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))
        })
        .transpose()?;

    // A few encoded events ahead of the client; a slow client holds no more than these.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    // Without a resourceVersion the watch starts with the current objects as ADDED events,
    // listed page by page as the client takes them (never the whole backlog in memory).
    let mut first_page = None;
    let after = match rv {
        Some(rv) => rv,
        None => {
            let listed = store
                .list(&prefix, None, WATCH_PAGE, None)
                .await
                .map_err(|e| store_error(e, r, ""))?;
            let revision = listed.revision;
            first_page = Some(listed);
            revision
        }
    };
    let mut initial = Vec::new();
    let events = match store.watch(&prefix, after).await {
        Ok(rx) => Some(rx),
        Err(StoreError::Compacted { .. }) => {
            let status = ApiError::gone(format!("too old resource version: {after}")).to_status();
            initial.push(watch_event("ERROR", &status));
            None
        }
        Err(e) => return Err(store_error(e, r, "")),
    };
    let lister = store.clone();
    let kind = r.kind;
    let api_version = r.api_version();
    tokio::spawn(async move {
        let _open = super::metrics::metrics().watch_opened();
        for line in initial {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let mut page = first_page;
        while let Some(listed) = page.take() {
            for rec in &listed.records {
                let Ok(obj) = decode_for(r, rec) else {
                    continue;
                };
                if filters.matches(&obj) {
                    let line = watch_event("ADDED", &super::table::watch_object(r, as_table, &obj));
                    if tx.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
            }
            if listed.more {
                let last = listed.records.last().map(|rec| rec.key.clone());
                match lister
                    .list(&prefix, last.as_deref(), WATCH_PAGE, Some(after))
                    .await
                {
                    Ok(next) => page = Some(next),
                    Err(e) => {
                        let status = store_error(e, r, "").to_status();
                        let _ = tx.send(Ok(watch_event("ERROR", &status))).await;
                        return;
                    }
                }
            }
        }
        let Some(mut events) = events else { return };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut last_rv = after;
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                // The client went away: release the watch at once, not at its timeout.
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(Ok(watch_event("BOOKMARK", &bm))).await.is_err() { return; }
                }
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        // The store dropped a watcher that fell behind: the client re-lists.
                        let status = ApiError::gone("the watch fell behind; list again").to_status();
                        let _ = tx.send(Ok(watch_event("ERROR", &status))).await;
                        return;
                    };
                    last_rv = ev.record.revision;
                    let Ok(cur) = decode_for(r, &ev.record) else { continue };
                    let prev = ev.prev.as_ref().and_then(|p| decode_for(r, p).ok());
                    let was = prev.as_ref().is_some_and(|p| filters.matches(p));
                    let is = filters.matches(&cur);
                    let kind = match ev.kind {
                        EventKind::Delete if was || is => "DELETED",
                        EventKind::Delete => continue,
                        EventKind::Put => match (was, is) {
                            (false, true) => "ADDED",
                            (true, true) => "MODIFIED",
                            (true, false) => "DELETED",
                            (false, false) => continue,
                        },
                    };
                    let cur = super::table::watch_object(r, as_table, &cur);
                    if tx.send(Ok(watch_event(kind, &cur))).await.is_err() { return; }
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Checks apiVersion/kind/namespace of a submitted object and fills them in when absent.
fn check_identity(obj: &mut Value, req: &Request<'_>) -> Result<(), ApiError> {
    let r = req.target.resource;
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let api_version = r.api_version();
    match obj["kind"].as_str() {
        Some(k) if k != r.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind {k:?} does not match the resource {} (kind {:?})",
                r.plural, r.kind
            )))
        }
        _ => obj["kind"] = json!(r.kind),
    }
    match obj["apiVersion"].as_str() {
        Some(v) if v != api_version => {
            return Err(ApiError::bad_request(format!(
                "the apiVersion {v:?} does not match {api_version:?} for {}",
                r.plural
            )))
        }
        _ => obj["apiVersion"] = json!(api_version),
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if r.namespaced {
        let ns = req.target.namespace.unwrap_or("default");
        match obj["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()) {
            Some(n) if n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        }
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    Ok(())
}

/// What this request asks of a write: dry run, and the field manager unless the body is an
/// apply patch (whose managed fields `apply` computed already).
fn write_options(req: &Request<'_>) -> Result<registry::WriteOptions, ApiError> {
    let dry_run = match req.query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid dryRun value {other:?}: valid values are \"All\""
            )))
        }
    };
    let field_manager =
        (req.content_type != apply::APPLY_CONTENT_TYPE).then(|| apply::manager(&req.query));
    Ok(registry::WriteOptions {
        dry_run,
        field_manager,
        owns_status: false,
    })
}

async fn create(store: &Arc<dyn Store>, req: &Request<'_>) -> Result<Response, ApiError> {
    let r = req.target.resource;
    let mut obj = parse_body(req)?;
    check_identity(&mut obj, req)?;
    let checked = fieldvalidation::check(r.group, r.kind, &obj, field_mode(req)?)?;
    let name = objects::name_of(&checked.object)
        .unwrap_or_default()
        .to_string();
    let created = registry::create(&**store, r, checked.object, &write_options(req)?)
        .await
        .map_err(|e| e.into_api(r, &name))?;
    Ok(with_warnings(
        json_response(StatusCode::CREATED, &created),
        &checked.warnings,
    ))
}

/// `fieldValidation` of this request (kube-apiserver's default is Warn).
fn field_mode(req: &Request<'_>) -> Result<fieldvalidation::Mode, ApiError> {
    fieldvalidation::Mode::from_query(req.query.get("fieldValidation").map(String::as_str))
}

/// Adds one `Warning` header per message, as kube-apiserver reports unknown fields.
fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        if let Ok(v) = header::HeaderValue::from_str(&fieldvalidation::warning_header(w)) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// Writes `obj` over `old` with compare-and-swap on `expected`, through the registry: the
/// subresource named on the URL says which part of the object may change.
async fn write_update(
    store: &Arc<dyn Store>,
    req: &Request<'_>,
    name: &str,
    obj: Value,
    old: &Value,
    expected: i64,
) -> Result<Response, ApiError> {
    let r = req.target.resource;
    let part = registry::Part::from_subresource(r, req.target.subresource)?;
    let checked = fieldvalidation::check(r.group, r.kind, &obj, field_mode(req)?)?;
    if objects::name_of(&checked.object) != Some(name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            objects::name_of(&checked.object).unwrap_or_default()
        )));
    }
    let written = registry::update(
        &**store,
        r,
        old,
        expected,
        checked.object,
        part,
        &write_options(req)?,
    )
    .await
    .map_err(|e| e.into_api(r, name))?;
    Ok(with_warnings(
        json_response(StatusCode::OK, &written),
        &checked.warnings,
    ))
}

/// `POST pods/{name}/binding`: assigns an unscheduled pod to the Binding's target node, as a
/// scheduler does; a pod already bound is a conflict.
async fn bind(store: &Arc<dyn Store>, req: &Request<'_>, name: &str) -> Result<Response, ApiError> {
    let r = req.target.resource;
    let binding = parse_body(req)?;
    let node = binding["target"]["name"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid(
            "Binding",
            "",
            name,
            vec![("target.name".into(), "Required value".into())],
        ));
    }
    let (old, rev) = current(store, &req.target, name)
        .await?
        .ok_or_else(|| ApiError::not_found(r.plural, r.group, name))?;
    if old["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty())
    {
        return Err(ApiError::conflict(r.plural, r.group, name));
    }
    let mut bound = old.clone();
    bound["spec"]["nodeName"] = json!(node);
    registry::update(
        &**store,
        r,
        &old,
        rev,
        bound,
        registry::Part::Whole,
        &write_options(req)?,
    )
    .await
    .map_err(|e| e.into_api(r, name))?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// A stored object as `r` serves it (converted from its storage version).
fn decode_for(r: &Resource, rec: &cairn_store::Record) -> Result<Value, ApiError> {
    Ok(super::conversion::to_served(r, decode(rec)?))
}

async fn current(
    store: &Arc<dyn Store>,
    t: &Target<'_>,
    name: &str,
) -> Result<Option<(Value, i64)>, ApiError> {
    let r = t.resource;
    match store.get(&r.key(t.namespace, name)).await {
        Ok(Some(rec)) => Ok(Some((decode_for(r, &rec)?, rec.revision))),
        Ok(None) => Ok(None),
        Err(e) => Err(store_error(e, r, name)),
    }
}

async fn update(
    store: &Arc<dyn Store>,
    req: &Request<'_>,
    name: &str,
) -> Result<Response, ApiError> {
    let r = req.target.resource;
    let mut obj = parse_body(req)?;
    check_identity(&mut obj, req)?;
    let (old, rev) = current(store, &req.target, name)
        .await?
        .ok_or_else(|| ApiError::not_found(r.plural, r.group, name))?;
    // An absent or empty resourceVersion is an unconditional update, as in kube-apiserver.
    let expected = match obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty())
    {
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        None => rev,
    };
    if expected != rev {
        return Err(ApiError::conflict(r.plural, r.group, name));
    }
    write_update(store, req, name, obj, &old, expected).await
}

async fn patch_object(
    store: &Arc<dyn Store>,
    req: &Request<'_>,
    name: &str,
) -> Result<Response, ApiError> {
    let r = req.target.resource;
    let ct = req
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let body = parse_body(req)?;
    let is_apply = ct == apply::APPLY_CONTENT_TYPE;
    if is_apply && req.query.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    let apply_req = apply::ApplyRequest {
        kind: r.kind,
        group: r.group,
        custom: r.custom,
        api_version: &r.api_version(),
        manager: req.query.get("fieldManager").map_or("", String::as_str),
        force: is_true(req.query.get("force")),
    };
    // A conflicting writer between our read and write is retried, as kube-apiserver does.
    for _ in 0..5 {
        let existing = current(store, &req.target, name).await?;
        let (old, rev) = match existing {
            Some(x) => x,
            None if ct == "application/apply-patch+yaml" => {
                // Server-side apply of a missing object creates it.
                let create_req = Request {
                    method: Method::POST,
                    target: Target {
                        name: None,
                        ..req.target.clone_ref()
                    },
                    query: req.query.clone(),
                    content_type: apply::APPLY_CONTENT_TYPE.into(),
                    accept: String::new(),
                    body: encode(&apply::apply(&apply_req, None, &body)?)?.into(),
                };
                return create(store, &create_req).await;
            }
            None => return Err(ApiError::not_found(r.plural, r.group, name)),
        };
        let patched = match ct.as_str() {
            "application/merge-patch+json" => patch::merge_patch(&old, &body),
            "application/json-patch+json" => patch::json_patch(&old, &body)
                .map_err(|e| ApiError::invalid(r.kind, r.group, name, vec![("patch".into(), e.to_string())]))?,
            "application/strategic-merge-patch+json" if r.custom => {
                // As kube-apiserver: custom resources have no strategic merge keys.
                return Err(ApiError::unsupported_media(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            apply::APPLY_CONTENT_TYPE => apply::apply(&apply_req, Some(&old), &body)?,
            "application/strategic-merge-patch+json" => {
                patch::strategic_merge_patch_for(r.kind, &old, &body)
                    .map_err(|e| ApiError::invalid(r.kind, r.group, name, vec![("patch".into(), e.to_string())]))?
            }
            other => {
                return Err(ApiError::unsupported_media(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
                )))
            }
        };
        let mut patched = patched;
        let sub_req = Request {
            method: Method::PUT,
            target: req.target.clone_ref(),
            query: req.query.clone(),
            content_type: ct.clone(),
            accept: String::new(),
            body: bytes::Bytes::new(),
        };
        check_identity(&mut patched, &sub_req)?;
        match write_update(store, &sub_req, name, patched, &old, rev).await {
            Err(e) if e.reason == "Conflict" => continue,
            other => return other,
        }
    }
    Err(ApiError::conflict(r.plural, r.group, name))
}

impl Target<'_> {
    fn clone_ref(&self) -> Target<'_> {
        Target {
            resource: self.resource,
            namespace: self.namespace,
            name: self.name,
            subresource: self.subresource,
        }
    }
}

async fn delete(
    store: &Arc<dyn Store>,
    req: &Request<'_>,
    name: &str,
) -> Result<Response, ApiError> {
    let opts = delete_options(req)?;
    let (code, obj) = delete_one(store, req, name, &opts).await?;
    Ok(json_response(code, &obj))
}

/// `DeleteOptions` from the body (JSON or protobuf) and the query.
fn delete_options(req: &Request<'_>) -> Result<registry::DeleteOptions, ApiError> {
    let options: Value = if req.body.is_empty() {
        json!({})
    } else {
        parse_body(req)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {}", e.message)))?
    };
    let grace_period =
        options["gracePeriodSeconds"]
            .as_i64()
            .or(match req.query.get("gracePeriodSeconds") {
                Some(g) => Some(g.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}"))
                })?),
                None => None,
            });
    let body_dry_run = options["dryRun"]
        .as_array()
        .is_some_and(|d| d.iter().any(|x| x == "All"));
    Ok(registry::DeleteOptions {
        dry_run: write_options(req)?.dry_run || body_dry_run,
        grace_period,
        propagation: propagation_policy(req, &options)?,
        precondition_revision: options["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        precondition_uid: options["preconditions"]["uid"].as_str().map(str::to_string),
    })
}

/// Deletes (or marks for deletion) one object; the status code and the object.
async fn delete_one(
    store: &Arc<dyn Store>,
    req: &Request<'_>,
    name: &str,
    opts: &registry::DeleteOptions,
) -> Result<(StatusCode, Value), ApiError> {
    let r = req.target.resource;
    let (old, rev) = current(store, &req.target, name)
        .await?
        .ok_or_else(|| ApiError::not_found(r.plural, r.group, name))?;
    let (done, obj) = registry::delete(&**store, r, &old, rev, opts)
        .await
        .map_err(|e| e.into_api(r, name))?;
    // kube-apiserver answers 202 while a delete waits, but 200 for a namespace.
    let waiting =
        done == registry::Deleted::Marked && !(r.kind == "Namespace" && r.group.is_empty());
    let code = if waiting {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((code, obj))
}

use registry::Propagation;

/// `propagationPolicy` (body or query) or the legacy `orphanDependents`.
fn propagation_policy(req: &Request<'_>, options: &Value) -> Result<Propagation, ApiError> {
    let policy = options["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| req.query.get("propagationPolicy").cloned());
    let orphan = options["orphanDependents"].as_bool().or_else(|| {
        match req.query.get("orphanDependents").map(String::as_str) {
            Some("true") | Some("1") => Some(true),
            Some("false") | Some("0") => Some(false),
            _ => None,
        }
    });
    match (policy.as_deref(), orphan) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "DeleteOptions",
            "",
            "",
            vec![(
                "propagationPolicy".into(),
                "Invalid value: orphanDependents and deletionPropagation cannot be both set".into(),
            )],
        )),
        (Some("Orphan"), None) => Ok(Propagation::Orphan),
        (Some("Background"), None) => Ok(Propagation::Background),
        (Some("Foreground"), None) => Ok(Propagation::Foreground),
        (Some(other), None) => Err(ApiError::invalid(
            "DeleteOptions",
            "",
            "",
            vec![(
                "propagationPolicy".into(),
                format!("Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""),
            )],
        )),
        (None, Some(true)) => Ok(Propagation::Orphan),
        (None, Some(false)) => Ok(Propagation::Background),
        (None, None) => Ok(Propagation::Default),
    }
}

async fn delete_collection(
    store: &Arc<dyn Store>,
    req: &Request<'_>,
) -> Result<Response, ApiError> {
    let r = req.target.resource;
    let filters = Filters::parse(req)?;
    let opts = delete_options(req)?;
    let listed = store
        .list(&r.key_prefix(req.target.namespace), None, 0, None)
        .await
        .map_err(|e| store_error(e, r, ""))?;
    let mut items = Vec::new();
    for rec in &listed.records {
        let obj = decode_for(r, rec)?;
        if !filters.matches(&obj) {
            continue;
        }
        // Each object goes as a DELETE of it would: finalizers and propagation included.
        let name = objects::name_of(&obj).unwrap_or_default().to_string();
        let namespace = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let one = Request {
            method: Method::DELETE,
            target: Target {
                resource: r,
                namespace: namespace.as_deref(),
                name: Some(&name),
                subresource: None,
            },
            query: req.query.clone(),
            content_type: req.content_type.clone(),
            accept: String::new(),
            body: req.body.clone(),
        };
        match delete_one(store, &one, &name, &opts).await {
            Ok((_, gone)) => items.push(gone),
            Err(e) if e.code == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": {}, "items": items}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;
    use cairn_store::SqliteStore;

    #[allow(clippy::too_many_arguments)]
    async fn call(
        store: &Arc<dyn Store>,
        method: Method,
        plural: (&str, &str),
        namespace: Option<&str>,
        name: Option<&str>,
        query: &[(&str, &str)],
        ct: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let resp = handle(
            store,
            Request {
                method,
                target: Target {
                    resource: find(plural.0, "v1", plural.1).unwrap(),
                    namespace,
                    // "name/subresource"
                    name: name.map(|n| n.split('/').next().unwrap_or(n)),
                    subresource: name.and_then(|n| n.split('/').nth(1)),
                },
                query: query
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                content_type: ct.into(),
                accept: String::new(),
                body: if body.is_null() {
                    bytes::Bytes::new()
                } else {
                    bytes::Bytes::from(body.to_string())
                },
            },
        )
        .await;
        let code = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    const JSON: &str = "application/json";
    const CM: (&str, &str) = ("", "configmaps");

    #[tokio::test]
    async fn deletion_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let ns = ("", "namespaces");
        let (c, _) = call(
            &store,
            Method::POST,
            ns,
            None,
            None,
            &[],
            JSON,
            json!({"metadata": {"name": "t"}}),
        )
        .await;
        assert_eq!(c, StatusCode::CREATED);
        for n in ["a", "b", "c"] {
            let (c, _) = call(
                &store,
                Method::POST,
                CM,
                Some("t"),
                None,
                &[],
                JSON,
                json!({"metadata": {"name": n}}),
            )
            .await;
            assert_eq!(c, StatusCode::CREATED);
        }
        // Orphan (body) and Foreground (query) add their finalizers and keep the object.
        let (c, o) = call(
            &store,
            Method::DELETE,
            CM,
            Some("t"),
            Some("a"),
            &[],
            JSON,
            json!({"propagationPolicy": "Orphan"}),
        )
        .await;
        assert_eq!(c, StatusCode::ACCEPTED);
        assert_eq!(o["metadata"]["finalizers"], json!(["orphan"]));
        assert!(o["metadata"]["deletionTimestamp"].is_string());
        let (_, o) = call(
            &store,
            Method::DELETE,
            CM,
            Some("t"),
            Some("b"),
            &[("propagationPolicy", "Foreground")],
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(o["metadata"]["finalizers"], json!(["foregroundDeletion"]));
        let (_, o) = call(
            &store,
            Method::DELETE,
            CM,
            Some("t"),
            Some("c"),
            &[],
            JSON,
            json!({"orphanDependents": true}),
        )
        .await;
        assert_eq!(o["metadata"]["finalizers"], json!(["orphan"]));
        // Removing the last finalizer of an object being deleted deletes it.
        let (c, _) = call(
            &store,
            Method::PATCH,
            CM,
            Some("t"),
            Some("a"),
            &[],
            "application/merge-patch+json",
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
        assert_eq!(c, StatusCode::OK);
        let (c, _) = call(
            &store,
            Method::GET,
            CM,
            Some("t"),
            Some("a"),
            &[],
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(c, StatusCode::NOT_FOUND);
        let (_, mut b) = call(
            &store,
            Method::GET,
            CM,
            Some("t"),
            Some("b"),
            &[],
            JSON,
            Value::Null,
        )
        .await;
        b["metadata"]["finalizers"] = json!([]);
        let (c, _) = call(&store, Method::PUT, CM, Some("t"), Some("b"), &[], JSON, b).await;
        assert_eq!(c, StatusCode::OK);
        let (c, _) = call(
            &store,
            Method::GET,
            CM,
            Some("t"),
            Some("b"),
            &[],
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(c, StatusCode::NOT_FOUND);
        // A namespace is marked Terminating, keeps its contents, and refuses new ones.
        let (c, o) = call(
            &store,
            Method::DELETE,
            ns,
            None,
            Some("t"),
            &[],
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(c, StatusCode::OK);
        assert_eq!(o["status"]["phase"], "Terminating");
        assert_eq!(o["spec"]["finalizers"], json!(["kubernetes"]));
        let (c, _) = call(
            &store,
            Method::GET,
            CM,
            Some("t"),
            Some("c"),
            &[],
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(c, StatusCode::OK);
        let (c, o) = call(
            &store,
            Method::POST,
            CM,
            Some("t"),
            None,
            &[],
            JSON,
            json!({"metadata": {"name": "d"}}),
        )
        .await;
        assert_eq!(c, StatusCode::FORBIDDEN);
        assert_eq!(o["message"], "configmaps \"d\" is forbidden: unable to create new content in namespace t because it is being terminated");
        // Other updates keep it; /finalize without the `kubernetes` finalizer removes it.
        let (c, _) = call(
            &store,
            Method::PATCH,
            ns,
            None,
            Some("t"),
            &[],
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"a": "b"}}}),
        )
        .await;
        assert_eq!(c, StatusCode::OK);
        let (c, _) = call(
            &store,
            Method::GET,
            ns,
            None,
            Some("t"),
            &[],
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(c, StatusCode::OK);
        let (_, mut t) = call(
            &store,
            Method::GET,
            ns,
            None,
            Some("t"),
            &[],
            JSON,
            Value::Null,
        )
        .await;
        t["spec"]["finalizers"] = json!([]);
        let (c, _) = call(
            &store,
            Method::PUT,
            ns,
            None,
            Some("t/finalize"),
            &[],
            JSON,
            t,
        )
        .await;
        assert_eq!(c, StatusCode::OK);
        let (c, _) = call(
            &store,
            Method::GET,
            ns,
            None,
            Some("t"),
            &[],
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(c, StatusCode::NOT_FOUND);
        // Background deletes at once; a pod gets its phase and QoS class.
        let (c, _) = call(
            &store,
            Method::POST,
            CM,
            Some("default"),
            None,
            &[],
            JSON,
            json!({"metadata": {"name": "e"}}),
        )
        .await;
        assert_eq!(
            c,
            StatusCode::NOT_FOUND,
            "no default namespace in this store"
        );
        let (_, o) = call(
            &store,
            Method::POST,
            ns,
            None,
            None,
            &[],
            JSON,
            json!({"metadata": {"name": "default"}}),
        )
        .await;
        assert_eq!(o["status"]["phase"], "Active");
        call(
            &store,
            Method::POST,
            CM,
            Some("default"),
            None,
            &[],
            JSON,
            json!({"metadata": {"name": "e"}}),
        )
        .await;
        let (c, _) = call(
            &store,
            Method::DELETE,
            CM,
            Some("default"),
            Some("e"),
            &[("propagationPolicy", "Background")],
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(c, StatusCode::OK);
        let (c, _) = call(
            &store,
            Method::GET,
            CM,
            Some("default"),
            Some("e"),
            &[],
            JSON,
            Value::Null,
        )
        .await;
        assert_eq!(c, StatusCode::NOT_FOUND);
        let (_, p) = call(
            &store,
            Method::POST,
            ("", "pods"),
            Some("default"),
            None,
            &[],
            JSON,
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x",
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}),
        )
        .await;
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["status"]["qosClass"], "Guaranteed");
    }
}
