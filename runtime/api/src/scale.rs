//! The `scale` subresource (autoscaling/v1 Scale) of Deployments, ReplicaSets,
//! StatefulSets, ReplicationControllers and custom resources whose CRD asks for one: what
//! `kubectl scale` and autoscalers read and write.

use super::handler::{store_error, Target};
use super::objects::decode;
use super::patch;
use super::status::ApiError;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_store::Store;
use serde_json::{json, Value};
use std::sync::Arc;

/// Where a kind keeps what its Scale shows: the built-in workloads' fixed fields, or the
/// paths a CRD version's `subresources.scale` names (`.spec.replicas`-style).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    /// JSON pointer of the desired replicas.
    spec_replicas: String,
    /// JSON pointer of the observed replicas.
    status_replicas: String,
    /// JSON pointer of the selector in string form; `None`: the built-ins' `spec.selector`.
    label_selector: Option<String>,
}

/// `.spec.replicas` → `/spec/replicas`.
fn pointer(path: &str) -> Option<String> {
    let rest = path.strip_prefix('.')?;
    (!rest.is_empty() && !rest.contains(['[', ']']))
        .then(|| rest.split('.').map(|p| format!("/{p}")).collect())
}

impl ScalePaths {
    fn builtin() -> Self {
        ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            label_selector: None,
        }
    }

    /// The paths of a CRD version (an entry of `spec.versions`) with a scale subresource.
    pub fn of_crd_version(version: &Value) -> Option<Self> {
        let scale = version["subresources"]["scale"].as_object()?;
        let path = |k: &str| scale.get(k).and_then(Value::as_str).and_then(pointer);
        Some(ScalePaths {
            spec_replicas: path("specReplicasPath")?,
            status_replicas: path("statusReplicasPath")?,
            label_selector: path("labelSelectorPath"),
        })
    }

    fn for_resource(r: &crate::resources::Resource) -> Self {
        if r.custom {
            if let Some(p) = crate::crd::scale_paths(r.group, r.version, r.kind) {
                return p;
            }
        }
        Self::builtin()
    }
}

/// The causes for a CRD version's `subresources.scale`, as kube-apiserver checks it.
pub fn validate_crd_scale(version: &Value, field: &str) -> Vec<(String, String)> {
    let Some(scale) = version["subresources"]["scale"].as_object() else {
        return Vec::new();
    };
    let mut causes = Vec::new();
    for (key, required, under) in [
        ("specReplicasPath", true, &[".spec."][..]),
        ("statusReplicasPath", true, &[".status."][..]),
        ("labelSelectorPath", false, &[".spec.", ".status."][..]),
    ] {
        match scale.get(key).and_then(Value::as_str) {
            None if required => causes.push((format!("{field}.{key}"), "Required value".into())),
            None => {}
            Some(p) if pointer(p).is_none() || !under.iter().any(|u| p.starts_with(u)) => causes
                .push((
                    format!("{field}.{key}"),
                    format!(
                        "Invalid value: {p:?}: should be a json path under {}",
                        under.join(" or ")
                    ),
                )),
            Some(_) => {}
        }
    }
    causes
}

/// The Scale view of an object.
fn scale_view(obj: &Value, paths: &ScalePaths, custom: bool) -> Value {
    let selector = match &paths.label_selector {
        Some(p) => obj
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None if custom => String::new(),
        None => obj["spec"]["selector"]["matchLabels"]
            .as_object()
            .map(|m| {
                let mut pairs: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                pairs.sort();
                pairs.join(",")
            })
            .unwrap_or_default(),
    };
    // A custom object without the field has 0 replicas, as kube-apiserver reads it; the
    // built-ins are defaulted to 1 when created.
    let absent = if custom { 0 } else { 1 };
    let md = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": md["name"], "namespace": md["namespace"], "uid": md["uid"],
            "resourceVersion": md["resourceVersion"], "creationTimestamp": md["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer(&paths.spec_replicas).and_then(Value::as_i64).unwrap_or(absent)},
        "status": {
            "replicas": obj.pointer(&paths.status_replicas).and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

/// The Scale view of a built-in workload object.
pub fn scale_of(obj: &Value) -> Value {
    scale_view(obj, &ScalePaths::builtin(), false)
}

/// Sets the value at JSON pointer `ptr`, making the objects on the way.
fn set_at(obj: &mut Value, ptr: &str, value: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = ptr.split('/').skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == parts.len() {
            map.insert((*part).to_string(), value);
            return;
        }
        cur = map.entry((*part).to_string()).or_insert_with(|| json!({}));
    }
}

/// GET, PUT or PATCH of `<workload>/scale`.
pub async fn handle(
    store: &Arc<dyn Store>,
    target: &Target<'_>,
    name: &str,
    method: &Method,
    content_type: &str,
    body: &[u8],
    opts: &crate::registry::WriteOptions,
) -> Result<Response, ApiError> {
    let t = target;
    let (plural, group) = (target.resource.plural, target.resource.group);
    let key = &target.resource.key(target.namespace, name);
    let not_found = || ApiError::not_found(plural, group, name);
    let to_api = |e| store_error(e, target.resource, name);
    let rec = store
        .get(key)
        .await
        .map_err(to_api)?
        .ok_or_else(not_found)?;
    let obj = crate::conversion::to_served(target.resource, decode(&rec)?);
    let paths = ScalePaths::for_resource(target.resource);
    let custom = target.resource.custom;
    let current = scale_view(&obj, &paths, custom);
    let wanted = match *method {
        Method::GET => return Ok((StatusCode::OK, axum::Json(current)).into_response()),
        Method::PUT | Method::PATCH => {
            let input: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
            })?;
            let ct = content_type.split(';').next().unwrap_or("").trim();
            let result = match (method, ct) {
                (&Method::PUT, _) => {
                    if let Some(rv) = input["metadata"]["resourceVersion"].as_str() {
                        if rv != rec.revision.to_string() {
                            return Err(ApiError::conflict(plural, group, name));
                        }
                    }
                    input
                }
                (_, "application/json-patch+json") => patch::json_patch(&current, &input)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
                (_, "application/strategic-merge-patch+json") => {
                    patch::strategic_merge_patch_for("Scale", &current, &input)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?
                }
                _ => patch::merge_patch(&current, &input),
            };
            result["spec"]["replicas"].as_i64().ok_or_else(|| {
                ApiError::invalid(
                    "Scale",
                    "autoscaling",
                    name,
                    vec![("spec.replicas".into(), "Required value".into())],
                )
            })?
        }
        _ => return Err(ApiError::method_not_allowed()),
    };
    if wanted < 0 {
        return Err(ApiError::invalid(
            "Scale",
            "autoscaling",
            name,
            vec![(
                "spec.replicas".into(),
                format!("Invalid value: {wanted}: must be greater than or equal to 0"),
            )],
        ));
    }
    let mut updated = obj.clone();
    set_at(&mut updated, &paths.spec_replicas, json!(wanted));
    let shown = crate::registry::update(
        &**store,
        t.resource,
        &obj,
        rec.revision,
        updated,
        crate::registry::Part::Main,
        opts,
    )
    .await
    .map_err(|e| e.into_api(t.resource, name))?;
    Ok((
        StatusCode::OK,
        axum::Json(scale_view(&shown, &paths, custom)),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_scale_view() {
        let d = json!({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
                       "spec": {"replicas": 3, "selector": {"matchLabels": {"b": "2", "a": "1"}}},
                       "status": {"replicas": 2}});
        let s = scale_of(&d);
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["selector"], "a=1,b=2");
        assert_eq!(s["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn custom_scale_follows_the_crd_paths() {
        let version = json!({"subresources": {"scale": {
            "specReplicasPath": ".spec.size", "statusReplicasPath": ".status.ready",
            "labelSelectorPath": ".status.selector"}}});
        let paths = ScalePaths::of_crd_version(&version).expect("paths");
        let obj = json!({"metadata": {"name": "c"}, "spec": {"size": 4},
                         "status": {"ready": 2, "selector": "app=c"}});
        let s = scale_view(&obj, &paths, true);
        assert_eq!(
            (
                s["spec"]["replicas"].clone(),
                s["status"]["replicas"].clone()
            ),
            (json!(4), json!(2))
        );
        assert_eq!(s["status"]["selector"], "app=c");
        let bare = scale_view(&json!({"metadata": {"name": "c"}}), &paths, true);
        assert_eq!(bare["spec"]["replicas"], 0);
        let mut o = json!({"metadata": {}});
        set_at(&mut o, "/spec/size", json!(5));
        assert_eq!(o["spec"]["size"], 5);
        assert!(validate_crd_scale(&version, "v").is_empty());
        let bad = json!({"subresources": {"scale": {"specReplicasPath": "spec.size", "statusReplicasPath": ".spec.x"}}});
        let causes = validate_crd_scale(&bad, "spec.versions[0].subresources.scale");
        assert_eq!(causes.len(), 2, "{causes:?}");
    }
}
