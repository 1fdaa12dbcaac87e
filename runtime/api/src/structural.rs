//! Custom resources against their CRD's structural schema, as kube-apiserver's
//! apiextensions server treats them on every write: unknown fields pruned, defaults
//! applied, then the value validated (types, required, enum, pattern, bounds, formats,
//! list types), each failure a cause naming the field.

use crate::registry::meta::Cause;
use serde_json::{Map, Value};

/// The fields every object has besides what its schema describes.
const OBJECT_ROOT: &[&str] = &["apiVersion", "kind", "metadata"];

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Drops what `schema` does not describe (kube-apiserver's pruning): fields of objects
/// with `properties` that are not among them, unless `x-kubernetes-preserve-unknown-fields`.
pub fn prune(schema: &Value, obj: &mut Value) {
    prune_at(schema, obj, true);
}

fn prune_at(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if let Some(props) = props {
                if !preserves_unknown(schema) && additional.is_none() {
                    map.retain(|k, _| {
                        props.contains_key(k) || (root && OBJECT_ROOT.contains(&k.as_str()))
                    });
                }
                for (k, v) in map.iter_mut() {
                    if let Some(s) = props.get(k) {
                        if !(root && k == "metadata") {
                            prune_at(s, v, false);
                        }
                    }
                }
            } else if let Some(additional) = additional {
                for v in map.values_mut() {
                    prune_at(additional, v, false);
                }
            } else if !preserves_unknown(schema)
                && schema["x-kubernetes-embedded-resource"].as_bool() != Some(true)
                && schema["type"].as_str() == Some("object")
            {
                // An object schema that describes no fields keeps none (nor at the root).
                map.retain(|k, _| root && OBJECT_ROOT.contains(&k.as_str()));
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for v in items {
                prune_at(&schema["items"], v, false);
            }
        }
        _ => {}
    }
}

/// Fills in the `default` of every absent property whose parent object is present
/// (kube-apiserver's structural defaulting), then defaults inside what is there.
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    if !map.contains_key(k) {
                        if let Some(d) = s.get("default") {
                            map.insert(k.clone(), d.clone());
                        }
                    }
                    if let Some(v) = map.get_mut(k) {
                        apply_defaults(s, v);
                    }
                }
            } else if let Some(additional) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for v in map.values_mut() {
                    apply_defaults(additional, v);
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for v in items {
                apply_defaults(&schema["items"], v);
            }
        }
        _ => {}
    }
}

/// Every way `obj` breaks `schema`, as kube-apiserver's causes.
pub fn validate(schema: &Value, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_at(schema, obj, "", true, &mut causes);
    causes
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn invalid(path: &str, value: &Value, detail: String) -> Cause {
    (
        path.to_string(),
        format!("Invalid value: {}: {detail}", shown(value)),
    )
}

fn at(path: &str) -> &str {
    if path.is_empty() {
        "<root>"
    } else {
        path
    }
}

fn type_matches(want: &str, v: &Value) -> bool {
    match (want, v) {
        ("integer", Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        ("number", Value::Number(_)) => true,
        ("string", Value::String(_)) => true,
        ("boolean", Value::Bool(_)) => true,
        ("array", Value::Array(_)) => true,
        ("object", Value::Object(_)) => true,
        _ => false,
    }
}

fn check_format(format: &str, s: &str) -> bool {
    match format {
        "int32" => s.parse::<i32>().is_ok(),
        "int64" => s.parse::<i64>().is_ok(),
        "date-time" | "datetime" => cairn_wire::time::parse_rfc3339(s).is_some(),
        "date" => {
            let p: Vec<&str> = s.split('-').collect();
            p.len() == 3
                && p[0].len() == 4
                && p[1].len() == 2
                && p[2].len() == 2
                && p.iter().all(|x| x.bytes().all(|b| b.is_ascii_digit()))
        }
        "uuid" => {
            let groups: Vec<&str> = s.split('-').collect();
            groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
                && groups
                    .iter()
                    .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
        }
        "byte" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok()
        }),
        "hostname" => crate::validation::subdomain_errors(s).is_empty(),
        // Formats kube-apiserver does not check either, or does not know.
        _ => true,
    }
}

fn validate_at(schema: &Value, v: &Value, path: &str, root: bool, causes: &mut Vec<Cause>) {
    if !schema.is_object() {
        return;
    }
    let name = at(path);
    if v.is_null() {
        if schema["nullable"].as_bool() != Some(true) && !schema["type"].is_null() {
            causes.push(invalid(
                path,
                v,
                format!(
                    "{name} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if int_or_string {
        if !matches!(v, Value::String(_)) && !type_matches("integer", v) {
            causes.push(invalid(
                path,
                v,
                format!(
                    "{name} in body must be of type integer-or-string: {:?}",
                    type_name(v)
                ),
            ));
            return;
        }
    } else if let Some(want) = schema["type"].as_str() {
        if !type_matches(want, v) {
            causes.push(invalid(
                path,
                v,
                format!("{name} in body must be of type {want}: {:?}", type_name(v)),
            ));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(shown).collect();
            causes.push((
                path.to_string(),
                format!(
                    "Unsupported value: {}: supported values: {}",
                    shown(v),
                    list.join(", ")
                ),
            ));
        }
    }
    match v {
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64().filter(|m| chars > *m) {
                causes.push((
                    path.to_string(),
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = schema["minLength"].as_u64().filter(|m| chars < *m) {
                causes.push(invalid(
                    path,
                    v,
                    format!("{name} in body should be at least {min} chars long"),
                ));
            }
            if let Some(p) = schema["pattern"].as_str() {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(s) => causes.push(invalid(
                        path,
                        v,
                        format!("{name} in body should match '{p}'"),
                    )),
                    _ => {}
                }
            }
            if let Some(f) = schema["format"].as_str() {
                if !check_format(f, s) {
                    causes.push(invalid(
                        path,
                        v,
                        format!("{name} in body must be of type {f}: {s:?}"),
                    ));
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            let exclusive_max = schema["exclusiveMaximum"].as_bool() == Some(true);
            if let Some(max) = schema["maximum"].as_f64() {
                if x > max || (exclusive_max && x == max) {
                    let how = if exclusive_max {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    causes.push(invalid(
                        path,
                        v,
                        format!("{name} in body should be {how} {max}"),
                    ));
                }
            }
            let exclusive_min = schema["exclusiveMinimum"].as_bool() == Some(true);
            if let Some(min) = schema["minimum"].as_f64() {
                if x < min || (exclusive_min && x == min) {
                    let how = if exclusive_min {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    causes.push(invalid(
                        path,
                        v,
                        format!("{name} in body should be {how} {min}"),
                    ));
                }
            }
            if let Some(m) = schema["multipleOf"].as_f64().filter(|m| *m > 0.0) {
                if (x / m).fract() != 0.0 {
                    causes.push(invalid(
                        path,
                        v,
                        format!("{name} in body should be a multiple of {m}"),
                    ));
                }
            }
            if schema["format"].as_str() == Some("int32")
                && i32::try_from(n.as_i64().unwrap_or(i64::MAX)).is_err()
            {
                causes.push(invalid(
                    path,
                    v,
                    format!("{name} in body must be of type int32"),
                ));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = schema["maxItems"].as_u64().filter(|m| len > *m) {
                causes.push((
                    path.to_string(),
                    format!("Too many: {len}: must have at most {max} items"),
                ));
            }
            if let Some(min) = schema["minItems"].as_u64().filter(|m| len < *m) {
                causes.push(invalid(
                    path,
                    v,
                    format!("{name} in body should have at least {min} items"),
                ));
            }
            let list_type = schema["x-kubernetes-list-type"].as_str();
            if schema["uniqueItems"].as_bool() == Some(true) || list_type == Some("set") {
                for (i, x) in items.iter().enumerate() {
                    if items[..i].contains(x) {
                        causes.push((
                            format!("{path}[{i}]"),
                            format!("Duplicate value: {}", shown(x)),
                        ));
                    }
                }
            }
            if list_type == Some("map") {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let key_of = |x: &Value| keys.iter().map(|k| x[*k].clone()).collect::<Vec<_>>();
                for (i, x) in items.iter().enumerate() {
                    if items[..i].iter().any(|y| key_of(y) == key_of(x)) {
                        let shown_key: Map<String, Value> = keys
                            .iter()
                            .map(|k| (k.to_string(), x[*k].clone()))
                            .collect();
                        causes.push((
                            format!("{path}[{i}]"),
                            format!("Duplicate value: {}", Value::Object(shown_key)),
                        ));
                    }
                }
            }
            if schema["items"].is_object() {
                for (i, x) in items.iter().enumerate() {
                    validate_at(&schema["items"], x, &format!("{path}[{i}]"), false, causes);
                }
            }
        }
        Value::Object(map) => {
            for req in schema["required"].as_array().into_iter().flatten() {
                if let Some(r) = req.as_str() {
                    if !map.contains_key(r) {
                        causes.push((join(path, r), "Required value".to_string()));
                    }
                }
            }
            let count = map.len() as u64;
            if let Some(max) = schema["maxProperties"].as_u64().filter(|m| count > *m) {
                causes.push((
                    path.to_string(),
                    format!("Too many: {count}: must have at most {max} items"),
                ));
            }
            if let Some(min) = schema["minProperties"].as_u64().filter(|m| count < *m) {
                causes.push(invalid(
                    path,
                    v,
                    format!("{name} in body should have at least {min} properties"),
                ));
            }
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, x) in map {
                if root && k == "metadata" {
                    continue; // ObjectMeta is the registry's to check
                }
                let field = join(path, k);
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    validate_at(s, x, &field, false, causes);
                } else if let Some(a) = additional {
                    validate_at(a, x, &field, false, causes);
                }
            }
        }
        _ => {}
    }
    for s in schema["allOf"].as_array().into_iter().flatten() {
        validate_at(s, v, path, root, causes);
    }
    if let Some(any) = schema["anyOf"].as_array() {
        let ok = any.iter().any(|s| {
            let mut c = Vec::new();
            validate_at(s, v, path, root, &mut c);
            c.is_empty()
        });
        if !ok {
            causes.push(invalid(
                path,
                v,
                format!("{name} in body must match at least one schema in anyOf"),
            ));
        }
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let matching = one
            .iter()
            .filter(|s| {
                let mut c = Vec::new();
                validate_at(s, v, path, root, &mut c);
                c.is_empty()
            })
            .count();
        if matching != 1 {
            causes.push(invalid(
                path,
                v,
                format!("{name} in body must match exactly one schema in oneOf"),
            ));
        }
    }
    if schema["not"].is_object() {
        let mut c = Vec::new();
        validate_at(&schema["not"], v, path, root, &mut c);
        if c.is_empty() {
            causes.push(invalid(
                path,
                v,
                format!("{name} in body must not validate the schema (not)"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 2, "maxLength": 8, "pattern": "^[a-z]+$"},
                        "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
                        "color": {"type": "string", "enum": ["red", "blue"]},
                        "when": {"type": "string", "format": "date-time"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "maxItems": 2, "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "inner": {"type": "object", "default": {}, "properties": {"mode": {"type": "string", "default": "fast"}}},
                    },
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            },
        })
    }

    #[test]
    fn prunes_what_the_schema_does_not_describe() {
        let mut obj = json!({
            "apiVersion": "example.com/v1", "kind": "W", "metadata": {"name": "w", "labels": {"a": "b"}},
            "spec": {"name": "ab", "junk": 1, "labels": {"x": "y"}, "free": {"any": {"thing": 1}}},
            "extra": true,
        });
        prune(&schema(), &mut obj);
        assert_eq!(
            obj,
            json!({
                "apiVersion": "example.com/v1", "kind": "W", "metadata": {"name": "w", "labels": {"a": "b"}},
                "spec": {"name": "ab", "labels": {"x": "y"}, "free": {"any": {"thing": 1}}},
            })
        );
    }

    #[test]
    fn defaults_fill_absent_fields_below_present_parents() {
        let mut obj = json!({"spec": {"name": "ab"}});
        apply_defaults(&schema(), &mut obj);
        assert_eq!(obj["spec"]["size"], 3);
        assert_eq!(obj["spec"]["inner"], json!({"mode": "fast"}));
        assert!(obj.get("status").is_none());
        let mut obj = json!({"spec": {"name": "ab", "size": 7}});
        apply_defaults(&schema(), &mut obj);
        assert_eq!(obj["spec"]["size"], 7);
    }

    #[test]
    fn validates_types_bounds_formats_and_lists() {
        let ok = json!({"spec": {"name": "abc", "size": 5, "color": "red", "when": "2024-01-02T03:04:05Z", "port": "http", "tags": ["a"]}});
        assert_eq!(validate(&schema(), &ok), Vec::<Cause>::new());
        let bad = json!({"spec": {"size": "big"}});
        let causes = validate(&schema(), &bad);
        assert!(
            causes.contains(&("spec.name".into(), "Required value".into())),
            "{causes:?}"
        );
        assert!(
            causes
                .iter()
                .any(|(f, m)| f == "spec.size" && m.contains("must be of type integer")),
            "{causes:?}"
        );
        let bad = json!({"spec": {"name": "Ab1", "size": 11, "color": "pink", "when": "yesterday", "port": true, "tags": ["a", "a", "b"]}});
        let causes = validate(&schema(), &bad);
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        for f in [
            "spec.name",
            "spec.size",
            "spec.color",
            "spec.when",
            "spec.port",
            "spec.tags",
            "spec.tags[1]",
        ] {
            assert!(fields.contains(&f), "{f}: {causes:?}");
        }
        assert!(causes
            .iter()
            .any(|(_, m)| m.contains("should match '^[a-z]+$'")));
        assert!(causes
            .iter()
            .any(|(_, m)| m.contains("should be less than or equal to 10")));
        assert!(causes
            .iter()
            .any(|(_, m)| m.starts_with("Unsupported value: \"pink\"")));
        let causes = validate(&schema(), &json!({"spec": {"name": "a"}}));
        assert!(causes[0].1.contains("at least 2 chars long"), "{causes:?}");
        let causes = validate(&schema(), &json!({"spec": {"name": "abcdefghij"}}));
        assert!(causes[0].1.contains("Too long"), "{causes:?}");
    }

    #[test]
    fn list_maps_refuse_duplicate_keys() {
        let s = json!({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
            "items": {"type": "object", "properties": {"name": {"type": "string"}, "v": {"type": "integer"}}}});
        let causes = validate(&s, &json!([{"name": "a", "v": 1}, {"name": "a", "v": 2}]));
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert!(causes[0].1.starts_with("Duplicate value"));
    }
}
