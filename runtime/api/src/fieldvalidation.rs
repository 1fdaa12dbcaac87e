//! Field validation of built-in kinds against the real Kubernetes types (k8s-openapi):
//! wrong types are refused, unknown fields are refused (`fieldValidation=Strict`), reported
//! as warnings (`Warn`, the default) or dropped (`Ignore`) — and, as kube-apiserver does,
//! never stored. Custom resources pass through unchanged.

use super::status::ApiError;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Warn,
    Ignore,
}

impl Mode {
    /// The `fieldValidation` query parameter; kube-apiserver defaults to Warn.
    pub fn from_query(value: Option<&str>) -> Result<Mode, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(Mode::Warn),
            Some("Strict") => Ok(Mode::Strict),
            Some("Ignore") => Ok(Mode::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            ))),
        }
    }
}

/// The object as it will be stored (unknown fields dropped) and the warnings to send.
#[derive(Debug)]
pub struct Checked {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// Round-trips `obj` through the k8s-openapi type of `T`.
fn round_trip<T>(obj: &Value) -> Result<Value, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

fn typed_round_trip(group: &str, kind: &str, obj: &Value) -> Option<Result<Value, String>> {
    use k8s_openapi::api::{
        admissionregistration::v1 as admission, apps::v1 as apps, autoscaling::v2 as autoscaling,
        batch::v1 as batch, certificates::v1 as certificates, coordination::v1 as coordination,
        core::v1 as core, discovery::v1 as discovery, events::v1 as events,
        networking::v1 as networking, node::v1 as node, policy::v1 as policy, rbac::v1 as rbac,
        scheduling::v1 as scheduling, storage::v1 as storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apiregistration;
    Some(match (group, kind) {
        ("", "Namespace") => round_trip::<core::Namespace>(obj),
        ("", "Node") => round_trip::<core::Node>(obj),
        ("", "Pod") => round_trip::<core::Pod>(obj),
        ("", "Service") => round_trip::<core::Service>(obj),
        ("", "Endpoints") => round_trip::<core::Endpoints>(obj),
        ("", "ConfigMap") => round_trip::<core::ConfigMap>(obj),
        ("", "Secret") => round_trip::<core::Secret>(obj),
        ("", "ServiceAccount") => round_trip::<core::ServiceAccount>(obj),
        ("", "Event") => round_trip::<core::Event>(obj),
        ("events.k8s.io", "Event") => round_trip::<events::Event>(obj),
        ("coordination.k8s.io", "Lease") => round_trip::<coordination::Lease>(obj),
        ("discovery.k8s.io", "EndpointSlice") => round_trip::<discovery::EndpointSlice>(obj),
        ("apps", "Deployment") => round_trip::<apps::Deployment>(obj),
        ("apps", "ReplicaSet") => round_trip::<apps::ReplicaSet>(obj),
        ("apps", "DaemonSet") => round_trip::<apps::DaemonSet>(obj),
        ("apps", "StatefulSet") => round_trip::<apps::StatefulSet>(obj),
        ("batch", "Job") => round_trip::<batch::Job>(obj),
        ("batch", "CronJob") => round_trip::<batch::CronJob>(obj),
        ("", "PersistentVolume") => round_trip::<core::PersistentVolume>(obj),
        ("", "PersistentVolumeClaim") => round_trip::<core::PersistentVolumeClaim>(obj),
        ("", "ReplicationController") => round_trip::<core::ReplicationController>(obj),
        ("", "PodTemplate") => round_trip::<core::PodTemplate>(obj),
        ("", "LimitRange") => round_trip::<core::LimitRange>(obj),
        ("", "ResourceQuota") => round_trip::<core::ResourceQuota>(obj),
        ("rbac.authorization.k8s.io", "Role") => round_trip::<rbac::Role>(obj),
        ("rbac.authorization.k8s.io", "ClusterRole") => round_trip::<rbac::ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "RoleBinding") => round_trip::<rbac::RoleBinding>(obj),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            round_trip::<rbac::ClusterRoleBinding>(obj)
        }
        ("policy", "PodDisruptionBudget") => round_trip::<policy::PodDisruptionBudget>(obj),
        ("networking.k8s.io", "Ingress") => round_trip::<networking::Ingress>(obj),
        ("networking.k8s.io", "IngressClass") => round_trip::<networking::IngressClass>(obj),
        ("networking.k8s.io", "NetworkPolicy") => round_trip::<networking::NetworkPolicy>(obj),
        ("storage.k8s.io", "StorageClass") => round_trip::<storage::StorageClass>(obj),
        ("storage.k8s.io", "CSIDriver") => round_trip::<storage::CSIDriver>(obj),
        ("storage.k8s.io", "CSINode") => round_trip::<storage::CSINode>(obj),
        ("storage.k8s.io", "VolumeAttachment") => round_trip::<storage::VolumeAttachment>(obj),
        ("autoscaling", "HorizontalPodAutoscaler") if obj["apiVersion"] == "autoscaling/v1" => {
            round_trip::<k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler>(obj)
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            round_trip::<autoscaling::HorizontalPodAutoscaler>(obj)
        }
        ("scheduling.k8s.io", "PriorityClass") => round_trip::<scheduling::PriorityClass>(obj),
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => {
            round_trip::<admission::ValidatingWebhookConfiguration>(obj)
        }
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => {
            round_trip::<admission::MutatingWebhookConfiguration>(obj)
        }
        ("apiregistration.k8s.io", "APIService") => round_trip::<apiregistration::APIService>(obj),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            round_trip::<certificates::CertificateSigningRequest>(obj)
        }
        ("node.k8s.io", "RuntimeClass") => round_trip::<node::RuntimeClass>(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            round_trip::<apiextensions::CustomResourceDefinition>(obj)
        }
        _ => return None,
    })
}

/// Paths of fields present (and not null) in `input` but absent from `output`.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None if !v.is_null() => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// A custom resource as its CRD's structural schema keeps it: what pruning drops is unknown.
fn custom_round_trip(obj: &Value) -> Option<Result<Value, String>> {
    let (group, version) = obj["apiVersion"].as_str()?.split_once('/')?;
    let schema = crate::crd::schema_of(group, version, obj["kind"].as_str()?)?;
    let mut kept = obj.clone();
    crate::structural::prune(&schema, &mut kept);
    Some(Ok(kept))
}

pub fn check(group: &str, kind: &str, obj: &Value, mode: Mode) -> Result<Checked, ApiError> {
    let Some(result) = typed_round_trip(group, kind, obj).or_else(|| custom_round_trip(obj)) else {
        return Ok(Checked {
            object: obj.clone(),
            warnings: Vec::new(),
        });
    };
    let object = result.map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {kind}: {e}",
            obj["apiVersion"]
                .as_str()
                .and_then(|v| v.rsplit('/').next())
                .unwrap_or("v1")
        ))
    })?;
    let mut unknown = Vec::new();
    unknown_fields(obj, &object, "", &mut unknown);
    let messages: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match mode {
        Mode::Strict if !messages.is_empty() => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            messages.join(", ")
        ))),
        Mode::Warn => Ok(Checked {
            object,
            warnings: messages,
        }),
        _ => Ok(Checked {
            object,
            warnings: Vec::new(),
        }),
    }
}

/// The `Warning` header value for one warning (RFC 7234 warn-code 299, as kube sends).
pub fn warning_header(message: &str) -> String {
    format!(
        "299 - \"{}\"",
        message.replace('\\', "\\\\").replace('"', "\\\"")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    }

    #[test]
    fn known_objects_pass_unchanged() {
        let d = deployment();
        let c = check("apps", "Deployment", &d, Mode::Strict).unwrap();
        assert!(c.warnings.is_empty());
        assert_eq!(c.object["spec"]["replicas"], 2);
        assert_eq!(
            c.object["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx"
        );
    }

    #[test]
    fn unknown_fields_by_mode() {
        let mut d = deployment();
        d["spec"]["replicaz"] = json!(3);
        d["spec"]["template"]["spec"]["containers"][0]["imag"] = json!("x");
        let err = check("apps", "Deployment", &d, Mode::Strict).unwrap_err();
        assert!(
            err.message.contains("unknown field \"spec.replicaz\""),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("spec.template.spec.containers[0].imag"),
            "{}",
            err.message
        );
        let w = check("apps", "Deployment", &d, Mode::Warn).unwrap();
        assert_eq!(w.warnings.len(), 2);
        assert!(
            w.object["spec"].get("replicaz").is_none(),
            "unknown fields are never stored"
        );
        let i = check("apps", "Deployment", &d, Mode::Ignore).unwrap();
        assert!(i.warnings.is_empty());
    }

    #[test]
    fn wrong_types_are_bad_requests() {
        let mut d = deployment();
        d["spec"]["replicas"] = json!("two");
        let err = check("apps", "Deployment", &d, Mode::Ignore).unwrap_err();
        assert_eq!(err.code.as_u16(), 400);
        assert!(
            err.message.contains("cannot be handled as a Deployment"),
            "{}",
            err.message
        );
    }

    #[test]
    fn custom_resources_pass_through() {
        let o = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"x": 1}});
        let c = check("example.com", "Widget", &o, Mode::Strict).unwrap();
        assert_eq!(c.object, o);
    }

    #[test]
    fn modes_from_query() {
        assert_eq!(Mode::from_query(None).unwrap(), Mode::Warn);
        assert_eq!(Mode::from_query(Some("Strict")).unwrap(), Mode::Strict);
        assert!(Mode::from_query(Some("strict")).is_err());
        assert_eq!(
            warning_header("unknown field \"a\""),
            "299 - \"unknown field \\\"a\\\"\""
        );
    }
}
