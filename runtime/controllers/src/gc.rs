//! The garbage collector: deletes objects whose owners are gone, as kube-controller-manager's
//! does for background cascading deletion.
//!
//! It watches every key and keeps an index of uids and ownerReferences. When an object is
//! deleted, its dependents are checked; so are objects written with an owner uid it has not
//! seen. A check reads each owner live (kind from the resource table, name, namespace of the
//! dependent) and [`decide`]s: a dependent whose owners are all gone (missing, or replaced by
//! another object of the same name: owners match by uid) is deleted; one with some owners left
//! loses only the references to the missing ones.
//!
//! It also finishes the two other propagation policies when the API marks an owner with their
//! finalizers: `orphan` (the owner's references are removed from its dependents, then the
//! finalizer) and `foregroundDeletion` (dependents are deleted; the finalizer goes once those
//! that block their owner's deletion are gone). An object whose last finalizer is removed
//! while it is being deleted is removed from the store.

use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::objects::decode;
use cairn_api::resources::{self, Resource};
use cairn_store::{Event, EventKind, Store};
use cairn_wire::value::str_at;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

pub const ORPHAN_FINALIZER: &str = "orphan";
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// What an owner reference points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner exists (or cannot be checked: a kind this server does not serve).
    Solid,
    /// No object of that name, or one with another uid.
    Dangling,
    /// The owner is being deleted in the foreground: it waits for its dependents.
    WaitingForDependents,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Delete,
    /// Remove the references to these owner uids.
    RemoveOwners(Vec<String>),
}

/// What to do with a dependent, given the state of each of its owners (attemptToDeleteItem).
pub fn decide(dependent: &Value, owner_state: impl Fn(&Value) -> OwnerState) -> Decision {
    let refs = util::owner_refs(dependent);
    if refs.is_empty() || util::is_deleting(dependent) {
        return Decision::Keep;
    }
    let mut solid = 0;
    let mut gone = Vec::new();
    for r in refs {
        match owner_state(r) {
            OwnerState::Solid => solid += 1,
            OwnerState::Dangling | OwnerState::WaitingForDependents => {
                gone.push(str_at(r, "/uid").to_string())
            }
        }
    }
    if solid > 0 {
        if gone.is_empty() {
            Decision::Keep
        } else {
            Decision::RemoveOwners(gone)
        }
    } else {
        Decision::Delete
    }
}

fn finalizers(obj: &Value) -> Vec<&str> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[derive(Debug)]
struct Entry {
    uid: String,
    owners: Vec<String>,
    foreground: bool,
}

/// uids and owner references of every object, from the watch.
#[derive(Default, Debug)]
struct Index {
    by_key: HashMap<String, Entry>,
    by_uid: HashMap<String, String>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Index {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.by_key.remove(key) {
            if self.by_uid.get(&e.uid).is_some_and(|k| k == key) {
                self.by_uid.remove(&e.uid);
            }
            for o in &e.owners {
                if let Some(set) = self.dependents.get_mut(o) {
                    set.remove(key);
                    if set.is_empty() {
                        self.dependents.remove(o);
                    }
                }
            }
        }
    }

    fn put(&mut self, key: &str, obj: &Value) {
        self.remove(key);
        let uid = util::uid(obj).to_string();
        let owners: Vec<String> = util::owner_refs(obj)
            .iter()
            .filter_map(|r| r["uid"].as_str().map(str::to_string))
            .collect();
        for o in &owners {
            self.dependents
                .entry(o.clone())
                .or_default()
                .insert(key.to_string());
        }
        if !uid.is_empty() {
            self.by_uid.insert(uid.clone(), key.to_string());
        }
        let foreground = util::is_deleting(obj) && finalizers(obj).contains(&FOREGROUND_FINALIZER);
        self.by_key.insert(
            key.to_string(),
            Entry {
                uid,
                owners,
                foreground,
            },
        );
    }

    /// Whether some owner uid of the entry is unknown (a dependent that may be dangling).
    fn has_unknown_owner(&self, key: &str) -> bool {
        self.by_key
            .get(key)
            .is_some_and(|e| e.owners.iter().any(|o| !self.by_uid.contains_key(o)))
    }

    fn dependents_of(&self, uid: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Runs [`decide`] (and the orphan and foreground finalizers) against the store.
#[derive(Default)]
pub struct GarbageCollector {
    index: Mutex<Index>,
}

/// The resource a key belongs to, and whether the key is namespaced.
fn resource_of_key(key: &str) -> Option<&'static Resource> {
    resources::all()
        .into_iter()
        .filter(|r| key.starts_with(&r.key_prefix(None)))
        .max_by_key(|r| r.key_prefix(None).len())
}

/// The resource an owner reference names (by API group and kind; any served version).
fn resource_of_ref(r: &Value) -> Option<&'static Resource> {
    let api_version = str_at(r, "/apiVersion");
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = str_at(r, "/kind");
    resources::all()
        .into_iter()
        .find(|x| x.group == group && x.kind == kind)
}

impl GarbageCollector {
    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn owner_state(store: &dyn Store, dependent: &Value, r: &Value) -> Result<OwnerState> {
        let Some(res) = resource_of_ref(r) else {
            return Ok(OwnerState::Solid);
        };
        let ns = util::namespace(dependent);
        let key = if res.namespaced {
            if ns.is_empty() {
                // A cluster-scoped object cannot be owned by a namespaced one; leave it be.
                return Ok(OwnerState::Solid);
            }
            res.key(Some(ns), str_at(r, "/name"))
        } else {
            res.key(None, str_at(r, "/name"))
        };
        Ok(match util::get(store, &key).await? {
            None => OwnerState::Dangling,
            Some(o) if util::uid(&o) != str_at(r, "/uid") => OwnerState::Dangling,
            Some(o) if util::is_deleting(&o) && finalizers(&o).contains(&FOREGROUND_FINALIZER) => {
                OwnerState::WaitingForDependents
            }
            Some(_) => OwnerState::Solid,
        })
    }

    /// Removes one finalizer from an object being deleted; deletes it when none is left.
    async fn remove_finalizer(store: &dyn Store, r: &Resource, obj: &Value, f: &str) -> Result<()> {
        let mut new = obj.clone();
        if let Some(list) = new["metadata"]["finalizers"].as_array_mut() {
            list.retain(|x| x.as_str() != Some(f));
        }
        // The registry deletes an object being deleted once its last finalizer is gone.
        util::update(store, r, obj, new).await.map(|_| ())
    }

    /// The owner side: orphan or foreground finalizers of an object being deleted.
    async fn finish_owner(&self, store: &dyn Store, r: &Resource, obj: &Value) -> Result<()> {
        let fins = finalizers(obj);
        let uid = util::uid(obj).to_string();
        let dependents = self.index().dependents_of(&uid);
        if fins.contains(&ORPHAN_FINALIZER) {
            for key in &dependents {
                let (Some(dr), Some(dep)) = (resource_of_key(key), util::get(store, key).await?)
                else {
                    continue;
                };
                let mut new = dep.clone();
                if let Some(refs) = new["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|x| x["uid"].as_str() != Some(uid.as_str()));
                }
                if new != dep {
                    util::update(store, dr, &dep, new).await?;
                }
            }
            return Self::remove_finalizer(store, r, obj, ORPHAN_FINALIZER).await;
        }
        if fins.contains(&FOREGROUND_FINALIZER) {
            let mut blocking = 0;
            for key in &dependents {
                let (Some(dr), Some(dep)) = (resource_of_key(key), util::get(store, key).await?)
                else {
                    continue;
                };
                let Some(reference) = util::owner_refs(&dep)
                    .iter()
                    .find(|x| x["uid"].as_str() == Some(uid.as_str()))
                else {
                    continue;
                };
                if reference["blockOwnerDeletion"].as_bool() == Some(true) {
                    blocking += 1;
                }
                util::delete(store, dr, &dep).await?;
            }
            if blocking == 0 {
                return Self::remove_finalizer(store, r, obj, FOREGROUND_FINALIZER).await;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Controller for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn prefixes(&self) -> Vec<String> {
        // One watch over everything keeps owners and dependents in commit order.
        vec!["/registry/".to_string()]
    }

    async fn items_for(&self, _store: &dyn Store, ev: &Event) -> Vec<String> {
        let key = &ev.record.key;
        let Ok(obj) = decode(&ev.record) else {
            return Vec::new();
        };
        let mut index = self.index();
        match ev.kind {
            EventKind::Put => {
                index.put(key, &obj);
                let owner_side = util::is_deleting(&obj)
                    && finalizers(&obj)
                        .iter()
                        .any(|f| *f == ORPHAN_FINALIZER || *f == FOREGROUND_FINALIZER);
                if owner_side || index.has_unknown_owner(key) {
                    vec![key.clone()]
                } else {
                    Vec::new()
                }
            }
            EventKind::Delete => {
                index.remove(key);
                let mut items = index.dependents_of(util::uid(&obj));
                // An owner deleted in the foreground waits for this one.
                for r in util::owner_refs(&obj) {
                    let Some(owner_key) = r["uid"].as_str().and_then(|u| index.by_uid.get(u))
                    else {
                        continue;
                    };
                    if index.by_key.get(owner_key).is_some_and(|e| e.foreground) {
                        items.push(owner_key.clone());
                    }
                }
                items
            }
        }
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let listed = store.list("/registry/", None, 0, None).await?;
        let mut index = Index::default();
        let mut items = Vec::new();
        for rec in &listed.records {
            if let Ok(obj) = decode(rec) {
                index.put(&rec.key, &obj);
                if index.by_key[&rec.key].foreground
                    || (util::is_deleting(&obj) && finalizers(&obj).contains(&ORPHAN_FINALIZER))
                {
                    items.push(rec.key.clone());
                }
            }
        }
        items.extend(
            index
                .by_key
                .keys()
                .filter(|k| index.has_unknown_owner(k))
                .cloned(),
        );
        *self.index() = index;
        Ok(items)
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(r) = resource_of_key(key) else {
            return Ok(None);
        };
        let Some(obj) = util::get(store, key).await? else {
            return Ok(None);
        };
        if util::is_deleting(&obj) {
            self.finish_owner(store, r, &obj).await?;
            return Ok(None);
        }
        let mut states = HashMap::new();
        for reference in util::owner_refs(&obj) {
            let state = Self::owner_state(store, &obj, reference).await?;
            states.insert(str_at(reference, "/uid").to_string(), state);
        }
        let decision = decide(&obj, |reference| {
            states
                .get(str_at(reference, "/uid"))
                .copied()
                .unwrap_or(OwnerState::Solid)
        });
        match decision {
            Decision::Keep => {}
            Decision::Delete => {
                tracing::debug!(%key, "garbage collecting: every owner is gone");
                util::delete(store, r, &obj).await?;
            }
            Decision::RemoveOwners(uids) => {
                let mut new = obj.clone();
                if let Some(refs) = new["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|x| !uids.iter().any(|u| x["uid"].as_str() == Some(u)));
                }
                util::update(store, r, &obj, new).await?;
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dependent(owners: &[&str]) -> Value {
        let refs: Vec<Value> = owners
            .iter()
            .map(|u| json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": u, "uid": u}))
            .collect();
        json!({"metadata": {"name": "p", "ownerReferences": refs}})
    }

    fn states<'a>(m: &'a [(&'a str, OwnerState)]) -> impl Fn(&Value) -> OwnerState + 'a {
        move |r| {
            m.iter()
                .find(|(u, _)| r["uid"] == *u)
                .map(|(_, s)| *s)
                .unwrap()
        }
    }

    #[test]
    fn decisions() {
        use OwnerState::*;
        assert_eq!(
            decide(&json!({"metadata": {}}), |_| Dangling),
            Decision::Keep
        );
        assert_eq!(
            decide(&dependent(&["a"]), states(&[("a", Solid)])),
            Decision::Keep
        );
        assert_eq!(
            decide(&dependent(&["a"]), states(&[("a", Dangling)])),
            Decision::Delete
        );
        assert_eq!(
            decide(
                &dependent(&["a", "b"]),
                states(&[("a", Dangling), ("b", Dangling)])
            ),
            Decision::Delete
        );
        assert_eq!(
            decide(
                &dependent(&["a", "b"]),
                states(&[("a", Dangling), ("b", Solid)])
            ),
            Decision::RemoveOwners(vec!["a".into()])
        );
        assert_eq!(
            decide(&dependent(&["a"]), states(&[("a", WaitingForDependents)])),
            Decision::Delete
        );
        let mut deleting = dependent(&["a"]);
        deleting["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        assert_eq!(
            decide(&deleting, states(&[("a", Dangling)])),
            Decision::Keep
        );
    }

    #[test]
    fn index_tracks_dependents_and_unknown_owners() {
        let mut ix = Index::default();
        let owner = json!({"metadata": {"name": "rs", "uid": "o1"}});
        let pod = json!({"metadata": {"name": "p", "uid": "p1",
            "ownerReferences": [{"uid": "o1", "kind": "ReplicaSet", "apiVersion": "apps/v1"}]}});
        ix.put("/registry/core/pods/default/p", &pod);
        assert!(ix.has_unknown_owner("/registry/core/pods/default/p"));
        ix.put("/registry/apps/replicasets/default/rs", &owner);
        assert!(!ix.has_unknown_owner("/registry/core/pods/default/p"));
        assert_eq!(ix.dependents_of("o1"), ["/registry/core/pods/default/p"]);
        ix.remove("/registry/core/pods/default/p");
        assert!(ix.dependents_of("o1").is_empty());
        assert_eq!(
            resource_of_key("/registry/apps/replicasets/default/rs").map(|r| r.kind),
            Some("ReplicaSet")
        );
        assert_eq!(
            resource_of_ref(&json!({"apiVersion": "v1", "kind": "Pod"})).map(|r| r.plural),
            Some("pods")
        );
    }
}
