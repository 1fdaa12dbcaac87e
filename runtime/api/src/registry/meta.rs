//! What the registry does with every kind's `metadata`: the fields the server owns, generation,
//! and ObjectMeta validation as kube-apiserver's `ValidateObjectMeta` does it.

use super::strategy::{for_resource, NameRule};
use crate::objects::{decode, new_uid};
use crate::resources::{self, Resource};
use crate::status::ApiError;
use crate::validation::{
    dns1123_label_errors, label_key_errors, label_value_errors, path_segment_errors,
    subdomain_errors,
};
use cairn_store::Store;
use serde_json::{json, Value};

/// A field error: the field path and kube-apiserver's message for it.
pub type Cause = (String, String);

/// The largest total size of an object's annotations (keys and values), as kube-apiserver's.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

pub fn uid(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or("")
}

pub fn is_deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// A Go `%q`-like rendering of a value in a message.
pub fn quoted(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// `<field>: Invalid value: "<value>": <detail>` as a cause.
pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Cause {
    (
        field.into(),
        format!("Invalid value: {}: {detail}", quoted(value)),
    )
}

pub fn required(field: impl Into<String>, detail: &str) -> Cause {
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    (field.into(), format!("Required value{detail}"))
}

/// Fields the server owns on a new object.
pub fn prepare_for_create(obj: &mut Value) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let m = &mut obj["metadata"];
    m["uid"] = json!(new_uid());
    m["creationTimestamp"] = json!(cairn_wire::time::now_rfc3339());
    if let Some(map) = m.as_object_mut() {
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "generation",
        ] {
            map.remove(f);
        }
    }
    if obj.get("spec").is_some() {
        obj["metadata"]["generation"] = json!(1);
    }
}

/// Keeps what no update may change, and bumps `generation` when the spec changed.
pub fn prepare_for_update(new: &mut Value, old: &Value) {
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old["metadata"].get(f) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
    if new.get("spec").is_some() {
        let changed = new.get("spec") != old.get("spec");
        new["metadata"]["generation"] = json!(if changed {
            generation + 1
        } else {
            generation.max(1)
        });
    } else if let Some(m) = new["metadata"].as_object_mut() {
        if generation > 0 {
            m.insert("generation".into(), json!(generation));
        }
    }
}

fn name_errors(rule: NameRule, name: &str) -> Vec<String> {
    match rule {
        NameRule::Subdomain => subdomain_errors(name),
        NameRule::Label => dns1123_label_errors(name),
        NameRule::PathSegment => path_segment_errors(name),
    }
}

/// A map of strings at `field` (labels, annotations), with its problems as causes.
fn string_map<'a>(v: &'a Value, field: &str, causes: &mut Vec<Cause>) -> Vec<(&'a str, &'a str)> {
    match v {
        Value::Null => Vec::new(),
        Value::Object(map) => map
            .iter()
            .filter_map(|(k, v)| match v.as_str() {
                Some(s) => Some((k.as_str(), s)),
                None => {
                    causes.push((
                        field.to_string(),
                        "Invalid value: values must be strings".to_string(),
                    ));
                    None
                }
            })
            .collect(),
        _ => {
            causes.push((
                field.to_string(),
                "Invalid value: must be a map of strings".to_string(),
            ));
            Vec::new()
        }
    }
}

/// ObjectMeta validation of `obj` as an object of `r` (with `old` on update).
pub fn validate(r: &Resource, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let m = &obj["metadata"];
    let name = name(obj);
    if name.is_empty() {
        causes.push(required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for e in name_errors(for_resource(r).name_rule(), name) {
            causes.push(invalid("metadata.name", name, &e));
        }
    }
    for (k, v) in string_map(&m["labels"], "metadata.labels", &mut causes) {
        for e in label_key_errors(k) {
            causes.push(invalid("metadata.labels", k, &e));
        }
        for e in label_value_errors(v) {
            causes.push(invalid("metadata.labels", v, &e));
        }
    }
    let mut total = 0;
    for (k, v) in string_map(&m["annotations"], "metadata.annotations", &mut causes) {
        for e in label_key_errors(&k.to_ascii_lowercase()) {
            causes.push(invalid("metadata.annotations", k, &e));
        }
        total += k.len() + v.len();
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        causes.push((
            "metadata.annotations".into(),
            format!("Too long: may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
        ));
    }
    validate_finalizers(m, old, &mut causes);
    validate_owner_references(m, &mut causes);
    if let Some(old) = old {
        let (ns, old_ns) = (
            m["namespace"].as_str().unwrap_or(""),
            old["metadata"]["namespace"].as_str().unwrap_or(""),
        );
        if ns != old_ns {
            causes.push(invalid("metadata.namespace", ns, "field is immutable"));
        }
    }
    causes
}

fn validate_finalizers(m: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let finalizers = match &m["finalizers"] {
        Value::Null => return,
        Value::Array(a) => a,
        _ => {
            causes.push((
                "metadata.finalizers".into(),
                "Invalid value: must be a list of strings".into(),
            ));
            return;
        }
    };
    let mut seen = std::collections::HashSet::new();
    for (i, f) in finalizers.iter().enumerate() {
        let field = format!("metadata.finalizers[{i}]");
        let Some(f) = f.as_str() else {
            causes.push((field, "Invalid value: must be a string".into()));
            continue;
        };
        for e in label_key_errors(f) {
            causes.push(invalid(&field, f, &e));
        }
        if !seen.insert(f) {
            causes.push((field, format!("Duplicate value: {}", quoted(f))));
        }
    }
    // An object being deleted may lose finalizers, never gain one.
    if let Some(old) = old.filter(|o| is_deleting(o)) {
        let before: Vec<&Value> = old["metadata"]["finalizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        if finalizers.iter().any(|f| !before.contains(&f)) {
            causes.push((
                "metadata.finalizers".into(),
                "Forbidden: no new finalizers can be added if the object is being deleted".into(),
            ));
        }
    }
}

fn validate_owner_references(m: &Value, causes: &mut Vec<Cause>) {
    let refs = match &m["ownerReferences"] {
        Value::Null => return,
        Value::Array(a) => a,
        _ => {
            causes.push((
                "metadata.ownerReferences".into(),
                "Invalid value: must be a list".into(),
            ));
            return;
        }
    };
    let mut controllers = 0;
    for r in refs {
        for (field, what) in [
            ("apiVersion", "version"),
            ("kind", "kind"),
            ("name", "name"),
            ("uid", "uid"),
        ] {
            if r[field].as_str().is_none_or(str::is_empty) {
                causes.push(invalid(
                    format!("metadata.ownerReferences.{field}"),
                    "",
                    &format!("{what} must not be empty"),
                ));
            }
        }
        if r["controller"].as_bool() == Some(true) {
            controllers += 1;
        }
    }
    if controllers > 1 {
        causes.push((
            "metadata.ownerReferences".into(),
            "Invalid value: Only one reference can have Controller set to true".into(),
        ));
    }
}

/// Refuses a new object in a namespace that does not exist or is being deleted.
pub async fn check_namespace_open(
    store: &dyn Store,
    r: &Resource,
    obj: &Value,
) -> Result<(), ApiError> {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    let key = resources::find("", "v1", "namespaces")
        .map(|n| n.key(None, ns))
        .unwrap_or_default();
    let found = store
        .get(&key)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let namespace = match found {
        Some(rec) => decode(&rec)?,
        None => return Err(ApiError::not_found("namespaces", "", ns)),
    };
    if is_deleting(&namespace) || namespace["status"]["phase"] == "Terminating" {
        let name = name(obj);
        return Err(ApiError::forbidden(
            r.plural,
            r.group,
            name,
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                crate::status::qualified(r.plural, r.group)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configmaps() -> &'static Resource {
        resources::find("", "v1", "configmaps").expect("configmaps")
    }

    #[test]
    fn metadata_rules() {
        let ok = json!({"metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "web"},
            "annotations": {"example.com/x": "anything at all"}}});
        assert!(validate(configmaps(), &ok, None).is_empty());
        let bad = json!({"metadata": {"name": "A_b", "labels": {"app": "has space"},
            "finalizers": ["a/b/c", "ok", "ok"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "1", "controller": true},
                                {"apiVersion": "v1", "kind": "X", "name": "y", "uid": "", "controller": true}]}});
        let fields: Vec<String> = validate(configmaps(), &bad, None)
            .into_iter()
            .map(|c| c.0)
            .collect();
        for f in [
            "metadata.name",
            "metadata.labels",
            "metadata.finalizers[0]",
            "metadata.finalizers[2]",
            "metadata.ownerReferences.uid",
            "metadata.ownerReferences",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
        }
        let big = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT);
        let huge = json!({"metadata": {"name": "a", "annotations": {"a": big}}});
        assert_eq!(
            validate(configmaps(), &huge, None)[0].0,
            "metadata.annotations"
        );
    }

    #[test]
    fn deleting_objects_gain_no_finalizers() {
        let old = json!({"metadata": {"name": "a", "deletionTimestamp": "x", "finalizers": ["a"]}});
        let fewer = json!({"metadata": {"name": "a"}});
        assert!(validate(configmaps(), &fewer, Some(&old)).is_empty());
        let more = json!({"metadata": {"name": "a", "finalizers": ["a", "b"]}});
        assert_eq!(validate(configmaps(), &more, Some(&old)).len(), 1);
    }

    #[test]
    fn generation_follows_the_spec() {
        let mut new = json!({"spec": {"replicas": 1}});
        prepare_for_create(&mut new);
        assert_eq!(new["metadata"]["generation"], 1);
        assert_eq!(new["metadata"]["uid"].as_str().map(str::len), Some(36));
        let old = new.clone();
        let mut same = json!({"metadata": {"uid": "forged"}, "spec": {"replicas": 1}});
        prepare_for_update(&mut same, &old);
        assert_eq!(same["metadata"]["generation"], 1);
        assert_eq!(same["metadata"]["uid"], old["metadata"]["uid"]);
        let mut changed = json!({"spec": {"replicas": 2}});
        prepare_for_update(&mut changed, &old);
        assert_eq!(changed["metadata"]["generation"], 2);
    }
}
