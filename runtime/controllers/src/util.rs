//! What the controllers share: reading and writing objects in the store the way the API server
//! does, owner references, selectors, pod readiness, timestamps.

use anyhow::{anyhow, Result};
use cairn_api::objects::{self, decode};
use cairn_api::registry::{self, Part, RegistryError, WriteOptions};
use cairn_api::resources::{self, Resource};
use cairn_api::selectors::LabelSelector;
use cairn_store::{Store, StoreError};
use cairn_wire::events::{object_reference, EventRecord, EventSource, EventType};
use cairn_wire::time::parse_rfc3339;
use cairn_wire::value::str_at;
use serde_json::{json, Value};

fn resource(group: &str, plural: &str) -> &'static Resource {
    resources::find(group, "v1", plural)
        .unwrap_or_else(|| panic!("{plural}.{group} is missing from the resource table"))
}

pub fn pods() -> &'static Resource {
    resource("", "pods")
}

pub fn nodes() -> &'static Resource {
    resource("", "nodes")
}

pub fn replicasets() -> &'static Resource {
    resource("apps", "replicasets")
}

pub fn deployments() -> &'static Resource {
    resource("apps", "deployments")
}

pub fn replicationcontrollers() -> &'static Resource {
    resource("", "replicationcontrollers")
}

pub fn daemonsets() -> &'static Resource {
    resource("apps", "daemonsets")
}

pub fn statefulsets() -> &'static Resource {
    resource("apps", "statefulsets")
}

pub fn jobs() -> &'static Resource {
    resource("batch", "jobs")
}

pub fn cronjobs() -> &'static Resource {
    resource("batch", "cronjobs")
}

pub fn name(obj: &Value) -> &str {
    str_at(obj, "/metadata/name")
}

pub fn namespace(obj: &Value) -> &str {
    str_at(obj, "/metadata/namespace")
}

pub fn uid(obj: &Value) -> &str {
    str_at(obj, "/metadata/uid")
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// The store key of an object of kind `r`.
pub fn key_of(r: &Resource, obj: &Value) -> String {
    let ns = namespace(obj);
    r.key((!ns.is_empty()).then_some(ns), name(obj))
}

/// `metadata.ownerReferences` (empty when absent).
pub fn owner_refs(obj: &Value) -> &[Value] {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The owner reference with `controller: true`, if any.
pub fn controller_ref(obj: &Value) -> Option<&Value> {
    owner_refs(obj)
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
}

/// Whether `obj`'s controller is `owner` (matched by uid).
pub fn is_controlled_by(obj: &Value, owner: &Value) -> bool {
    controller_ref(obj).is_some_and(|r| r["uid"].as_str() == Some(uid(owner)))
}

/// The owner reference a controller puts on what it creates or adopts.
pub fn controller_owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": name(owner),
        "uid": uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// `spec.selector` as a selector; an empty, missing or invalid one selects nothing (apps/v1
/// refuses such selectors, and adopting every object of a namespace would be worse).
pub fn spec_selector(obj: &Value) -> LabelSelector {
    match LabelSelector::from_label_selector_json(&obj["spec"]["selector"]) {
        Ok(s) if !s.is_everything() => s,
        _ => LabelSelector::nothing(),
    }
}

/// An integer field, `default` when absent.
pub fn int_at(v: &Value, pointer: &str, default: i64) -> i64 {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or(default)
}

/// A pod that counts toward a controller's replicas: not finished, not being deleted.
pub fn pod_active(pod: &Value) -> bool {
    !matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed") && !is_deleting(pod)
}

/// The condition of `type` in `status.conditions`.
pub fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"].as_str() == Some(kind))
}

pub fn pod_ready(pod: &Value) -> bool {
    condition(pod, "Ready").is_some_and(|c| c["status"].as_str() == Some("True"))
}

/// Whether a pod is available: ready for at least `min_ready_seconds` at `now`. When it is
/// ready but not yet available, also the seconds left until it will be.
pub fn pod_available(pod: &Value, min_ready_seconds: i64, now: i64) -> (bool, Option<i64>) {
    if !pod_ready(pod) {
        return (false, None);
    }
    if min_ready_seconds <= 0 {
        return (true, None);
    }
    let since = condition(pod, "Ready")
        .and_then(|c| c["lastTransitionTime"].as_str())
        .and_then(parse_rfc3339);
    match since {
        Some(t) if t + min_ready_seconds <= now => (true, None),
        Some(t) => (false, Some(t + min_ready_seconds - now)),
        None => (false, None),
    }
}

/// A registry failure as the controllers see it: store errors stay store errors (so a
/// caller can tell a conflict or a missing object), API refusals carry their message.
fn registry_error(e: RegistryError) -> anyhow::Error {
    match e {
        RegistryError::Store(s) => s.into(),
        RegistryError::Api(a) => anyhow!("{}", a.message),
    }
}

/// The field manager the controllers' writes are recorded under.
const MANAGER: &str = "cairn-controller-manager";

/// The objects under `prefix`, as the API shows them (with resourceVersion).
pub async fn list(store: &dyn Store, prefix: &str) -> Result<Vec<Value>> {
    let listed = store.list(prefix, None, 0, None).await?;
    let mut out = Vec::with_capacity(listed.records.len());
    for rec in &listed.records {
        match decode(rec) {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!(key = %rec.key, error = %e.message, "skipping corrupt object"),
        }
    }
    Ok(out)
}

pub async fn get(store: &dyn Store, key: &str) -> Result<Option<Value>> {
    match store.get(key).await? {
        Some(rec) => Ok(Some(decode(&rec).map_err(|e| anyhow!("{}", e.message))?)),
        None => Ok(None),
    }
}

fn revision_of(obj: &Value) -> Result<i64> {
    str_at(obj, "/metadata/resourceVersion")
        .parse()
        .map_err(|_| anyhow!("object {} has no resourceVersion", name(obj)))
}

/// Creates an object through the registry, as the API server would create it (a taken
/// generated name is drawn again there).
pub async fn create(store: &dyn Store, r: &Resource, obj: Value) -> Result<Value> {
    registry::create(store, r, obj, &WriteOptions::in_process(MANAGER))
        .await
        .map_err(registry_error)
}

/// Replaces `old` (as read, with its resourceVersion) by `new`, compare-and-swap, through the
/// registry; the controller owns the spec and status it writes.
pub async fn update(store: &dyn Store, r: &Resource, old: &Value, new: Value) -> Result<Value> {
    registry::update(
        store,
        r,
        old,
        revision_of(old)?,
        new,
        Part::Whole,
        &WriteOptions::in_process(MANAGER),
    )
    .await
    .map_err(registry_error)
}

/// Deletes an object as the API server does with default options (finalizers and graceful
/// termination of bound pods first). Deleting what is already gone is not an error.
pub async fn delete(store: &dyn Store, r: &Resource, obj: &Value) -> Result<()> {
    let opts = registry::DeleteOptions::default();
    match registry::delete(store, r, obj, revision_of(obj)?, &opts).await {
        Ok(_) | Err(RegistryError::Store(StoreError::NotFound)) => Ok(()),
        Err(e) => Err(registry_error(e)),
    }
}

/// A new pod from a pod template (`spec.template` of a workload), controlled by `owner`
/// (`api_version`/`kind`), with `extra_labels` added. Named `name`, or `<owner name>-<random>`
/// with `generateName` when `name` is `None`.
pub fn pod_from_template(
    owner: &Value,
    api_version: &str,
    kind: &str,
    name: Option<&str>,
    extra_labels: &[(&str, &str)],
) -> Value {
    let template = &owner["spec"]["template"];
    let mut metadata = json!({
        "namespace": namespace(owner),
        "ownerReferences": [controller_owner_ref(owner, api_version, kind)],
    });
    match name {
        Some(n) => metadata["name"] = json!(n),
        None => {
            let mut prefix = format!("{}-", self::name(owner));
            if prefix.len() > 58 {
                prefix.truncate(58);
            }
            metadata["name"] = json!(objects::generated_name(&prefix));
            metadata["generateName"] = json!(format!("{}-", self::name(owner)));
        }
    }
    for field in ["labels", "annotations", "finalizers"] {
        if let Some(v) = template["metadata"].get(field).filter(|v| !v.is_null()) {
            metadata[field] = v.clone();
        }
    }
    if !extra_labels.is_empty() && !metadata["labels"].is_object() {
        metadata["labels"] = json!({});
    }
    for (k, v) in extra_labels {
        metadata["labels"][*k] = json!(v);
    }
    let spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
    })
}

/// The store key of `obj`'s controller when it is a `kind` of `api_group` (e.g. "apps").
pub fn controller_key(obj: &Value, api_group: &str, kind: &str, r: &Resource) -> Option<String> {
    let c = controller_ref(obj)?;
    let group = str_at(c, "/apiVersion").split('/').next().unwrap_or("");
    (c["kind"] == kind && group == api_group)
        .then(|| r.key(Some(namespace(obj)), str_at(c, "/name")))
}

/// Whether an error is a store error of some kind.
pub fn is_store_error(e: &anyhow::Error, f: impl Fn(&StoreError) -> bool) -> bool {
    e.downcast_ref::<StoreError>().is_some_and(f)
}

/// Records an Event about `obj` from the controller `component`, through the registry: a
/// repeat of the same occurrence bumps the existing Event's count. Best effort: an event that
/// cannot be written is logged, never an error of the sync that made it.
pub async fn record_event(
    store: &dyn Store,
    component: &str,
    obj: &Value,
    kind: EventType,
    reason: &str,
    message: impl Into<String>,
) {
    let rec = EventRecord::new(object_reference(obj, None), kind, reason, message);
    let source = EventSource {
        component: component.to_string(),
        host: None,
    };
    if let Err(e) = write_event(store, &rec, &source).await {
        tracing::debug!(%component, %reason, error = %e, "event not recorded");
    }
}

async fn write_event(store: &dyn Store, rec: &EventRecord, source: &EventSource) -> Result<()> {
    let events = resource("", "events");
    let now = cairn_wire::time::now_rfc3339();
    let key = events.key(Some(rec.namespace()), &rec.name(source));
    match get(store, &key).await? {
        Some(existing) => {
            let mut new = existing.clone();
            for (k, v) in cairn_wire::events::repeat_patch(&existing, &now)
                .as_object()
                .into_iter()
                .flatten()
            {
                new[k] = v.clone();
            }
            update(store, events, &existing, new).await.map(|_| ())
        }
        None => create(store, events, rec.to_event(source, &now))
            .await
            .map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability() {
        let t = cairn_wire::time::rfc3339(1000);
        let pod = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": t}]}});
        assert_eq!(pod_available(&pod, 0, 1000), (true, None));
        assert_eq!(pod_available(&pod, 10, 1005), (false, Some(5)));
        assert_eq!(pod_available(&pod, 10, 1010), (true, None));
        assert_eq!(pod_available(&json!({}), 0, 0), (false, None));
    }

    #[test]
    fn owners_and_selectors() {
        let owner = json!({"metadata": {"name": "web", "uid": "u1"}});
        let r = controller_owner_ref(&owner, "apps/v1", "ReplicaSet");
        let pod = json!({"metadata": {"ownerReferences": [r]}});
        assert!(is_controlled_by(&pod, &owner));
        assert!(!is_controlled_by(&json!({}), &owner));
        let everything = json!({"spec": {"selector": {}}});
        assert!(spec_selector(&everything).is_nothing());
        let s = spec_selector(&json!({"spec": {"selector": {"matchLabels": {"a": "b"}}}}));
        assert!(s.matches_object(&json!({"metadata": {"labels": {"a": "b"}}})));
    }
}
