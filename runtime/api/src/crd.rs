//! CustomResourceDefinitions: each served version of a CRD becomes an entry of the resource
//! registry (see `resources::set_custom`), so discovery, routing, storage, tables and the
//! generic handler serve custom objects like built-in ones.

use super::objects::{self, decode};
use super::resources::{self, intern, intern_columns, intern_list, Resource};
use super::status::ApiError;
use cairn_store::{Store, StoreError};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// One served version of a custom resource, with the schema its CRD gives
/// (`openAPIV3Schema`): what its objects are pruned, defaulted and validated by, and what
/// the OpenAPI documents publish.
#[derive(Clone, Debug)]
pub struct CustomSchema {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub schema: Arc<Value>,
    /// Where the version's `scale` subresource reads and writes, if it has one.
    pub scale: Option<crate::scale::ScalePaths>,
}

/// CRD name → its served versions' schemas.
static SCHEMAS: RwLock<BTreeMap<String, Vec<CustomSchema>>> = RwLock::new(BTreeMap::new());

/// Bumped on every CRD change, so what is built from the schemas (OpenAPI) is rebuilt.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Publishes (or, with no versions, withdraws) the schemas of the CRD called `crd_name`.
pub fn set_schemas(crd_name: &str, versions: Vec<CustomSchema>) {
    let mut all = SCHEMAS.write().unwrap_or_else(|e| e.into_inner());
    if versions.is_empty() {
        all.remove(crd_name);
    } else {
        all.insert(crd_name.to_string(), versions);
    }
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

pub fn custom_generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// Every served custom version's schema.
pub fn published() -> Vec<CustomSchema> {
    let all = SCHEMAS.read().unwrap_or_else(|e| e.into_inner());
    all.values().flatten().cloned().collect()
}

/// CRD name → (group, kind, the apiVersion its objects are stored in).
static STORAGE: RwLock<BTreeMap<String, (String, String, String)>> = RwLock::new(BTreeMap::new());

/// The apiVersion objects of the custom kind `group`/`kind` are stored in: their CRD's
/// storage version.
pub fn storage_api_version(group: &str, kind: &str) -> Option<String> {
    let all = STORAGE.read().unwrap_or_else(|e| e.into_inner());
    all.values()
        .find(|(g, k, _)| g == group && k == kind)
        .map(|(_, _, v)| v.clone())
}

fn set_storage(crd_name: &str, crd: Option<&Value>) {
    let mut all = STORAGE.write().unwrap_or_else(|e| e.into_inner());
    let version = crd.and_then(|c| {
        c["spec"]["versions"]
            .as_array()?
            .iter()
            .find(|v| v["storage"].as_bool() == Some(true))?["name"]
            .as_str()
            .map(str::to_string)
    });
    match (crd, version) {
        (Some(c), Some(v)) => {
            let group = c["spec"]["group"].as_str().unwrap_or_default().to_string();
            let (kind, _, _) = names(c);
            all.insert(
                crd_name.to_string(),
                (group.clone(), kind, format!("{group}/{v}")),
            );
        }
        _ => {
            all.remove(crd_name);
        }
    }
}

/// The schema of one served custom version, if its CRD gives one.
pub fn schema_of(group: &str, version: &str, kind: &str) -> Option<Arc<Value>> {
    let all = SCHEMAS.read().unwrap_or_else(|e| e.into_inner());
    all.values()
        .flatten()
        .find(|c| c.group == group && c.version == version && c.kind == kind)
        .filter(|c| c.schema.is_object())
        .map(|c| c.schema.clone())
}

/// Where the `scale` subresource of one served custom version reads and writes.
pub fn scale_paths(group: &str, version: &str, kind: &str) -> Option<crate::scale::ScalePaths> {
    let all = SCHEMAS.read().unwrap_or_else(|e| e.into_inner());
    all.values()
        .flatten()
        .find(|c| c.group == group && c.version == version && c.kind == kind)
        .and_then(|c| c.scale.clone())
}

/// Whether `r` is the CustomResourceDefinition resource itself.
pub fn is_crd(r: &Resource) -> bool {
    r.group == "apiextensions.k8s.io" && r.kind == "CustomResourceDefinition"
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn names(crd: &Value) -> (String, String, String) {
    let n = &crd["spec"]["names"];
    let kind = n["kind"].as_str().unwrap_or_default().to_string();
    let plural = n["plural"].as_str().unwrap_or_default().to_string();
    let singular = n["singular"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    (kind, plural, singular)
}

/// The resources a CRD serves: one per served version.
pub fn entries(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let (kind, plural, singular) = names(crd);
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let short_names = intern_list(&strs(&spec["names"]["shortNames"]));
    let categories = intern_list(&strs(&spec["names"]["categories"]));
    let mut out = Vec::new();
    for v in spec["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let Some(version) = v["name"].as_str() else {
            continue;
        };
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        let mut subs: Vec<String> = Vec::new();
        if v["subresources"]["status"].is_object() {
            subs.push("status".into());
        }
        if v["subresources"]["scale"].is_object() {
            subs.push("scale".into());
        }
        let columns: Vec<(String, String, String)> = v["additionalPrinterColumns"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|c| {
                Some((
                    c["name"].as_str()?.to_string(),
                    c["type"].as_str().unwrap_or("string").to_string(),
                    c["jsonPath"].as_str()?.to_string(),
                ))
            })
            .collect();
        out.push(Resource {
            group: intern(group),
            version: intern(version),
            kind: intern(&kind),
            plural: intern(&plural),
            singular: intern(&singular),
            namespaced,
            short_names,
            fields: &[],
            subresources: intern_list(&subs),
            categories,
            custom: true,
            printer_columns: intern_columns(&columns),
        });
    }
    out
}

/// The schemas a CRD's served versions publish in the OpenAPI documents.
fn schemas(crd: &Value) -> Vec<CustomSchema> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let (kind, _, _) = names(crd);
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool() != Some(false))
        .filter_map(|v| {
            Some(CustomSchema {
                group: group.to_string(),
                version: v["name"].as_str()?.to_string(),
                kind: kind.clone(),
                schema: Arc::new(v["schema"]["openAPIV3Schema"].clone()),
                scale: crate::scale::ScalePaths::of_crd_version(v),
            })
        })
        .collect()
}

/// Serves what `crd` defines (replacing what it defined before).
pub fn register(crd: &Value) {
    if let Some(name) = objects::name_of(crd) {
        resources::set_custom(name, entries(crd));
        set_schemas(name, schemas(crd));
        set_storage(name, Some(crd));
    }
}

/// Stops serving what the CRD called `name` defined.
fn unregister(name: &str) {
    resources::set_custom(name, Vec::new());
    set_schemas(name, Vec::new());
    set_storage(name, None);
}

/// Checks a CRD's name and names before it is stored.
pub fn validate(crd: &Value) -> Result<(), ApiError> {
    let name = objects::name_of(crd).unwrap_or_default();
    let group = crd["spec"]["group"].as_str().unwrap_or_default();
    let (kind, plural, _) = names(crd);
    let mut causes = Vec::new();
    if group.is_empty() {
        causes.push(("spec.group".into(), "Required value".into()));
    }
    if plural.is_empty() {
        causes.push(("spec.names.plural".into(), "Required value".into()));
    }
    if kind.is_empty() {
        causes.push(("spec.names.kind".into(), "Required value".into()));
    }
    if crd["spec"]["versions"]
        .as_array()
        .is_none_or(|v| v.is_empty())
    {
        causes.push((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    for (i, v) in crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        causes.extend(crate::scale::validate_crd_scale(
            v,
            &format!("spec.versions[{i}].subresources.scale"),
        ));
    }
    if causes.is_empty() && name != format!("{plural}.{group}") {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            name,
            causes,
        ))
    }
}

/// Sets the status the apiextensions controllers would: accepted names, NamesAccepted and
/// Established conditions, stored versions.
pub fn set_status(crd: &mut Value) {
    let (kind, plural, singular) = names(crd);
    let n = &crd["spec"]["names"];
    let mut accepted = json!({"kind": kind, "plural": plural, "singular": singular});
    for f in ["shortNames", "categories", "listKind"] {
        if let Some(v) = n.get(f).filter(|v| !v.is_null()) {
            accepted[f] = v.clone();
        }
    }
    if accepted.get("listKind").is_none() {
        accepted["listKind"] = json!(format!("{kind}List"));
    }
    let now = cairn_wire::time::now_rfc3339();
    let old_time = |ty: &str| -> Value {
        crd["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == ty && c["status"] == "True"))
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(now))
    };
    let conditions = json!([
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
         "message": "no conflicts found", "lastTransitionTime": old_time("NamesAccepted")},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
         "message": "the initial names have been accepted", "lastTransitionTime": old_time("Established")},
    ]);
    let mut stored = strs(&crd["status"]["storedVersions"]);
    if let Some(storage) = crd["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["storage"].as_bool() == Some(true)))
        .and_then(|v| v["name"].as_str())
    {
        if !stored.iter().any(|s| s == storage) {
            stored.push(storage.to_string());
        }
    }
    if !crd["status"].is_object() {
        crd["status"] = json!({});
    }
    crd["status"]["acceptedNames"] = accepted;
    crd["status"]["conditions"] = conditions;
    crd["status"]["storedVersions"] = json!(stored);
}

/// Stops serving a deleted CRD and removes its objects (every version shares one key prefix).
pub async fn removed(store: &dyn Store, crd: &Value) -> Result<(), ApiError> {
    let defined = entries(crd);
    if let Some(name) = objects::name_of(crd) {
        unregister(name);
    }
    let Some(r) = defined.first() else {
        return Ok(());
    };
    let listed = store
        .list(&r.key_prefix(None), None, 0, None)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    for rec in listed.records {
        match store.delete(&rec.key, None).await {
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(ApiError::internal(e.to_string())),
        }
    }
    Ok(())
}

/// Serves every CRD in the store (at start-up), then follows changes that do not go through
/// the API handler (controllers write the store directly: a CRD whose last finalizer the
/// garbage collector removes, for one).
pub async fn load(store: &Arc<dyn Store>) -> anyhow::Result<()> {
    let after = load_all(store).await?;
    let store = store.clone();
    tokio::spawn(async move {
        let mut after = after;
        loop {
            follow(&store, after).await;
            // The watch ended (fell behind or compacted): list again and go on.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match load_all(&store).await {
                Ok(rev) => after = rev,
                Err(e) => tracing::warn!("listing CRDs: {e}"),
            }
        }
    });
    Ok(())
}

fn crd_prefix() -> Option<String> {
    resources::find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .map(|r| r.key_prefix(None))
}

/// Registers every stored CRD (dropping ones gone); the revision listed at.
async fn load_all(store: &Arc<dyn Store>) -> anyhow::Result<i64> {
    let Some(prefix) = crd_prefix() else {
        return Ok(0);
    };
    let listed = store.list(&prefix, None, 0, None).await?;
    let mut present = Vec::new();
    for rec in &listed.records {
        match decode(rec) {
            Ok(crd) => {
                register(&crd);
                present.extend(objects::name_of(&crd).map(str::to_string));
            }
            Err(e) => tracing::warn!("skipping CRD {}: {}", rec.key, e.message),
        }
    }
    let mut stale: Vec<String> = resources::all()
        .into_iter()
        .filter(|r| r.custom)
        .map(|r| format!("{}.{}", r.plural, r.group))
        .filter(|n| !present.contains(n))
        .collect();
    stale.dedup();
    for name in stale {
        unregister(&name);
    }
    Ok(listed.revision)
}

async fn follow(store: &Arc<dyn Store>, after: i64) {
    let Some(prefix) = crd_prefix() else { return };
    let Ok(mut events) = store.watch(&prefix, after).await else {
        return;
    };
    while let Some(ev) = events.recv().await {
        match ev.kind {
            cairn_store::EventKind::Put => {
                if let Ok(crd) = decode(&ev.record) {
                    register(&crd);
                }
            }
            cairn_store::EventKind::Delete => {
                let gone = ev.prev.as_ref().unwrap_or(&ev.record);
                // Made again since (a late event): the new one stays served.
                if matches!(store.get(&ev.record.key).await, Ok(Some(_))) {
                    continue;
                }
                if let Ok(crd) = decode(gone) {
                    if let Err(e) = removed(&**store, &crd).await {
                        tracing::warn!("removing the objects of a deleted CRD: {}", e.message);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_entries_and_status() {
        let mut crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wg"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]}]}
        });
        validate(&crd).unwrap();
        let e = entries(&crd);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].singular, "widget");
        assert_eq!(e[0].short_names, ["wg"]);
        assert_eq!(e[0].subresources, ["status"]);
        assert_eq!(e[0].printer_columns, [("Size", "integer", ".spec.size")]);
        register(&crd);
        let r = resources::find("example.com", "v1", "widgets").unwrap();
        assert_eq!(r.key(Some("ns"), "a"), "/registry/example.com/widgets/ns/a");
        register(&crd);
        assert!(std::ptr::eq(
            r,
            resources::find("example.com", "v1", "widgets").unwrap()
        ));
        set_status(&mut crd);
        assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
        assert_eq!(crd["status"]["acceptedNames"]["singular"], "widget");
        resources::set_custom("widgets.example.com", Vec::new());
        assert!(resources::find("example.com", "v1", "widgets").is_none());
        crd["metadata"]["name"] = json!("bad");
        assert!(validate(&crd).is_err());
    }

    #[tokio::test]
    async fn follows_crds_written_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(cairn_store::SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gadgets.test.io"},
            "spec": {"group": "test.io", "scope": "Cluster",
                "names": {"plural": "gadgets", "kind": "Gadget"},
                "versions": [{"name": "v1", "served": true, "storage": true}]}
        });
        let key = format!("{}gadgets.test.io", crd_prefix().unwrap());
        let first = store
            .create(&key, serde_json::to_vec(&crd).unwrap())
            .await
            .unwrap();
        load(&store).await.unwrap();
        let r = resources::find("test.io", "v1", "gadgets").expect("loaded at start-up");
        assert!(!r.namespaced && r.custom);
        store
            .create(&r.key(None, "g1"), b"{}".to_vec())
            .await
            .unwrap();
        store.delete(&key, Some(first.revision)).await.unwrap();
        let start = std::time::Instant::now();
        while resources::find("test.io", "v1", "gadgets").is_some() {
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let start = std::time::Instant::now();
        while store.get(&r.key(None, "g1")).await.unwrap().is_some() {
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mut again = crd.clone();
        again["spec"]["versions"][0]["name"] = json!("v2");
        store
            .create(&key, serde_json::to_vec(&again).unwrap())
            .await
            .unwrap();
        let start = std::time::Instant::now();
        while resources::find("test.io", "v2", "gadgets").is_none() {
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
