//! Discovery documents, derived from the resource table.

use super::resources::{group_versions, Resource, RESOURCES};
use serde_json::{json, Value};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_entry(group: &str) -> Value {
    let versions: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn api_group_list() -> Value {
    let mut groups: Vec<&str> = Vec::new();
    for (g, _) in group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups.into_iter().map(group_entry).collect::<Vec<_>>(),
    })
}

pub fn api_group(group: &str) -> Option<Value> {
    if !group_versions().iter().any(|(g, _)| *g == group) || group.is_empty() {
        return None;
    }
    let mut v = group_entry(group);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

fn resource_entries(r: &Resource) -> Vec<Value> {
    let mut out = vec![json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": VERBS,
        "shortNames": r.short_names,
        "categories": r.categories,
    })];
    for sub in r.subresources {
        let (kind, verbs): (&str, &[&str]) = match *sub {
            "status" => (r.kind, &["get", "patch", "update"]),
            "scale" => ("Scale", &["get", "patch", "update"]),
            "binding" => ("Binding", &["create"]),
            "eviction" => ("Eviction", &["create"]),
            "log" => ("Pod", &["get"]),
            "exec" => ("PodExecOptions", &["create", "get"]),
            "finalize" => (r.kind, &["update"]),
            _ => (r.kind, &["get"]),
        };
        out.push(json!({
            "name": format!("{}/{sub}", r.plural),
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": kind,
            "verbs": verbs,
        }));
    }
    out
}

pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(resource_entries)
        .collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents() {
        let core = api_resource_list("", "v1").unwrap();
        assert!(core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "pods/status"));
        let groups = api_group_list();
        assert!(groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "apps"));
        assert!(api_group("nope").is_none());
        assert!(api_resource_list("apps", "v2").is_none());
    }
}
