//! A pod's quality-of-service class, as Kubernetes' `ComputePodQOS` derives it. The API server
//! stores it in `status.qosClass` when the pod is created; the agent reads it from there and
//! computes it only for a pod that has none.

use crate::quantity::parse_quantity;
use serde_json::Value;

/// `Guaranteed`, `Burstable` or `BestEffort` for a pod spec (JSON).
pub fn qos_class(spec: &Value) -> &'static str {
    let containers = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| spec[*f].as_array())
        .flatten();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        // Only cpu and memory count, and only non-zero quantities.
        let amounts = |field: &str| -> [Option<i128>; 2] {
            ["cpu", "memory"].map(|r| {
                c["resources"][field][r]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| c["resources"][field][r].as_i64().map(|n| n.to_string()))
                    .and_then(|q| parse_quantity(&q))
                    .filter(|q| *q > 0)
            })
        };
        let (requests, limits) = (amounts("requests"), amounts("limits"));
        if requests.iter().chain(limits.iter()).any(Option::is_some) {
            any = true;
        }
        // Guaranteed: every container limits both, and requests (where given) equal limits.
        for (request, limit) in requests.iter().zip(limits.iter()) {
            match (request, limit) {
                (Some(r), Some(l)) if r == l => {}
                (None, Some(_)) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(resources: Value) -> Value {
        json!({"containers": [{"name": "c", "resources": resources}]})
    }

    #[test]
    fn classes() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "c"}]})),
            "BestEffort"
        );
        assert_eq!(
            qos_class(&one(json!({"requests": {"cpu": "0"}}))),
            "BestEffort"
        );
        assert_eq!(
            qos_class(&one(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&one(json!({"requests": {"cpu": "1000m", "memory": "1Gi"},
                                  "limits": {"cpu": "1", "memory": "1024Mi"}}))),
            "Guaranteed",
            "quantities compare by value"
        );
        assert_eq!(
            qos_class(&one(json!({"limits": {"cpu": "1"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&one(json!({"requests": {"cpu": "1"}}))),
            "Burstable"
        );
        let mixed = json!({"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
            {"name": "b"}]});
        assert_eq!(qos_class(&mixed), "Burstable");
        let init = json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}]});
        assert_eq!(qos_class(&init), "Burstable");
    }
}
