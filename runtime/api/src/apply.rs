//! Server-side apply field ownership (`metadata.managedFields`), as kube-apiserver tracks it
//! with structured-merge-diff, simplified.
//!
//! A field set is a set of paths; each path element is encoded as in kube's `FieldsV1`:
//! `f:<name>` for a map key, `k:{"name":"c1"}` for an item of a list keyed by its merge key
//! (from [`MergeKeyTable`]), `v:<json>` for an item of a set-like list of scalars. Scalars,
//! atomic lists and empty maps are owned as leaves; a keyed or set item is owned as a whole
//! (`.: {}` when it also has owned children). Maps are not owned themselves.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::http::StatusCode;
use serde_json::{json, Map, Value};

use super::patch::{self, ListStrategy, MergeKeyTable, MergeKeys};
use super::status::ApiError;

/// The content type of a server-side apply patch.
pub const APPLY_CONTENT_TYPE: &str = "application/apply-patch+yaml";

type Path = Vec<String>;
type FieldSet = BTreeSet<Path>;

/// The metadata fields the server owns: never part of a field set.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// The field manager of a request: its `fieldManager` query parameter, else "unknown".
pub fn manager(query: &HashMap<String, String>) -> String {
    query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .cloned()
        .unwrap_or_else(|| "unknown".to_string())
}

fn table(kind: &str, custom: bool) -> MergeKeyTable {
    if custom {
        MergeKeyTable::metadata_only()
    } else {
        MergeKeyTable::for_kind(kind)
    }
}

/// The field set of `obj`: every leaf field and keyed list item it sets; with `string_maps`,
/// also the maps of strings (labels, annotations, data, ...) themselves, as kube records the
/// maps an update creates.
fn fields_of(obj: &Value, keys: &MergeKeyTable, string_maps: bool) -> FieldSet {
    let ctx = Walk { keys, string_maps };
    let mut out = FieldSet::new();
    if let Some(map) = obj.as_object() {
        for (k, v) in map {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            let mut names = vec![k.clone()];
            let mut prefix = vec![format!("f:{k}")];
            if k == "metadata" {
                if let Some(meta) = v.as_object() {
                    for (mk, mv) in meta {
                        if SERVER_METADATA.contains(&mk.as_str()) {
                            continue;
                        }
                        names.push(mk.clone());
                        prefix.push(format!("f:{mk}"));
                        ctx.walk(mv, &mut names, &mut prefix, &mut out);
                        names.pop();
                        prefix.pop();
                    }
                }
                continue;
            }
            ctx.walk(v, &mut names, &mut prefix, &mut out);
        }
    }
    out
}

struct Walk<'a> {
    keys: &'a MergeKeyTable,
    string_maps: bool,
}

impl Walk<'_> {
    fn walk(&self, v: &Value, names: &mut Vec<String>, prefix: &mut Path, out: &mut FieldSet) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                if self.string_maps && map.values().all(Value::is_string) {
                    out.insert(prefix.clone());
                }
                for (k, child) in map {
                    names.push(k.clone());
                    prefix.push(format!("f:{k}"));
                    self.walk(child, names, prefix, out);
                    names.pop();
                    prefix.pop();
                }
            }
            Value::Array(items) => match self.keys.list_strategy(names) {
                ListStrategy::MergeByKey(key) => {
                    for item in items {
                        let Some(id) = item.get(key) else { continue };
                        prefix.push(format!("k:{}", json!({ key: id })));
                        out.insert(prefix.clone());
                        self.walk(item, names, prefix, out);
                        prefix.pop();
                    }
                }
                ListStrategy::MergeSet if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                    for item in items {
                        prefix.push(format!("v:{item}"));
                        out.insert(prefix.clone());
                        prefix.pop();
                    }
                }
                _ => {
                    out.insert(prefix.clone());
                }
            },
            _ => {
                out.insert(prefix.clone());
            }
        }
    }
}

/// Whether a list item matches a `k:` or `v:` path element.
fn item_matches(item: &Value, seg: &str) -> bool {
    if let Some(k) = seg.strip_prefix("k:") {
        match serde_json::from_str::<Map<String, Value>>(k) {
            Ok(id) => id.iter().all(|(f, v)| item.get(f) == Some(v)),
            Err(_) => false,
        }
    } else if let Some(v) = seg.strip_prefix("v:") {
        serde_json::from_str::<Value>(v).is_ok_and(|v| &v == item)
    } else {
        false
    }
}

/// The value at `path` in `obj`, if any.
fn value_at<'v>(obj: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = obj;
    for seg in path {
        cur = match seg.strip_prefix("f:") {
            Some(f) => cur.get(f)?,
            None => cur.as_array()?.iter().find(|i| item_matches(i, seg))?,
        };
    }
    Some(cur)
}

/// Removes the field or list item at `path` from `obj`, if present.
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parent {
        let next = match seg.strip_prefix("f:") {
            Some(f) => cur.get_mut(f),
            None => cur
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| item_matches(i, seg))),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last.strip_prefix("f:") {
        Some(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        None => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| !item_matches(i, last));
            }
        }
    }
}

/// A field set in kube's `FieldsV1` encoding.
fn encode_set(set: &FieldSet) -> Value {
    let mut root = Value::Object(Map::new());
    for path in set {
        let mut cur = &mut root;
        for seg in path {
            cur = cur
                .as_object_mut()
                .expect("field set nodes are maps")
                .entry(seg.clone())
                .or_insert_with(|| json!({}));
        }
    }
    for path in set {
        let mut cur = &mut root;
        for seg in path {
            cur = &mut cur[seg.as_str()];
        }
        if let Some(m) = cur.as_object_mut() {
            if !m.is_empty() && !m.contains_key(".") {
                m.insert(".".into(), json!({}));
            }
        }
    }
    root
}

/// A field set from kube's `FieldsV1` encoding.
fn decode_set(v: &Value) -> FieldSet {
    fn go(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        for (k, child) in m {
            if k == "." {
                out.insert(prefix.clone());
                continue;
            }
            prefix.push(k.clone());
            if child.as_object().is_some_and(|c| c.is_empty()) {
                out.insert(prefix.clone());
            } else {
                go(child, prefix, out);
            }
            prefix.pop();
        }
    }
    let mut out = FieldSet::new();
    go(v, &mut Vec::new(), &mut out);
    out
}

/// The `.spec.replicas` / `[name="c1"]` form kube uses for a path in messages.
fn display_path(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = seg.strip_prefix("k:") {
            let id: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = id.iter().map(|(f, v)| format!("{f}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = seg.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    set: FieldSet,
}

fn read_entries(obj: Option<&Value>) -> Vec<Entry> {
    let Some(list) = obj.and_then(|o| o["metadata"]["managedFields"].as_array()) else {
        return Vec::new();
    };
    list.iter()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            subresource: e["subresource"].as_str().map(str::to_string),
            set: decode_set(&e["fieldsV1"]),
        })
        .collect()
}

/// Drops what no longer exists in `obj` and empty entries, and writes the entries into `obj`.
fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    for e in &mut entries {
        e.set.retain(|p| value_at(obj, p).is_some());
    }
    entries.retain(|e| !e.set.is_empty());
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode_set(&e.set),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = obj["metadata"].as_object_mut().expect("metadata is a map");
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Whether `path` (a leaf, item or map of `new`) differs between `old` and `new`. Items and
/// maps count as changed only when they appear; their fields are compared on their own.
fn changed(path: &[String], old: Option<&Value>, new: &Value) -> bool {
    let Some(old) = old else { return true };
    let before = value_at(old, path);
    let after = value_at(new, path);
    if path.last().is_some_and(|s| !s.starts_with("f:")) || after.is_some_and(Value::is_object) {
        return before.is_none();
    }
    before != after
}

fn conflict_error(conflicts: &[(String, Path)], kind: &str, group: &str, name: &str) -> ApiError {
    let n = conflicts.len();
    let mut by_manager: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (m, p) in conflicts {
        by_manager.entry(m).or_default().push(display_path(p));
    }
    let detail = if n == 1 {
        format!(
            "conflict with {:?}: {}",
            conflicts[0].0,
            display_path(&conflicts[0].1)
        )
    } else {
        let mut lines = Vec::new();
        for (m, paths) in &by_manager {
            lines.push(format!("conflicts with {m:?}:"));
            lines.extend(paths.iter().map(|p| format!("- {p}")));
        }
        lines.join("\n")
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {m:?}"),
                "field": display_path(p),
            })
        })
        .collect();
    ApiError {
        code: StatusCode::CONFLICT,
        reason: "Conflict",
        message: format!(
            "Apply failed with {n} conflict{}: {detail}",
            if n == 1 { "" } else { "s" }
        ),
        details: Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
    }
}

/// What a server-side apply is about.
pub struct ApplyRequest<'a> {
    pub kind: &'a str,
    pub group: &'a str,
    pub custom: bool,
    pub api_version: &'a str,
    pub manager: &'a str,
    pub force: bool,
}

/// Server-side apply of `applied` by `a.manager` over `live` (`None`: the object is created):
/// the merged object with its `managedFields`, or 409 when another applier owns a field the
/// configuration sets to another value (unless forced).
pub fn apply(
    a: &ApplyRequest<'_>,
    live: Option<&Value>,
    applied: &Value,
) -> Result<Value, ApiError> {
    let keys = table(a.kind, a.custom);
    let mut applied = applied.clone();
    if let Some(m) = applied["metadata"].as_object_mut() {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    let name = applied["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let applied_set = fields_of(&applied, &keys, false);
    let mut entries = read_entries(live);
    let is_self = |e: &Entry| e.manager == a.manager && e.operation == "Apply";

    // Fields applied with another value than the live one.
    let differs = |p: &Path| -> bool {
        live.is_some_and(|l| {
            p.last().is_some_and(|s| s.starts_with("f:")) && value_at(l, p) != value_at(&applied, p)
        })
    };
    let mut conflicts = Vec::new();
    for e in entries
        .iter()
        .filter(|e| !is_self(e) && e.operation == "Apply")
    {
        for p in e.set.intersection(&applied_set) {
            if differs(p) {
                conflicts.push((e.manager.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !a.force {
        return Err(conflict_error(&conflicts, a.kind, a.group, &name));
    }
    // Ownership of the fields this apply changes moves to it.
    for e in entries.iter_mut().filter(|e| !is_self(e)) {
        e.set.retain(|p| !(applied_set.contains(p) && differs(p)));
    }

    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut merged = if a.custom {
        patch::merge_patch(&base, &applied)
    } else {
        patch::strategic_merge_patch(&base, &applied, &keys).map_err(|e| {
            ApiError::invalid(
                a.kind,
                a.group,
                &name,
                vec![("patch".into(), e.to_string())],
            )
        })?
    };

    // Fields this manager applied before, no longer applies, and nobody else owns, go.
    let others: FieldSet = entries
        .iter()
        .filter(|e| !is_self(e))
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    let previous: FieldSet = entries
        .iter()
        .filter(|e| is_self(e))
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    for p in previous.difference(&applied_set) {
        let kept_by_others = others.iter().any(|o| o.starts_with(p));
        let kept_by_self = applied_set.iter().any(|o| o.starts_with(p));
        if !kept_by_others && !kept_by_self {
            remove_at(&mut merged, p);
        }
    }

    let now = cairn_wire::time::now_rfc3339();
    match entries.iter_mut().find(|e| is_self(e)) {
        Some(e) => {
            e.set = applied_set;
            e.time = now;
            e.api_version = a.api_version.to_string();
        }
        None => entries.push(Entry {
            manager: a.manager.to_string(),
            operation: "Apply".into(),
            api_version: a.api_version.to_string(),
            time: now,
            subresource: None,
            set: applied_set,
        }),
    }
    write_entries(&mut merged, entries);
    Ok(merged)
}

/// Records an update (create, PUT, non-apply PATCH) by `manager` from `old` (`None`: a create)
/// to `new`: the fields it set or changed become the manager's (an `Update` entry), taken from
/// whoever owned them. `new`'s own `managedFields` are replaced by the server's.
pub fn record_update(
    kind: &str,
    custom: bool,
    api_version: &str,
    subresource: Option<&str>,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
) {
    let keys = table(kind, custom);
    let mut entries = read_entries(old);
    let changed_set: FieldSet = fields_of(new, &keys, true)
        .into_iter()
        .filter(|p| changed(p, old, new))
        .collect();
    let is_self = |e: &Entry| {
        e.manager == manager && e.operation == "Update" && e.subresource.as_deref() == subresource
    };
    for e in entries.iter_mut().filter(|e| !is_self(e)) {
        e.set.retain(|p| !changed_set.contains(p));
    }
    if !changed_set.is_empty() {
        let now = cairn_wire::time::now_rfc3339();
        match entries.iter_mut().find(|e| is_self(e)) {
            Some(e) => {
                e.set.extend(changed_set);
                e.time = now;
                e.api_version = api_version.to_string();
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: api_version.to_string(),
                time: now,
                subresource: subresource.map(str::to_string),
                set: changed_set,
            }),
        }
    }
    write_entries(new, entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(manager: &'a str, force: bool) -> ApplyRequest<'a> {
        ApplyRequest {
            kind: "Deployment",
            group: "apps",
            custom: false,
            api_version: "apps/v1",
            manager,
            force,
        }
    }

    fn deployment(replicas: i64) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "template": {"spec": {"containers": [
                    {"name": "c1", "image": "nginx", "ports": [{"containerPort": 80}]}
                ]}}
            }
        })
    }

    fn owners(obj: &Value) -> Vec<(String, String, Value)> {
        obj["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["manager"].as_str().unwrap().to_string(),
                    e["operation"].as_str().unwrap().to_string(),
                    e["fieldsV1"].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn field_set_of_a_deployment() {
        let set = fields_of(
            &deployment(2),
            &MergeKeyTable::for_kind("Deployment"),
            false,
        );
        assert_eq!(
            encode_set(&set),
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:template": {"f:spec": {"f:containers": {
                        "k:{\"name\":\"c1\"}": {
                            ".": {}, "f:name": {}, "f:image": {},
                            "f:ports": {"k:{\"containerPort\":80}": {".": {}, "f:containerPort": {}}}
                        }
                    }}}
                }
            })
        );
        assert_eq!(decode_set(&encode_set(&set)), set);
        assert_eq!(
            display_path(&set.iter().find(|p| p.len() == 6).unwrap()[..5]),
            ".spec.template.spec.containers[name=\"c1\"]"
        );
    }

    #[test]
    fn two_managers_own_their_fields() {
        let a = apply(&req("a", false), None, &deployment(2)).unwrap();
        let patch = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"note": "x"}}});
        let b = apply(&req("b", false), Some(&a), &patch).unwrap();
        assert_eq!(b["spec"]["replicas"], 2);
        assert_eq!(b["metadata"]["annotations"]["note"], "x");
        let o = owners(&b);
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].0, "a");
        assert_eq!(o[0].2["f:spec"]["f:replicas"], json!({}));
        assert_eq!(o[1].0, "b");
        assert_eq!(o[1].1, "Apply");
        assert_eq!(
            o[1].2,
            json!({"f:metadata": {"f:annotations": {"f:note": {}}}})
        );
    }

    #[test]
    fn conflicting_apply_fails_and_force_moves_ownership() {
        let a = apply(&req("a", false), None, &deployment(2)).unwrap();
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 3}});
        let err = apply(&req("other-manager", false), Some(&a), &other).unwrap_err();
        assert_eq!(err.code, StatusCode::CONFLICT);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
        );
        let details = err.details.unwrap();
        assert_eq!(
            details["causes"],
            json!([{"reason": "FieldManagerConflict", "message": "conflict with \"a\"", "field": ".spec.replicas"}])
        );
        // The same value is no conflict: both own it.
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let shared = apply(&req("other-manager", false), Some(&a), &same).unwrap();
        let o = owners(&shared);
        assert!(o
            .iter()
            .all(|(_, _, f)| f["f:spec"]["f:replicas"] == json!({})));

        let forced = apply(&req("other-manager", true), Some(&a), &other).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let o = owners(&forced);
        assert!(o[0].2["f:spec"].get("f:replicas").is_none());
        assert!(o[0].2["f:spec"]["f:template"].is_object());
        assert_eq!(o[1].0, "other-manager");
        assert_eq!(o[1].2["f:spec"]["f:replicas"], json!({}));
    }

    #[test]
    fn dropped_fields_are_removed() {
        let mut d = deployment(2);
        d["metadata"]["labels"]["tier"] = json!("front");
        d["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "c2", "image": "busybox"}));
        let a = apply(&req("a", false), None, &d).unwrap();
        assert_eq!(
            a["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let b = apply(&req("a", false), Some(&a), &deployment(2)).unwrap();
        assert!(b["metadata"]["labels"].get("tier").is_none());
        assert_eq!(b["metadata"]["labels"]["app"], "web");
        let containers = b["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["name"], "c1");
        let o = owners(&b);
        assert!(o[0].2["f:metadata"]["f:labels"].get("f:tier").is_none());
    }

    #[test]
    fn update_after_apply_takes_ownership() {
        let a = apply(&req("a", false), None, &deployment(2)).unwrap();
        let mut updated = a.clone();
        updated["spec"]["replicas"] = json!(5);
        updated["metadata"]["managedFields"] = json!([]);
        record_update(
            "Deployment",
            false,
            "apps/v1",
            None,
            Some(&a),
            &mut updated,
            "kubectl-scale",
        );
        let o = owners(&updated);
        assert_eq!(o.len(), 2);
        assert!(o[0].2["f:spec"].get("f:replicas").is_none());
        assert_eq!(o[1].0, "kubectl-scale");
        assert_eq!(o[1].1, "Update");
        assert_eq!(o[1].2, json!({"f:spec": {"f:replicas": {}}}));
        // The applier may now set it again without a conflict (it is owned by an update).
        let again = apply(&req("a", false), Some(&updated), &deployment(2)).unwrap();
        assert_eq!(again["spec"]["replicas"], 2);

        // A create records everything for its manager.
        let mut created = deployment(1);
        record_update(
            "Deployment",
            false,
            "apps/v1",
            None,
            None,
            &mut created,
            "kubectl-create",
        );
        let o = owners(&created);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].2["f:spec"]["f:replicas"], json!({}));
        assert_eq!(
            o[0].2["f:metadata"],
            json!({"f:labels": {".": {}, "f:app": {}}})
        );
        // Changing a label claims the label, not the map.
        let mut relabeled = created.clone();
        relabeled["metadata"]["labels"]["app"] = json!("api");
        record_update(
            "Deployment",
            false,
            "apps/v1",
            None,
            Some(&created),
            &mut relabeled,
            "kubectl-label",
        );
        let o = owners(&relabeled);
        // (the creator keeps the map itself: `{}` when no field under it is owned, as in kube)
        assert_eq!(o[0].2["f:metadata"], json!({"f:labels": {}}));
        assert_eq!(o[1].2, json!({"f:metadata": {"f:labels": {"f:app": {}}}}));
    }
}
