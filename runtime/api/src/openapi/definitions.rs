//! The schemas the documents are made of: k8s-openapi's for the built-in kinds (generated at
//! build time with their merge markers, see `build/openapi.rs`) and the served
//! CustomResourceDefinitions' own `openAPIV3Schema`.

use super::schema_name;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::io::Read as _;

static BUILTIN: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/openapi_definitions.json.deflate"
));

/// Every built-in definition, name → schema in v2 form (`#/definitions/` references). Read
/// on demand: the documents built from it are cached, the map itself is not kept.
pub fn builtin() -> Map<String, Value> {
    let mut text = Vec::new();
    let read = flate2::read::DeflateDecoder::new(BUILTIN).read_to_end(&mut text);
    match read.ok().and_then(|_| serde_json::from_slice(&text).ok()) {
        Some(Value::Object(m)) => m,
        // Generated and checked by build.rs; unreadable only if the binary is damaged.
        _ => Map::new(),
    }
}

pub use crate::crd::{custom_generation, published as custom, CustomSchema};

/// The definitions of one custom version: the kind (its schema with the object's standard
/// fields, as kube-apiserver publishes CRDs) and its list.
pub fn custom_definitions(c: &CustomSchema, out: &mut Map<String, Value>) {
    let name = schema_name(&c.group, &c.version, &c.kind);
    let gvk = |kind: &str| json!([{"group": c.group, "version": c.version, "kind": kind}]);
    let mut schema = match &*c.schema {
        Value::Object(_) => (*c.schema).clone(),
        _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    };
    if schema.get("type").is_none() {
        schema["type"] = json!("object");
    }
    let props = schema
        .as_object_mut()
        .map(|o| o.entry("properties").or_insert_with(|| json!({})));
    if let Some(Value::Object(props)) = props {
        props.insert("apiVersion".into(), json!({"type": "string"}));
        props.insert("kind".into(), json!({"type": "string"}));
        props.insert(
            "metadata".into(),
            json!({"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
        );
    }
    schema["x-kubernetes-group-version-kind"] = gvk(&c.kind);
    out.insert(name.clone(), schema);
    out.insert(
        format!("{name}List"),
        json!({
            "description": format!("{}List is a list of {}", c.kind, c.kind),
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string"},
                "items": {"type": "array", "items": {"$ref": format!("#/definitions/{name}")}},
                "kind": {"type": "string"},
                "metadata": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"},
            },
            "x-kubernetes-group-version-kind": gvk(&format!("{}List", c.kind)),
        }),
    );
}

fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                if let Some(name) = r.strip_prefix("#/definitions/") {
                    out.push(name);
                }
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// `roots` and every definition they refer to, directly or not.
pub fn closure(defs: &Map<String, Value>, roots: &[String]) -> Map<String, Value> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.to_vec();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(schema) = defs.get(&name) {
            let mut found = Vec::new();
            refs(schema, &mut found);
            todo.extend(found.into_iter().map(str::to_string));
        }
    }
    seen.into_iter()
        .filter_map(|n| defs.get(&n).map(|s| (n, s.clone())))
        .collect()
}

/// A schema in OpenAPI v3 form, as kube-apiserver writes its v3 documents: references
/// point into `#/components/schemas/`, and a reference with siblings (a description) is
/// wrapped in `allOf`, since v3 ignores a `$ref`'s siblings. Keywords are told from
/// property names (JSONSchemaProps has properties called `$ref`, `default` and `enum`).
pub fn to_v3(schema: &Value) -> Value {
    let Value::Object(m) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    let mut reference = None;
    for (k, x) in m {
        let converted = match k.as_str() {
            "$ref" => {
                if let Some(r) = x.as_str() {
                    let r = r.replacen("#/definitions/", "#/components/schemas/", 1);
                    reference = Some(json!({ "$ref": r }));
                }
                continue;
            }
            "properties" | "patternProperties" => match x {
                Value::Object(props) => {
                    Value::Object(props.iter().map(|(n, p)| (n.clone(), to_v3(p))).collect())
                }
                other => other.clone(),
            },
            "items" | "additionalProperties" | "not" => match x {
                Value::Array(a) => Value::Array(a.iter().map(to_v3).collect()),
                other => to_v3(other),
            },
            "allOf" | "anyOf" | "oneOf" => match x {
                Value::Array(a) => Value::Array(a.iter().map(to_v3).collect()),
                other => other.clone(),
            },
            _ => x.clone(),
        };
        out.insert(k.clone(), converted);
    }
    match reference {
        Some(r) if out.is_empty() => r,
        Some(r) => {
            out.insert("allOf".into(), json!([r]));
            Value::Object(out)
        }
        None => Value::Object(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_definitions_carry_merge_markers_and_kinds() {
        let defs = builtin();
        assert!(defs.len() > 300, "{}", defs.len());
        let containers = &defs["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        assert_eq!(containers["x-kubernetes-list-map-keys"], json!(["name"]));
        let ports = &defs["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            json!(["containerPort", "protocol"])
        );
        assert!(containers["description"]
            .as_str()
            .unwrap()
            .contains("containers belonging to the pod"));
        assert_eq!(
            defs["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        assert_eq!(
            defs["io.k8s.api.apps.v1.DeploymentList"]["properties"]["items"]["items"]["$ref"],
            "#/definitions/io.k8s.api.apps.v1.Deployment"
        );
        let pod_required = defs["io.k8s.api.core.v1.Pod"]["required"].as_array();
        assert!(!pod_required.is_some_and(|r| r.contains(&json!("metadata"))));
        assert_eq!(
            defs["io.k8s.api.core.v1.Container"]["required"],
            json!(["name"])
        );
        assert_eq!(
            defs["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]
                ["ownerReferences"]["x-kubernetes-patch-merge-key"],
            "uid"
        );
    }

    #[test]
    fn closure_follows_references() {
        let defs = builtin();
        let c = closure(&defs, &["io.k8s.api.apps.v1.Deployment".to_string()]);
        for n in [
            "io.k8s.api.apps.v1.DeploymentSpec",
            "io.k8s.api.core.v1.PodTemplateSpec",
            "io.k8s.api.core.v1.Container",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "io.k8s.apimachinery.pkg.apis.meta.v1.Time",
        ] {
            assert!(c.contains_key(n), "{n}");
        }
        assert!(!c.contains_key("io.k8s.api.batch.v1.Job"));
    }

    #[test]
    fn v3_form_wraps_references_with_siblings() {
        let v = to_v3(&json!({
            "properties": {
                "a": {"$ref": "#/definitions/X", "description": "d"},
                "b": {"$ref": "#/definitions/Y"},
                "c": {"type": "array", "items": {"$ref": "#/definitions/Z"}},
            "$ref": {"type": "string"},
            }
        }));
        assert_eq!(v["properties"]["$ref"], json!({"type": "string"}));
        assert_eq!(
            v["properties"]["a"],
            json!({"allOf": [{"$ref": "#/components/schemas/X"}], "description": "d"})
        );
        assert_eq!(
            v["properties"]["b"],
            json!({"$ref": "#/components/schemas/Y"})
        );
        assert_eq!(
            v["properties"]["c"]["items"],
            json!({"$ref": "#/components/schemas/Z"})
        );
    }
}
