//! The `scale` subresource (autoscaling/v1 Scale) of Deployments, ReplicaSets and
//! StatefulSets: what `kubectl scale` and autoscalers read and write.

use super::handler::{store_error, Target};
use super::objects::decode;
use super::patch;
use super::status::ApiError;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_store::Store;
use serde_json::{json, Value};
use std::sync::Arc;

/// The Scale view of a workload object.
pub fn scale_of(obj: &Value) -> Value {
    let selector = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            let mut pairs: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            pairs.sort();
            pairs.join(",")
        })
        .unwrap_or_default();
    let md = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": md["name"], "namespace": md["namespace"], "uid": md["uid"],
            "resourceVersion": md["resourceVersion"], "creationTimestamp": md["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
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
    let obj = decode(&rec)?;
    let current = scale_of(&obj);
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
    updated["spec"]["replicas"] = json!(wanted);
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
    Ok((StatusCode::OK, axum::Json(scale_of(&shown))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_view() {
        let d = json!({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
                       "spec": {"replicas": 3, "selector": {"matchLabels": {"b": "2", "a": "1"}}},
                       "status": {"replicas": 2}});
        let s = scale_of(&d);
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["selector"], "a=1,b=2");
        assert_eq!(s["metadata"]["resourceVersion"], "7");
    }
}
