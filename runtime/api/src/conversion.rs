//! Versions that share one stored object: what a served version reads and writes is
//! converted from and to the kind's storage version at the store's boundary, as
//! kube-apiserver does.
//!
//! - Custom resources: every served version of a CRD stores in its storage version;
//!   conversion is `None` (only `apiVersion` changes; there are no conversion webhooks).
//! - autoscaling/v1 HorizontalPodAutoscaler: stored as autoscaling/v2. v1's CPU target is a
//!   v2 Resource metric; what v1 cannot express (other metrics, conditions) travels in the
//!   `autoscaling.alpha.kubernetes.io/*` annotations, as upstream's conversion keeps it.

use crate::resources::Resource;
use serde_json::{json, Map, Value};

const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

fn is_hpa_v1(r: &Resource) -> bool {
    !r.custom
        && r.group == "autoscaling"
        && r.version == "v1"
        && r.kind == "HorizontalPodAutoscaler"
}

/// `obj`, written through `r`, as the store keeps it.
pub fn to_storage(r: &Resource, obj: &Value) -> Value {
    if r.custom {
        let mut out = obj.clone();
        if let Some(v) = crate::crd::storage_api_version(r.group, r.kind) {
            out["apiVersion"] = json!(v);
        }
        return out;
    }
    if is_hpa_v1(r) {
        return hpa_v1_to_v2(obj);
    }
    obj.clone()
}

/// A stored object as `r` serves it.
pub fn to_served(r: &Resource, mut obj: Value) -> Value {
    if !obj.is_object() {
        return obj;
    }
    if r.custom {
        obj["apiVersion"] = json!(r.api_version());
        return obj;
    }
    if is_hpa_v1(r) && obj["apiVersion"] != "autoscaling/v1" {
        return hpa_v2_to_v1(&obj);
    }
    obj
}

fn annotations(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    match obj["metadata"]["annotations"].as_object_mut() {
        Some(m) => m,
        None => unreachable!("just made an object"),
    }
}

fn take_json(obj: &mut Value, key: &str) -> Option<Value> {
    let a = obj
        .get_mut("metadata")?
        .get_mut("annotations")?
        .as_object_mut()?;
    let v = a.remove(key)?;
    if a.is_empty() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("annotations");
        }
    }
    serde_json::from_str(v.as_str()?).ok()
}

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["type"] == "Utilization"
}

/// An autoscaling/v1 HorizontalPodAutoscaler as autoscaling/v2.
pub fn hpa_v1_to_v2(v1: &Value) -> Value {
    let mut v2 = v1.clone();
    v2["apiVersion"] = json!("autoscaling/v2");
    let mut metrics: Vec<Value> = take_json(&mut v2, METRICS_ANNOTATION)
        .and_then(|m| m.as_array().cloned())
        .unwrap_or_default();
    if let Some(spec) = v2.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(cpu) = spec.remove("targetCPUUtilizationPercentage") {
            metrics.retain(|m| !is_cpu_utilization(m));
            metrics.insert(
                0,
                json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}}),
            );
        }
        if !metrics.is_empty() {
            spec.insert("metrics".into(), Value::Array(metrics));
        }
    }
    if let Some(behavior) = take_json(&mut v2, BEHAVIOR_ANNOTATION) {
        v2["spec"]["behavior"] = behavior;
    }
    let current = take_json(&mut v2, CURRENT_METRICS_ANNOTATION);
    let conditions = take_json(&mut v2, CONDITIONS_ANNOTATION);
    if let Some(status) = v2.get_mut("status").and_then(Value::as_object_mut) {
        let cpu = status.remove("currentCPUUtilizationPercentage");
        let mut metrics: Vec<Value> = current
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default();
        if let Some(cpu) = cpu {
            metrics.retain(|m| !(m["type"] == "Resource" && m["resource"]["name"] == "cpu"));
            metrics.insert(
                0,
                json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}}),
            );
        }
        if !metrics.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(metrics));
        }
        if let Some(c) = conditions {
            status.insert("conditions".into(), c);
        }
    }
    v2
}

fn hpa_v2_to_v1(v2: &Value) -> Value {
    let mut v1 = v2.clone();
    v1["apiVersion"] = json!("autoscaling/v1");
    let metrics = v1["spec"]["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let behavior = v1["spec"].get("behavior").cloned();
    if let Some(spec) = v1.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("metrics");
        spec.remove("behavior");
        if let Some(cpu) = metrics.iter().find(|m| is_cpu_utilization(m)) {
            spec.insert(
                "targetCPUUtilizationPercentage".into(),
                cpu["resource"]["target"]["averageUtilization"].clone(),
            );
        }
    }
    let others: Vec<&Value> = metrics.iter().filter(|m| !is_cpu_utilization(m)).collect();
    if !others.is_empty() {
        annotations(&mut v1).insert(METRICS_ANNOTATION.into(), json!(json!(others).to_string()));
    }
    if let Some(b) = behavior {
        annotations(&mut v1).insert(BEHAVIOR_ANNOTATION.into(), json!(b.to_string()));
    }
    let current = v1["status"]["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let conditions = v1["status"].get("conditions").cloned();
    if let Some(status) = v1.get_mut("status").and_then(Value::as_object_mut) {
        status.remove("currentMetrics");
        status.remove("conditions");
        if let Some(cpu) = current
            .iter()
            .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
            .and_then(|m| m["resource"]["current"].get("averageUtilization"))
        {
            status.insert("currentCPUUtilizationPercentage".into(), cpu.clone());
        }
    }
    let other_current: Vec<&Value> = current
        .iter()
        .filter(|m| !(m["type"] == "Resource" && m["resource"]["name"] == "cpu"))
        .collect();
    if !other_current.is_empty() {
        annotations(&mut v1).insert(
            CURRENT_METRICS_ANNOTATION.into(),
            json!(json!(other_current).to_string()),
        );
    }
    if let Some(c) = conditions {
        annotations(&mut v1).insert(CONDITIONS_ANNOTATION.into(), json!(c.to_string()));
    }
    v1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_v1_and_v2_convert_both_ways() {
        let v1 = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60},
            "status": {"currentReplicas": 2, "desiredReplicas": 2, "currentCPUUtilizationPercentage": 40},
        });
        let v2 = hpa_v1_to_v2(&v1);
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}])
        );
        assert!(v2["spec"].get("targetCPUUtilizationPercentage").is_none());
        assert_eq!(
            v2["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            40
        );
        assert_eq!(hpa_v2_to_v1(&v2), v1);
        let bare = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"}});
        assert!(hpa_v1_to_v2(&bare).get("status").is_none());
        assert!(hpa_v2_to_v1(&hpa_v1_to_v2(&bare)).get("spec").is_none());
        // What v1 cannot say survives a round trip through it.
        let mut rich = v2.clone();
        rich["spec"]["metrics"].as_array_mut().unwrap().push(json!({"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}}));
        rich["spec"]["behavior"] = json!({"scaleDown": {"stabilizationWindowSeconds": 60}});
        rich["status"]["conditions"] = json!([{"type": "AbleToScale", "status": "True"}]);
        let down = hpa_v2_to_v1(&rich);
        assert!(down["metadata"]["annotations"][METRICS_ANNOTATION]
            .as_str()
            .unwrap()
            .contains("qps"));
        assert_eq!(hpa_v1_to_v2(&down), rich);
    }
}
