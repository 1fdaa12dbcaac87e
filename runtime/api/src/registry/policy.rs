//! RBAC objects and PriorityClasses: their validation, and the priority a new pod gets from
//! its PriorityClass (kube-apiserver's Priority admission plugin).

use super::meta::{invalid, quoted, required, Cause};
use super::strategy::{NameRule, Strategy};
use crate::objects::decode;
use crate::resources;
use crate::status::ApiError;
use cairn_store::Store;
use serde_json::{json, Value};

/// Roles and ClusterRoles.
pub struct RoleStrategy {
    pub cluster: bool,
}

fn validate_rules(rules: &Value, cluster: bool, causes: &mut Vec<Cause>) {
    for (i, rule) in rules.as_array().into_iter().flatten().enumerate() {
        let f = format!("rules[{i}]");
        let listed = |k: &str| rule[k].as_array().is_some_and(|a| !a.is_empty());
        if !listed("verbs") {
            causes.push(required(
                format!("{f}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        if listed("nonResourceURLs") {
            if !cluster {
                causes.push(invalid(
                    format!("{f}.nonResourceURLs"),
                    &rule["nonResourceURLs"].to_string(),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if listed("apiGroups") || listed("resources") {
                causes.push(invalid(
                    format!("{f}.nonResourceURLs"),
                    &rule["nonResourceURLs"].to_string(),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if !listed("apiGroups") {
            causes.push(required(
                format!("{f}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if !listed("resources") {
            causes.push(required(
                format!("{f}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

impl Strategy for RoleStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        validate_rules(&obj["rules"], self.cluster, &mut causes);
        causes
    }
}

/// RoleBindings and ClusterRoleBindings: what they grant is fixed when they are made.
pub struct BindingStrategy {
    pub cluster: bool,
}

impl Strategy for BindingStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let role_ref = &obj["roleRef"];
        if role_ref["apiGroup"] != "rbac.authorization.k8s.io" {
            causes.push((
                "roleRef.apiGroup".into(),
                format!(
                    "Unsupported value: {}: supported values: \"rbac.authorization.k8s.io\"",
                    quoted(role_ref["apiGroup"].as_str().unwrap_or(""))
                ),
            ));
        }
        let kinds: &[&str] = if self.cluster {
            &["ClusterRole"]
        } else {
            &["Role", "ClusterRole"]
        };
        let kind = role_ref["kind"].as_str().unwrap_or("");
        if !kinds.contains(&kind) {
            let supported: Vec<String> = kinds.iter().map(|k| quoted(k)).collect();
            causes.push((
                "roleRef.kind".into(),
                format!(
                    "Unsupported value: {}: supported values: {}",
                    quoted(kind),
                    supported.join(", ")
                ),
            ));
        }
        if role_ref["name"].as_str().is_none_or(str::is_empty) {
            causes.push(required("roleRef.name", ""));
        }
        for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
            let f = format!("subjects[{i}]");
            if s["name"].as_str().is_none_or(str::is_empty) {
                causes.push(required(format!("{f}.name"), ""));
            }
            match s["kind"].as_str().unwrap_or("") {
                "ServiceAccount" => {
                    if self.cluster && s["namespace"].as_str().is_none_or(str::is_empty) {
                        causes.push(required(format!("{f}.namespace"), ""));
                    }
                }
                "User" | "Group" => {
                    if s["apiGroup"] != "rbac.authorization.k8s.io" {
                        causes.push((
                            format!("{f}.apiGroup"),
                            "Unsupported value: supported values: \"rbac.authorization.k8s.io\""
                                .into(),
                        ));
                    }
                }
                other => causes.push((
                    format!("{f}.kind"),
                    format!(
                        "Unsupported value: {}: supported values: \"ServiceAccount\", \"User\", \"Group\"",
                        quoted(other)
                    ),
                )),
            }
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        if new["roleRef"] != old["roleRef"] {
            causes.push(invalid(
                "roleRef",
                &new["roleRef"].to_string(),
                "cannot change roleRef",
            ));
        }
        causes
    }
}

/// The PriorityClasses every cluster has, with the values kube-apiserver gives them.
pub const SYSTEM_PRIORITY_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// The highest priority a user-defined PriorityClass may have.
pub const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

pub struct PriorityClassStrategy;

impl Strategy for PriorityClassStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        if obj["preemptionPolicy"].is_null() {
            obj["preemptionPolicy"] = json!("PreemptLowerPriority");
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        let value = obj["value"].as_i64();
        let system = SYSTEM_PRIORITY_CLASSES.iter().find(|(n, _, _)| *n == name);
        match (system, value) {
            (_, None) => causes.push(required("value", "")),
            (Some((_, v, _)), Some(value)) if value != *v => causes.push(invalid(
                "value",
                &value.to_string(),
                &format!("the value of the system priority class {name} must be {v}"),
            )),
            (None, Some(v)) if v > HIGHEST_USER_PRIORITY => causes.push(invalid(
                "value",
                &v.to_string(),
                &format!(
                    "maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"
                ),
            )),
            _ => {}
        }
        if system.is_none() && name.starts_with("system-") {
            causes.push(invalid(
                "metadata.name",
                name,
                "priority class names with 'system-' prefix are reserved",
            ));
        }
        if let Some(p) = obj["preemptionPolicy"].as_str() {
            if !matches!(p, "PreemptLowerPriority" | "Never") {
                causes.push((
                    "preemptionPolicy".into(),
                    format!(
                        "Unsupported value: {}: supported values: \"Never\", \"PreemptLowerPriority\"",
                        quoted(p)
                    ),
                ));
            }
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        for f in ["value", "preemptionPolicy"] {
            if new[f] != old[f] {
                causes.push(invalid(f, &new[f].to_string(), "field is immutable"));
            }
        }
        causes
    }
}

/// Sets a new pod's `priority` and `preemptionPolicy` from its `priorityClassName`, or from the
/// global default class when it names none; refuses a class that does not exist.
pub async fn resolve_pod_priority(store: &dyn Store, pod: &mut Value) -> Result<(), ApiError> {
    let Some(classes) = resources::find("scheduling.k8s.io", "v1", "priorityclasses") else {
        return Ok(());
    };
    let wanted = pod["spec"]["priorityClassName"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let class = if wanted.is_empty() {
        let listed = store
            .list(&classes.key_prefix(None), None, 0, None)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        listed
            .records
            .iter()
            .filter_map(|r| decode(r).ok())
            .filter(|c| c["globalDefault"] == true)
            .min_by_key(|c| c["value"].as_i64().unwrap_or(0))
    } else {
        let found = store
            .get(&classes.key(None, &wanted))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        match found {
            Some(rec) => Some(decode(&rec)?),
            None => {
                let name = pod["metadata"]["name"].as_str().unwrap_or("");
                return Err(ApiError::forbidden(
                    "pods",
                    "",
                    name,
                    format!("pods \"{name}\" is forbidden: no PriorityClass with name {wanted} was found"),
                ));
            }
        }
    };
    match class {
        Some(c) => {
            pod["spec"]["priorityClassName"] = c["metadata"]["name"].clone();
            pod["spec"]["priority"] = json!(c["value"].as_i64().unwrap_or(0));
            pod["spec"]["preemptionPolicy"] = json!(c["preemptionPolicy"]
                .as_str()
                .unwrap_or("PreemptLowerPriority"));
        }
        None => {
            pod["spec"]["priority"] = json!(0);
            if pod["spec"]["preemptionPolicy"].is_null() {
                pod["spec"]["preemptionPolicy"] = json!("PreemptLowerPriority");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_keep_their_role() {
        let b = json!({"metadata": {"name": "b"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "x"},
                         {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "jane"}]});
        let s = BindingStrategy { cluster: false };
        assert!(s.validate(&b).is_empty());
        assert_eq!(
            BindingStrategy { cluster: true }.validate(&b)[0].0,
            "roleRef.kind"
        );
        let mut other = b.clone();
        other["roleRef"]["name"] = json!("q");
        assert_eq!(s.validate_update(&other, &b)[0].0, "roleRef");
    }

    #[test]
    fn roles_need_verbs_groups_and_resources() {
        let r = json!({"rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
                                 {"apiGroups": [""]},
                                 {"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]});
        let fields: Vec<String> = RoleStrategy { cluster: false }
            .validate(&r)
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(
            fields,
            [
                "rules[1].verbs",
                "rules[1].resources",
                "rules[2].nonResourceURLs"
            ]
        );
        assert_eq!(RoleStrategy { cluster: true }.validate(&r).len(), 2);
    }

    #[test]
    fn priority_classes() {
        let s = PriorityClassStrategy;
        let high = json!({"metadata": {"name": "high"}, "value": 2_000_000_000});
        assert_eq!(s.validate(&high)[0].0, "value");
        let system = json!({"metadata": {"name": "system-node-critical"}, "value": 2_000_001_000});
        assert!(s.validate(&system).is_empty());
        let reserved = json!({"metadata": {"name": "system-mine"}, "value": 5});
        assert_eq!(s.validate(&reserved)[0].0, "metadata.name");
    }
}
