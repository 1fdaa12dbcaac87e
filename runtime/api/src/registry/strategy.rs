//! One strategy per kind: the rules of that kind that the generic registry applies on every
//! write (kube-apiserver's `RESTCreateStrategy`/`RESTUpdateStrategy`/`RESTDeleteStrategy`).

use super::meta::{invalid, Cause};
use crate::resources::Resource;
use base64::Engine;
use serde_json::{json, Value};

/// Which names a kind accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain: most kinds.
    Subdomain,
    /// A DNS-1123 label: namespaces and services (their names become DNS labels).
    Label,
    /// Any one path segment: RBAC roles and bindings (`system:node` and the like).
    PathSegment,
}

/// A kind's rules. Every method has the behaviour most kinds want by default.
pub trait Strategy: Sync {
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Whether a new object's status is the server's to set (most kinds with a spec), not the
    /// creating client's.
    fn resets_status_on_create(&self) -> bool {
        false
    }

    /// Defaults and derived fields of a new object, after the server set its own metadata.
    fn prepare_for_create(&self, _obj: &mut Value) {}

    /// Derived fields of an update, after what the write may not change was restored.
    fn prepare_for_update(&self, _new: &mut Value, _old: &Value) {}

    /// Field errors of a new object (its metadata was checked already).
    fn validate(&self, _obj: &Value) -> Vec<Cause> {
        Vec::new()
    }

    /// Field errors of an update: the object's own rules, and what may not change.
    fn validate_update(&self, new: &Value, _old: &Value) -> Vec<Cause> {
        self.validate(new)
    }

    /// Whether deleting waits for something to run first besides finalizers: `Some(seconds)`
    /// of graceful termination (`requested` is DeleteOptions' `gracePeriodSeconds`).
    fn grace_period(&self, _obj: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Whether a delete only marks the object, for the kind's own controller to finish.
    fn waits_on_delete(&self, _obj: &Value) -> bool {
        false
    }

    /// What changes on an object when it is marked for deletion.
    fn prepare_for_delete(&self, _obj: &mut Value) {}

    /// Whether something must still run before a marked object may go.
    fn has_finalizers(&self, obj: &Value) -> bool {
        obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    }
}

/// The kinds with no rules of their own.
pub struct Generic;
impl Strategy for Generic {}

/// The strategy of the kind `r` serves.
pub fn for_resource(r: &Resource) -> &'static dyn Strategy {
    if r.custom {
        return &super::custom::CustomResourceStrategy;
    }
    match (r.group, r.kind) {
        ("", "Pod") => &super::pod::PodStrategy,
        ("", "Namespace") => &NamespaceStrategy,
        ("", "Service") => &ServiceStrategy,
        ("", "Secret") => &SecretStrategy,
        ("", "ReplicationController") => &super::workloads::ReplicationControllerStrategy,
        ("apps", "Deployment") => &super::workloads::DeploymentStrategy,
        ("apps", "ReplicaSet") => &super::workloads::AppsStrategy { replicas: true },
        ("apps", "DaemonSet") => &super::workloads::AppsStrategy { replicas: false },
        ("apps", "StatefulSet") => &super::workloads::StatefulSetStrategy,
        ("batch", "Job") => &super::workloads::JobStrategy,
        ("batch", "CronJob") => &super::workloads::CronJobStrategy,
        ("rbac.authorization.k8s.io", "Role") => &super::policy::RoleStrategy { cluster: false },
        ("rbac.authorization.k8s.io", "ClusterRole") => {
            &super::policy::RoleStrategy { cluster: true }
        }
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            &super::policy::BindingStrategy { cluster: false }
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            &super::policy::BindingStrategy { cluster: true }
        }
        ("scheduling.k8s.io", "PriorityClass") => &super::policy::PriorityClassStrategy,
        _ => &Generic,
    }
}

/// Namespaces: emptied by the namespace controller before they go.
pub struct NamespaceStrategy;

fn spec_finalizers(obj: &Value) -> bool {
    obj["spec"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

impl Strategy for NamespaceStrategy {
    fn resets_status_on_create(&self) -> bool {
        true
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["spec"]["finalizers"] = json!(["kubernetes"]);
        obj["status"] = json!({"phase": "Active"});
        // kube-apiserver labels every namespace with its own name.
        let name = obj["metadata"]["name"].clone();
        if !obj["metadata"]["labels"].is_object() {
            obj["metadata"]["labels"] = json!({});
        }
        obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
    }

    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        let name = old["metadata"]["name"].clone();
        if !new["metadata"]["labels"].is_object() {
            new["metadata"]["labels"] = json!({});
        }
        new["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
    }

    /// A namespace is emptied by the namespace controller first; once it removed its
    /// `kubernetes` finalizer, a DELETE removes the namespace.
    fn waits_on_delete(&self, obj: &Value) -> bool {
        !super::meta::is_deleting(obj) || spec_finalizers(obj)
    }

    fn prepare_for_delete(&self, obj: &mut Value) {
        obj["status"]["phase"] = json!("Terminating");
    }

    fn has_finalizers(&self, obj: &Value) -> bool {
        Generic.has_finalizers(obj) || spec_finalizers(obj)
    }
}

/// Services: their names are DNS labels; the allocator controller fills in cluster IPs.
pub struct ServiceStrategy;

impl Strategy for ServiceStrategy {
    fn resets_status_on_create(&self) -> bool {
        true
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        let spec = &mut obj["spec"];
        if !spec["type"].is_string() {
            spec["type"] = json!("ClusterIP");
        }
        if !spec["sessionAffinity"].is_string() {
            spec["sessionAffinity"] = json!("None");
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                if !p["protocol"].is_string() {
                    p["protocol"] = json!("TCP");
                }
                if p.get("targetPort").is_none_or(Value::is_null) {
                    p["targetPort"] = p["port"].clone();
                }
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let spec = &obj["spec"];
        let external = spec["type"] == "ExternalName";
        let ports = spec["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if ports.is_empty() && !external && spec["clusterIP"] != "None" {
            causes.push(super::meta::required("spec.ports", ""));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let port = p["port"].as_i64().unwrap_or(0);
            if !(1..=65535).contains(&port) {
                causes.push(invalid(
                    format!("spec.ports[{i}].port"),
                    &port.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            let name = p["name"].as_str().unwrap_or("");
            if ports.len() > 1 && name.is_empty() {
                causes.push(super::meta::required(format!("spec.ports[{i}].name"), ""));
            }
            if !name.is_empty() && !names.insert(name) {
                causes.push((
                    format!("spec.ports[{i}].name"),
                    format!("Duplicate value: {}", super::meta::quoted(name)),
                ));
            }
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        let (ip, old_ip) = (&new["spec"]["clusterIP"], &old["spec"]["clusterIP"]);
        if old_ip.is_string() && !old_ip.as_str().is_some_and(str::is_empty) && ip != old_ip {
            causes.push(invalid(
                "spec.clusterIPs[0]",
                ip.as_str().unwrap_or(""),
                "may not change once set",
            ));
        }
        causes
    }
}

/// Secrets: `stringData` is merged into `data`, `type` defaults to Opaque and is immutable,
/// and each type's required keys are checked.
pub struct SecretStrategy;

/// The keys a Secret of `type` must hold.
fn required_secret_keys(secret_type: &str) -> &'static [&'static str] {
    match secret_type {
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/basic-auth" => &[],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        _ => &[],
    }
}

impl SecretStrategy {
    fn normalise(obj: &mut Value) {
        if let Some(Value::Object(string_data)) =
            obj.as_object_mut().and_then(|o| o.remove("stringData"))
        {
            if !obj["data"].is_object() {
                obj["data"] = json!({});
            }
            for (k, v) in string_data {
                let bytes = v.as_str().unwrap_or_default().as_bytes().to_vec();
                obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
        }
        if obj["type"].as_str().is_none_or(str::is_empty) {
            obj["type"] = json!("Opaque");
        }
    }
}

impl Strategy for SecretStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        Self::normalise(obj);
    }

    fn prepare_for_update(&self, new: &mut Value, _old: &Value) {
        Self::normalise(new);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let data = obj["data"].as_object();
        let mut total = 0;
        for (k, v) in data.into_iter().flatten() {
            if !is_config_key(k) {
                causes.push(invalid(
                    format!("data[{k}]"),
                    k,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
            match v
                .as_str()
                .map(|s| base64::engine::general_purpose::STANDARD.decode(s))
            {
                Some(Ok(b)) => total += b.len(),
                _ => causes.push((
                    format!("data[{k}]"),
                    "Invalid value: must be base64-encoded bytes".into(),
                )),
            }
        }
        if total > 1024 * 1024 {
            causes.push((
                "data".into(),
                "Too long: may not be more than 1048576 bytes".into(),
            ));
        }
        let secret_type = obj["type"].as_str().unwrap_or("Opaque");
        for key in required_secret_keys(secret_type) {
            if !data.is_some_and(|d| d.contains_key(*key)) {
                causes.push(super::meta::required(format!("data[{key}]"), ""));
            }
        }
        if secret_type == "kubernetes.io/service-account-token"
            && obj["metadata"]["annotations"]["kubernetes.io/service-account.name"]
                .as_str()
                .is_none_or(str::is_empty)
        {
            causes.push(super::meta::required(
                "metadata.annotations[kubernetes.io/service-account.name]",
                "",
            ));
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        if new["type"] != old["type"] {
            causes.push(invalid(
                "type",
                new["type"].as_str().unwrap_or(""),
                "field is immutable",
            ));
        }
        if old["immutable"] == true && (new["data"] != old["data"] || new["immutable"] != true) {
            causes.push((
                "data".into(),
                "Forbidden: field is immutable when `immutable` is set".into(),
            ));
        }
        causes
    }
}

/// A ConfigMap or Secret key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`.
pub fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_merge_string_data_and_default_their_type() {
        let mut s =
            json!({"metadata": {"name": "s"}, "data": {"a": "eA=="}, "stringData": {"b": "hello"}});
        SecretStrategy.prepare_for_create(&mut s);
        assert_eq!(s["data"]["b"], "aGVsbG8=");
        assert_eq!(s["data"]["a"], "eA==");
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
        assert!(SecretStrategy.validate(&s).is_empty());
        let tls = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}});
        assert_eq!(SecretStrategy.validate(&tls)[0].0, "data[tls.key]");
        let mut changed = s.clone();
        changed["type"] = json!("kubernetes.io/tls");
        assert!(SecretStrategy
            .validate_update(&changed, &s)
            .iter()
            .any(|c| c.0 == "type"));
    }

    #[test]
    fn namespaces_wait_for_their_controller() {
        let mut ns = json!({"metadata": {"name": "team"}});
        NamespaceStrategy.prepare_for_create(&mut ns);
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "team"
        );
        assert!(NamespaceStrategy.waits_on_delete(&ns));
        ns["metadata"]["deletionTimestamp"] = json!("t");
        assert!(NamespaceStrategy.waits_on_delete(&ns));
        ns["spec"]["finalizers"] = json!([]);
        assert!(!NamespaceStrategy.waits_on_delete(&ns));
    }
}
