//! The namespace controller: empties a Namespace being deleted, as kube-controller-manager's
//! does. The API marks the Namespace (`metadata.deletionTimestamp`, `status.phase:
//! Terminating`) and keeps the `kubernetes` finalizer in `spec.finalizers`; a sync deletes
//! every namespaced object in it, custom resources included (the way the API deletes: pods on
//! a node and objects with finalizers are only marked), reports progress in
//! `status.conditions`, and once nothing is left removes the `kubernetes` finalizer and, when
//! no finalizer remains, the Namespace.

use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::resources::{self, Resource};
use cairn_store::{Event, EventKind, Store};
use cairn_wire::time::now_rfc3339;
use serde_json::{json, Value};
use std::time::Duration;

pub const FINALIZER: &str = "kubernetes";

pub(crate) fn namespaces() -> &'static Resource {
    resources::find("", "v1", "namespaces").expect("namespaces missing from the resource table")
}

/// What is left in a Namespace of one kind.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Remaining {
    /// "pods", "deployments.apps", as kube names them in messages.
    pub resource: String,
    pub count: usize,
    /// Finalizers the remaining objects carry.
    pub finalizers: Vec<String>,
}

fn condition(kind: &str, status: bool, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": kind, "status": if status {"True"} else {"False"},
           "lastTransitionTime": now, "reason": reason, "message": message})
}

/// The Namespace's status while it is emptied, with kube's conditions; `None` when it already
/// says so.
pub fn status(ns: &Value, remaining: &[Remaining], now: &str) -> Option<Value> {
    let content: Vec<&Remaining> = remaining.iter().filter(|r| r.count > 0).collect();
    let mut finalizers: Vec<(String, usize)> = Vec::new();
    for r in &content {
        for f in &r.finalizers {
            match finalizers.iter_mut().find(|(n, _)| n == f) {
                Some((_, c)) => *c += 1,
                None => finalizers.push((f.clone(), 1)),
            }
        }
    }
    let content_msg = content
        .iter()
        .map(|r| format!("{}: {}", r.resource, r.count))
        .collect::<Vec<_>>()
        .join(", ");
    let fin_msg = finalizers
        .iter()
        .map(|(f, c)| format!("{f} in {c} resource instances"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut wanted = vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered",
            now,
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed",
            now,
        ),
        condition(
            "NamespaceDeletionContentFailure",
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization",
            now,
        ),
    ];
    wanted.push(if content.is_empty() {
        condition(
            "NamespaceContentRemaining",
            false,
            "ContentRemoved",
            "All content successfully removed",
            now,
        )
    } else {
        condition(
            "NamespaceContentRemaining",
            true,
            "SomeResourcesRemain",
            &format!("Some resources are remaining: {content_msg}"),
            now,
        )
    });
    wanted.push(if finalizers.is_empty() {
        condition(
            "NamespaceFinalizersRemaining",
            false,
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished",
            now,
        )
    } else {
        condition(
            "NamespaceFinalizersRemaining",
            true,
            "SomeFinalizersRemain",
            &format!("Some content in the namespace has finalizers remaining: {fin_msg}"),
            now,
        )
    });
    // Keep the transition time of conditions whose status, reason and message are unchanged.
    let old = ns["status"]["conditions"].as_array();
    for c in &mut wanted {
        let same = old.and_then(|o| o.iter().find(|x| x["type"] == c["type"]));
        if let Some(prev) = same {
            if prev["status"] == c["status"]
                && prev["reason"] == c["reason"]
                && prev["message"] == c["message"]
            {
                c["lastTransitionTime"] = prev["lastTransitionTime"].clone();
            }
        }
    }
    let mut st = ns["status"].as_object().cloned().unwrap_or_default();
    st.insert("phase".into(), json!("Terminating"));
    st.insert("conditions".into(), Value::Array(wanted));
    let st = Value::Object(st);
    (ns.get("status") != Some(&st)).then_some(st)
}

/// What to do with an empty Namespace being deleted.
#[derive(Debug, PartialEq)]
pub enum Finish {
    /// Write the Namespace without the `kubernetes` finalizer (others remain).
    Update(Value),
    /// No finalizer is left: remove the Namespace.
    Delete,
    /// Other finalizers are pending.
    Wait,
}

pub fn finish(ns: &Value) -> Finish {
    let spec_fin: Vec<Value> = ns["spec"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let left: Vec<Value> = spec_fin
        .iter()
        .filter(|f| f.as_str() != Some(FINALIZER))
        .cloned()
        .collect();
    let meta_fin = ns["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if left.len() != spec_fin.len() {
        let mut new = ns.clone();
        new["spec"]["finalizers"] = Value::Array(left.clone());
        return if left.is_empty() && !meta_fin {
            Finish::Delete
        } else {
            Finish::Update(new)
        };
    }
    if left.is_empty() && !meta_fin {
        Finish::Delete
    } else {
        Finish::Wait
    }
}

fn resource_name(r: &Resource) -> String {
    if r.group.is_empty() {
        r.plural.to_string()
    } else {
        format!("{}.{}", r.plural, r.group)
    }
}

/// Runs the namespace deletion against the store. Work items are Namespace keys.
pub struct NamespaceController;

#[async_trait]
impl Controller for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![namespaces().key_prefix(None), util::pods().key_prefix(None)]
    }

    async fn items_for(&self, _store: &dyn Store, ev: &Event) -> Vec<String> {
        let key = &ev.record.key;
        if key.starts_with(&namespaces().key_prefix(None)) {
            return vec![key.clone()];
        }
        // A pod went away: its namespace may now be empty.
        if ev.kind == EventKind::Delete {
            if let Ok(pod) = cairn_api::objects::decode(&ev.record) {
                return vec![namespaces().key(None, util::namespace(&pod))];
            }
        }
        Vec::new()
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let r = namespaces();
        Ok(util::list(store, &r.key_prefix(None))
            .await?
            .iter()
            .filter(|n| util::is_deleting(n))
            .map(|o| util::key_of(r, o))
            .collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(ns) = util::get(store, key).await? else {
            return Ok(None);
        };
        if !util::is_deleting(&ns) {
            return Ok(None);
        }
        let name = util::name(&ns).to_string();
        let mut remaining = Vec::new();
        // Every namespaced kind served now, custom resources included; versions of one
        // resource share a key prefix and are visited once.
        let mut seen = std::collections::HashSet::new();
        for r in resources::all().into_iter().filter(|r| r.namespaced) {
            if !seen.insert(r.key_prefix(Some(&name))) {
                continue;
            }
            let objs = util::list(store, &r.key_prefix(Some(&name))).await?;
            if objs.is_empty() {
                continue;
            }
            let mut left = Remaining {
                resource: resource_name(r),
                ..Remaining::default()
            };
            for o in &objs {
                util::delete(store, r, o).await?;
                if let Some(f) = o["metadata"]["finalizers"].as_array() {
                    for f in f.iter().filter_map(Value::as_str) {
                        if !left.finalizers.iter().any(|x| x == f) {
                            left.finalizers.push(f.to_string());
                        }
                    }
                }
            }
            // What the deletes left behind (marked, awaiting a node agent or finalizers).
            left.count = store.count(&r.key_prefix(Some(&name))).await?;
            if left.count > 0 {
                remaining.push(left);
            }
        }
        if let Some(st) = status(&ns, &remaining, &now_rfc3339()) {
            let mut new = ns.clone();
            new["status"] = st;
            util::update(store, namespaces(), &ns, new).await?;
            // The next sync (from this write's event) goes on with the fresh object.
            return Ok(Some(Duration::from_secs(2)));
        }
        if !remaining.is_empty() {
            return Ok(Some(Duration::from_secs(2)));
        }
        match finish(&ns) {
            Finish::Update(new) => {
                util::update(store, namespaces(), &ns, new).await?;
                Ok(None)
            }
            Finish::Delete => {
                // Finalizing the last finalizer away: the registry then removes it.
                let mut new = ns.clone();
                new["spec"]["finalizers"] = serde_json::json!([]);
                util::update(store, namespaces(), &ns, new).await?;
                Ok(None)
            }
            Finish::Wait => Ok(Some(Duration::from_secs(5))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{eventually, open_store, opts};

    fn ns(spec_fin: Value) -> Value {
        json!({"metadata": {"name": "team", "deletionTimestamp": "2024-01-01T00:00:00Z"},
               "spec": {"finalizers": spec_fin}, "status": {"phase": "Terminating"}})
    }

    #[test]
    fn conditions_report_what_remains() {
        let n = ns(json!(["kubernetes"]));
        let rem = vec![Remaining {
            resource: "pods".into(),
            count: 2,
            finalizers: vec!["example.com/keep".into()],
        }];
        let st = status(&n, &rem, "2024-01-01T00:00:05Z").unwrap();
        assert_eq!(st["phase"], "Terminating");
        let c = |t: &str| {
            st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap()
                .clone()
        };
        assert_eq!(c("NamespaceDeletionContentFailure")["status"], "False");
        assert_eq!(c("NamespaceContentRemaining")["status"], "True");
        assert_eq!(
            c("NamespaceContentRemaining")["message"],
            "Some resources are remaining: pods: 2"
        );
        assert_eq!(c("NamespaceFinalizersRemaining")["status"], "True");
        // Written once, it is stable (transition times kept).
        let mut again = n.clone();
        again["status"] = st;
        assert!(status(&again, &rem, "2024-01-01T00:00:09Z").is_none());
        let done = status(&again, &[], "2024-01-01T00:00:09Z").unwrap();
        assert_eq!(done["conditions"][3]["status"], "False");
        assert_eq!(
            done["conditions"][0]["lastTransitionTime"],
            "2024-01-01T00:00:05Z"
        );
    }

    #[test]
    fn finalizer_removal() {
        assert_eq!(finish(&ns(json!(["kubernetes"]))), Finish::Delete);
        assert_eq!(finish(&ns(json!([]))), Finish::Delete);
        match finish(&ns(json!(["kubernetes", "other"]))) {
            Finish::Update(v) => assert_eq!(v["spec"]["finalizers"], json!(["other"])),
            f => panic!("unexpected {f:?}"),
        }
        assert_eq!(finish(&ns(json!(["other"]))), Finish::Wait);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn empties_and_removes_a_namespace_on_a_real_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(&dir).await;
        let s = &*store;
        let pods = util::pods();
        let cms = resources::find("", "v1", "configmaps").unwrap();
        let ns_key = namespaces().key(None, "team");
        util::create(
            s,
            namespaces(),
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team"}, "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}}),
        )
        .await
        .unwrap();
        for (ns, name) in [("team", "a"), ("team", "b"), ("other", "a")] {
            util::create(
                s,
                cms,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns}}),
            )
            .await
            .unwrap();
        }
        util::create(
            s,
            pods,
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "bound", "namespace": "team"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await
        .unwrap();
        let task = crate::spawn(NamespaceController, store.clone(), opts());
        // What the API does on DELETE.
        let ns = util::get(s, &ns_key).await.unwrap().unwrap();
        util::delete(s, namespaces(), &ns).await.unwrap();

        // The config maps go; the bound pod is only marked, waiting for its node.
        let pod_key = pods.key(Some("team"), "bound");
        let pod = eventually("content deleted, pod marked", || async {
            let left = store.count(&cms.key_prefix(Some("team"))).await.unwrap();
            let pod = util::get(s, &pod_key).await.unwrap()?;
            (left == 0 && util::is_deleting(&pod)).then_some(pod)
        })
        .await;
        let ns = eventually("a ContentRemaining condition", || async {
            let ns = util::get(s, &ns_key).await.unwrap()?;
            let c = util::condition(&ns, "NamespaceContentRemaining")?;
            (c["status"] == "True").then_some(ns)
        })
        .await;
        assert_eq!(ns["status"]["phase"], "Terminating");
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        // The node agent finishes the pod: the namespace goes.
        s.delete(&util::key_of(pods, &pod), None).await.unwrap();
        eventually("the namespace removed", || async {
            util::get(s, &ns_key).await.unwrap().is_none().then_some(())
        })
        .await;
        assert_eq!(
            store.count(&cms.key_prefix(Some("other"))).await.unwrap(),
            1
        );
        task.abort();
    }
}
