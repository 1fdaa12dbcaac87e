//! Pods: defaults, validation of the spec (also used for workload templates), what an update
//! may change, the QoS class, graceful deletion of bound pods.

use super::meta::{invalid, quoted, required, Cause};
use super::strategy::{NameRule, Strategy};
use crate::validation::{dns1123_label_errors, port_name_errors, subdomain_errors};
use cairn_wire::quantity::parse_quantity;
use serde_json::{json, Value};
use std::collections::HashSet;

pub struct PodStrategy;

/// kube-apiserver's default grace period for a pod that names none.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Pod spec defaults kube-apiserver applies (`SetDefaults_PodSpec` and friends).
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    for (field, value) in [
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        (
            "terminationGracePeriodSeconds",
            json!(DEFAULT_GRACE_SECONDS),
        ),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
    ] {
        if spec.get(field).is_none_or(Value::is_null) {
            spec[field] = value;
        }
    }
    for list in ["initContainers", "containers"] {
        // get_mut, not IndexMut: a missing list must stay missing (IndexMut inserts null).
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if c["imagePullPolicy"].as_str().is_none_or(str::is_empty) {
                let image = c["image"].as_str().unwrap_or("");
                let last = image.rsplit('/').next().unwrap_or(image);
                let tag = last
                    .split('@')
                    .next()
                    .unwrap_or(last)
                    .split_once(':')
                    .map(|t| t.1);
                let always = !image.contains('@') && matches!(tag, None | Some("latest"));
                c["imagePullPolicy"] = json!(if always { "Always" } else { "IfNotPresent" });
            }
            if !c["terminationMessagePath"].is_string() {
                c["terminationMessagePath"] = json!("/dev/termination-log");
            }
            if !c["terminationMessagePolicy"].is_string() {
                c["terminationMessagePolicy"] = json!("File");
            }
            for p in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if !p["protocol"].is_string() {
                    p["protocol"] = json!("TCP");
                }
            }
        }
    }
}

fn quantity_causes(field: &str, map: &Value, causes: &mut Vec<Cause>) -> [Option<i128>; 2] {
    for (k, v) in map.as_object().into_iter().flatten() {
        let q = v
            .as_str()
            .map(str::to_string)
            .or_else(|| v.as_f64().map(|n| n.to_string()));
        match q.as_deref().and_then(parse_quantity) {
            Some(n) if n >= 0 => {}
            Some(_) => causes.push(invalid(
                format!("{field}[{k}]"),
                q.as_deref().unwrap_or(""),
                "must be greater than or equal to 0",
            )),
            None => causes.push(invalid(
                format!("{field}[{k}]"),
                q.as_deref().unwrap_or(""),
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            )),
        }
    }
    ["cpu", "memory"].map(|r| map[r].as_str().and_then(parse_quantity))
}

fn validate_container(
    c: &Value,
    field: &str,
    names: &mut HashSet<String>,
    volumes: &HashSet<&str>,
    causes: &mut Vec<Cause>,
) {
    let name = c["name"].as_str().unwrap_or("");
    if name.is_empty() {
        causes.push(required(format!("{field}.name"), ""));
    } else {
        for e in dns1123_label_errors(name) {
            causes.push(invalid(format!("{field}.name"), name, &e));
        }
        if !names.insert(name.to_string()) {
            causes.push((
                format!("{field}.name"),
                format!("Duplicate value: {}", quoted(name)),
            ));
        }
    }
    if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
        causes.push(required(format!("{field}.image"), ""));
    }
    let mut port_names = HashSet::new();
    for (i, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
        let pf = format!("{field}.ports[{i}]");
        let port = p["containerPort"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(invalid(
                format!("{pf}.containerPort"),
                &port.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(host) = p["hostPort"].as_i64() {
            if !(0..=65535).contains(&host) {
                causes.push(invalid(
                    format!("{pf}.hostPort"),
                    &host.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        match p["protocol"].as_str() {
            None | Some("TCP") | Some("UDP") | Some("SCTP") => {}
            Some(other) => causes.push((
                format!("{pf}.protocol"),
                format!(
                    "Unsupported value: {}: supported values: \"SCTP\", \"TCP\", \"UDP\"",
                    quoted(other)
                ),
            )),
        }
        if let Some(n) = p["name"].as_str().filter(|n| !n.is_empty()) {
            for e in port_name_errors(n) {
                causes.push(invalid(format!("{pf}.name"), n, &e));
            }
            if !port_names.insert(n) {
                causes.push((
                    format!("{pf}.name"),
                    format!("Duplicate value: {}", quoted(n)),
                ));
            }
        }
    }
    let requests = quantity_causes(
        &format!("{field}.resources.requests"),
        &c["resources"]["requests"],
        causes,
    );
    let limits = quantity_causes(
        &format!("{field}.resources.limits"),
        &c["resources"]["limits"],
        causes,
    );
    for (i, r) in ["cpu", "memory"].iter().enumerate() {
        if let (Some(req), Some(lim)) = (requests[i], limits[i]) {
            if req > lim {
                let raw = c["resources"]["requests"][*r].as_str().unwrap_or("");
                let limit = c["resources"]["limits"][*r].as_str().unwrap_or("");
                causes.push(invalid(
                    format!("{field}.resources.requests"),
                    raw,
                    &format!("must be less than or equal to {r} limit of {limit}"),
                ));
            }
        }
    }
    for (i, e) in c["env"].as_array().into_iter().flatten().enumerate() {
        let n = e["name"].as_str().unwrap_or("");
        if n.is_empty() {
            causes.push(required(format!("{field}.env[{i}].name"), ""));
        } else if n.contains('=') || !n.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            causes.push(invalid(
                format!("{field}.env[{i}].name"),
                n,
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
    }
    for (i, m) in c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let n = m["name"].as_str().unwrap_or("");
        if !volumes.contains(n) {
            causes.push((
                format!("{field}.volumeMounts[{i}].name"),
                format!("Not found: {}", quoted(n)),
            ));
        }
        if m["mountPath"].as_str().is_none_or(str::is_empty) {
            causes.push(required(format!("{field}.volumeMounts[{i}].mountPath"), ""));
        }
    }
}

/// PodSpec validation (`ValidatePodSpec`): also what a workload's template must pass.
/// `field` is where the spec sits (`spec`, `spec.template.spec`).
pub fn validate_pod_spec(spec: &Value, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if !spec.is_object() {
        causes.push(required(field.to_string(), ""));
        return causes;
    }
    let mut volumes = HashSet::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let n = v["name"].as_str().unwrap_or("");
        let vf = format!("{field}.volumes[{i}].name");
        if n.is_empty() {
            causes.push(required(vf, ""));
            continue;
        }
        for e in dns1123_label_errors(n) {
            causes.push(invalid(&vf, n, &e));
        }
        if !volumes.insert(n) {
            causes.push((vf, format!("Duplicate value: {}", quoted(n))));
        }
    }
    let containers = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if containers.is_empty() {
        causes.push(required(format!("{field}.containers"), ""));
    }
    let mut names = HashSet::new();
    for (list, items) in [
        (
            "initContainers",
            spec["initContainers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        ),
        ("containers", containers),
    ] {
        for (i, c) in items.iter().enumerate() {
            validate_container(
                c,
                &format!("{field}.{list}[{i}]"),
                &mut names,
                &volumes,
                &mut causes,
            );
        }
    }
    if let Some(p) = spec["restartPolicy"].as_str() {
        if !matches!(p, "Always" | "OnFailure" | "Never") {
            causes.push((
                format!("{field}.restartPolicy"),
                format!(
                    "Unsupported value: {}: supported values: \"Always\", \"OnFailure\", \"Never\"",
                    quoted(p)
                ),
            ));
        }
    }
    if let Some(p) = spec["dnsPolicy"].as_str() {
        if !matches!(
            p,
            "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None"
        ) {
            causes.push((
                format!("{field}.dnsPolicy"),
                format!(
                    "Unsupported value: {}: supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\"",
                    quoted(p)
                ),
            ));
        }
    }
    if let Some(d) = spec["activeDeadlineSeconds"].as_i64() {
        if d <= 0 {
            causes.push(invalid(
                format!("{field}.activeDeadlineSeconds"),
                &d.to_string(),
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
    if let Some(h) = spec["hostname"].as_str().filter(|h| !h.is_empty()) {
        for e in dns1123_label_errors(h) {
            causes.push(invalid(format!("{field}.hostname"), h, &e));
        }
    }
    if let Some(s) = spec["subdomain"].as_str().filter(|s| !s.is_empty()) {
        for e in dns1123_label_errors(s) {
            causes.push(invalid(format!("{field}.subdomain"), s, &e));
        }
    }
    if let Some(n) = spec["serviceAccountName"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        for e in subdomain_errors(n) {
            causes.push(invalid(format!("{field}.serviceAccountName"), n, &e));
        }
    }
    causes
}

/// The pod spec with what an update may change masked out, to compare old and new.
fn immutable_view(spec: &Value) -> Value {
    let mut s = spec.clone();
    if let Some(m) = s.as_object_mut() {
        for f in [
            "activeDeadlineSeconds",
            "tolerations",
            "terminationGracePeriodSeconds",
            "ephemeralContainers",
            "schedulingGates",
            "nodeName",
        ] {
            m.remove(f);
        }
    }
    for list in ["containers", "initContainers"] {
        for c in s[list].as_array_mut().into_iter().flatten() {
            if let Some(m) = c.as_object_mut() {
                m.remove("image");
            }
        }
    }
    s
}

impl Strategy for PodStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    fn resets_status_on_create(&self) -> bool {
        true
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if !obj["spec"].is_object() {
            return;
        }
        default_pod_spec(&mut obj["spec"]);
        if !obj["status"].is_object() {
            obj["status"] = json!({});
        }
        if !obj["status"]["phase"].is_string() {
            obj["status"]["phase"] = json!("Pending");
        }
        obj["status"]["qosClass"] = json!(cairn_wire::qos::qos_class(&obj["spec"]));
    }

    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        // The QoS class is fixed when the pod is created.
        let qos = match &old["status"]["qosClass"] {
            Value::String(q) => json!(q),
            _ => json!(cairn_wire::qos::qos_class(&old["spec"])),
        };
        if !new["status"].is_object() {
            new["status"] = json!({});
        }
        new["status"]["qosClass"] = qos;
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_pod_spec(&obj["spec"], "spec")
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        let (node, old_node) = (&new["spec"]["nodeName"], &old["spec"]["nodeName"]);
        // Binding sets the node once; after that it stays.
        let node_ok = node == old_node || old_node.as_str().is_none_or(str::is_empty);
        if immutable_view(&new["spec"]) != immutable_view(&old["spec"]) || !node_ok {
            causes.push((
                "spec".into(),
                "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
            ));
        }
        causes
    }

    /// A pod bound to a node is stopped by that node's agent before it disappears.
    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> Option<i64> {
        if obj["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
            return None;
        }
        let grace = requested
            .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        (grace > 0).then_some(grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn create_defaults_and_derives_qos() {
        let mut p = pod(json!({"containers": [{"name": "c", "image": "busybox",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}));
        p["status"] = json!({"qosClass": "BestEffort"});
        PodStrategy.prepare_for_create(&mut p);
        assert_eq!(p["status"]["qosClass"], "Guaranteed");
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert!(PodStrategy.validate(&p).is_empty());
        let mut q = pod(json!({"containers": [{"name": "c", "image": "reg:5000/busybox:1.36"}]}));
        PodStrategy.prepare_for_create(&mut q);
        assert_eq!(
            q["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn spec_rules() {
        let fields = |spec: Value| -> Vec<String> {
            PodStrategy
                .validate(&pod(spec))
                .into_iter()
                .map(|c| c.0)
                .collect()
        };
        assert_eq!(fields(json!({"containers": []})), ["spec.containers"]);
        let dup = fields(
            json!({"containers": [{"name": "a", "image": "x"}, {"name": "a", "image": "x"}]}),
        );
        assert_eq!(dup, ["spec.containers[1].name"]);
        let ports = fields(json!({"containers": [{"name": "a", "image": "x",
            "ports": [{"containerPort": 70000}, {"containerPort": 80, "name": "web"}, {"containerPort": 81, "name": "web"}]}]}));
        assert_eq!(
            ports,
            [
                "spec.containers[0].ports[0].containerPort",
                "spec.containers[0].ports[2].name"
            ]
        );
        let q = fields(json!({"containers": [{"name": "a", "image": "x",
            "resources": {"requests": {"cpu": "lots", "memory": "2Gi"}, "limits": {"memory": "1Gi"}}}]}));
        assert_eq!(
            q,
            [
                "spec.containers[0].resources.requests[cpu]",
                "spec.containers[0].resources.requests"
            ]
        );
        let mounts = fields(json!({"containers": [{"name": "a", "image": "x",
            "volumeMounts": [{"name": "data", "mountPath": "/d"}]}]}));
        assert_eq!(mounts, ["spec.containers[0].volumeMounts[0].name"]);
    }

    #[test]
    fn updates_change_only_what_kube_allows() {
        let old = pod(json!({"containers": [{"name": "a", "image": "x:1"}]}));
        let mut image = old.clone();
        image["spec"]["containers"][0]["image"] = json!("x:2");
        assert!(PodStrategy.validate_update(&image, &old).is_empty());
        let mut bound = old.clone();
        bound["spec"]["nodeName"] = json!("n1");
        assert!(PodStrategy.validate_update(&bound, &old).is_empty());
        let mut moved = bound.clone();
        moved["spec"]["nodeName"] = json!("n2");
        assert_eq!(PodStrategy.validate_update(&moved, &bound)[0].0, "spec");
        let mut env = old.clone();
        env["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "1"}]);
        assert_eq!(PodStrategy.validate_update(&env, &old)[0].0, "spec");
    }

    #[test]
    fn bound_pods_terminate_gracefully() {
        let unbound = pod(json!({"containers": []}));
        assert_eq!(PodStrategy.grace_period(&unbound, None), None);
        let bound = pod(json!({"nodeName": "n", "terminationGracePeriodSeconds": 5}));
        assert_eq!(PodStrategy.grace_period(&bound, None), Some(5));
        assert_eq!(PodStrategy.grace_period(&bound, Some(0)), None);
    }
}
