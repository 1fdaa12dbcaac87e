//! The DaemonSet controller: one pod from `spec.template` on every eligible Node, as
//! kube-controller-manager's does.
//!
//! A node is eligible when the template's `nodeSelector` and required node affinity match it
//! and its NoSchedule/NoExecute taints are tolerated — by the template's tolerations plus the
//! ones kube adds to every daemon pod (not-ready and unreachable NoExecute; disk-, memory-,
//! pid-pressure and unschedulable NoSchedule; network-unavailable for host-network pods).
//! Pods are pinned to their node as kube does: required node affinity
//! `matchFields metadata.name In [node]`, which the scheduler then binds. Pods on nodes that
//! are no longer eligible (or gone), failed pods, and extra pods on a node are deleted; a pod
//! on a node that only gained an untolerated NoSchedule taint stays (counted misscheduled).
//!
//! Updates: each pod carries the `controller-revision-hash` label of the template it was made
//! from. RollingUpdate (the default) deletes old pods, not-available ones first and at most
//! `maxUnavailable` (default 1, int or percentage of the desired count) unavailable at a time;
//! the next sync creates the new pod. OnDelete only uses the new template for pods that are
//! re-created. ControllerRevision objects are not written (the kind is not served); the hash
//! is the template's.

use super::replicaset::set_or_omit;
use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::objects::decode;
use cairn_store::{Event, Store};
use cairn_wire::value::str_at;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What one sync of a DaemonSet must do.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<Value>,
    pub delete: Vec<Value>,
    pub status: Option<Value>,
    pub requeue_after: Option<i64>,
}

/// The tolerations kube adds to every daemon pod.
pub fn default_tolerations(template_spec: &Value) -> Vec<Value> {
    let mut t = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
    ];
    if template_spec["hostNetwork"].as_bool() == Some(true) {
        t.push(
            json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists",
                      "effect": "NoSchedule"}),
        );
    }
    t
}

/// The template's pod spec with the default tolerations added (those it lacks).
fn spec_with_tolerations(ds: &Value) -> Value {
    let mut spec = ds["spec"]["template"]["spec"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    let mut tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    for t in default_tolerations(&spec) {
        let present = tolerations.iter().any(|x| {
            x["key"] == t["key"] && x["effect"] == t["effect"] && x["operator"] == "Exists"
        });
        if !present {
            tolerations.push(t);
        }
    }
    spec["tolerations"] = json!(tolerations);
    spec
}

fn toleration_matches(t: &Value, key: &str, value: &str, effect: &str) -> bool {
    let t_effect = str_at(t, "/effect");
    let t_key = str_at(t, "/key");
    (t_effect.is_empty() || t_effect == effect)
        && (t_key.is_empty() || t_key == key)
        && match str_at(t, "/operator") {
            "Exists" => true,
            "" | "Equal" => str_at(t, "/value") == value,
            _ => false,
        }
}

/// Whether a daemon pod with `spec` should run on `node`, and whether one already there may
/// keep running (kube's NodeShouldRunDaemonPod: a node with an untolerated NoSchedule taint
/// gets no new pod, but its pod stays unless a NoExecute taint is untolerated too).
pub fn node_eligible(spec: &Value, node: &Value) -> (bool, bool) {
    let pod = json!({"spec": spec});
    if !super::scheduler::matches_node_affinity(&pod, node) {
        return (false, false);
    }
    let tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let untolerated = |effect: &str| {
        node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| str_at(t, "/effect") == effect)
            .any(|taint| {
                !tolerations.iter().any(|t| {
                    toleration_matches(t, str_at(taint, "/key"), str_at(taint, "/value"), effect)
                })
            })
    };
    let no_execute = untolerated("NoExecute");
    (!no_execute && !untolerated("NoSchedule"), !no_execute)
}

/// The node a daemon pod is for: `spec.nodeName`, or the node its required affinity pins.
pub fn pod_node(pod: &Value) -> Option<String> {
    let bound = str_at(pod, "/spec/nodeName");
    if !bound.is_empty() {
        return Some(bound.to_string());
    }
    pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)?
        .iter()
        .flat_map(|t| t["matchFields"].as_array().into_iter().flatten())
        .find(|f| f["key"] == "metadata.name" && f["operator"] == "In")
        .and_then(|f| f["values"][0].as_str())
        .map(str::to_string)
}

/// The template hash of the DaemonSet's current template.
pub fn revision_hash(ds: &Value) -> String {
    super::deployment::pod_template_hash(
        &ds["spec"]["template"],
        ds["status"]["collisionCount"].as_i64().filter(|c| *c != 0),
    )
}

/// A new daemon pod for `node`.
pub fn new_pod(ds: &Value, node: &str, hash: &str) -> Value {
    let mut pod =
        util::pod_from_template(ds, "apps/v1", "DaemonSet", None, &[(REVISION_LABEL, hash)]);
    let mut spec = spec_with_tolerations(ds);
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]});
    pod["spec"] = spec;
    pod
}

/// `maxUnavailable` of a RollingUpdate, resolved against `desired` (rounded up, at least 1).
fn max_unavailable(ds: &Value, desired: i64) -> i64 {
    let v = &ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"];
    let n = match v {
        Value::Number(n) => n.as_i64().unwrap_or(1),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => (p * desired + 99) / 100,
            None => s.parse().unwrap_or(1),
        },
        _ => 1,
    };
    n.max(1)
}

/// Decides what a DaemonSet needs, from it, the nodes, and the pods of its namespace, at `now`.
pub fn reconcile(ds: &Value, nodes: &[Value], pods: &[Value], now: i64) -> Plan {
    let mut plan = Plan::default();
    let hash = revision_hash(ds);
    let spec = spec_with_tolerations(ds);
    let deleting = util::is_deleting(ds);
    let min_ready = util::int_at(ds, "/spec/minReadySeconds", 0);
    let eligible: BTreeMap<&str, (bool, bool)> = nodes
        .iter()
        .filter(|n| !util::is_deleting(n))
        .map(|n| (util::name(n), node_eligible(&spec, n)))
        .collect();
    // The DaemonSet's live pods, by node.
    let mut by_node: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| util::is_controlled_by(p, ds)) {
        if util::is_deleting(pod) {
            continue;
        }
        if str_at(pod, "/status/phase") == "Failed" {
            if !deleting {
                plan.delete.push(pod.clone());
            }
            continue;
        }
        if str_at(pod, "/status/phase") == "Succeeded" {
            continue;
        }
        by_node
            .entry(pod_node(pod).unwrap_or_default())
            .or_default()
            .push(pod);
    }
    let mut desired = 0;
    let mut current = 0;
    let mut misscheduled = 0;
    let mut ready = 0;
    let mut available = 0;
    let mut updated = 0;
    let mut unavailable_nodes = 0;
    let mut old_unavailable: Vec<&Value> = Vec::new();
    let mut old_available: Vec<&Value> = Vec::new();
    for (node, (should_run, may_stay)) in &eligible {
        if !should_run {
            // Pods may stay on a node that only refuses new ones; they count as misscheduled.
            if *may_stay {
                misscheduled += by_node.remove(*node).map_or(0, |h| h.len() as i64);
            }
            continue;
        }
        desired += 1;
        let mut here = by_node.remove(*node).unwrap_or_default();
        if here.is_empty() {
            unavailable_nodes += 1;
            if !deleting {
                plan.create.push(new_pod(ds, node, &hash));
            }
            continue;
        }
        current += 1;
        // Keep the oldest; delete the rest.
        here.sort_by_key(|p| {
            (
                cairn_wire::time::parse_rfc3339(str_at(p, "/metadata/creationTimestamp"))
                    .unwrap_or(0),
                util::name(p).to_string(),
            )
        });
        if !deleting {
            plan.delete.extend(here[1..].iter().map(|p| (*p).clone()));
        }
        let pod = here[0];
        let is_new = str_at(pod, &format!("/metadata/labels/{REVISION_LABEL}")) == hash;
        if is_new {
            updated += 1;
        }
        if util::pod_ready(pod) {
            ready += 1;
        }
        let (avail, left) = util::pod_available(pod, min_ready, now);
        if let Some(left) = left {
            plan.requeue_after = Some(plan.requeue_after.map_or(left, |l: i64| l.min(left)));
        }
        if avail {
            available += 1;
        } else {
            unavailable_nodes += 1;
        }
        if !is_new {
            if avail {
                old_available.push(pod);
            } else {
                old_unavailable.push(pod);
            }
        }
    }
    // Pods on nodes that should not run one (or that are gone).
    for (_, here) in by_node {
        misscheduled += here.len() as i64;
        if !deleting {
            plan.delete.extend(here.into_iter().cloned());
        }
    }
    let rolling = str_at(ds, "/spec/updateStrategy/type") != "OnDelete";
    if rolling && !deleting {
        plan.delete.extend(old_unavailable.into_iter().cloned());
        let budget = (max_unavailable(ds, desired) - unavailable_nodes).max(0) as usize;
        old_available.sort_by_key(|p| util::name(p).to_string());
        plan.delete
            .extend(old_available.into_iter().take(budget).cloned());
    }

    let mut status = ds["status"].as_object().cloned().unwrap_or_default();
    status.insert("desiredNumberScheduled".into(), json!(desired));
    status.insert("currentNumberScheduled".into(), json!(current));
    status.insert("numberMisscheduled".into(), json!(misscheduled));
    status.insert("numberReady".into(), json!(ready));
    set_or_omit(&mut status, "numberAvailable", available);
    set_or_omit(&mut status, "numberUnavailable", desired - available);
    set_or_omit(&mut status, "updatedNumberScheduled", updated);
    set_or_omit(
        &mut status,
        "observedGeneration",
        util::int_at(ds, "/metadata/generation", 0),
    );
    let status = Value::Object(status);
    if ds.get("status") != Some(&status) {
        plan.status = Some(status);
    }
    plan
}

/// Runs [`reconcile`] against the store.
pub struct DaemonSetController;

#[async_trait]
impl Controller for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![
            util::daemonsets().key_prefix(None),
            util::pods().key_prefix(None),
            util::nodes().key_prefix(None),
        ]
    }

    async fn items_for(&self, store: &dyn Store, ev: &Event) -> Vec<String> {
        let key = &ev.record.key;
        if key.starts_with(&util::daemonsets().key_prefix(None)) {
            return vec![key.clone()];
        }
        if key.starts_with(&util::nodes().key_prefix(None)) {
            // Only what eligibility depends on: existence, labels, taints.
            let fingerprint = |rec: &cairn_store::Record| {
                decode(rec).ok().map(|n| {
                    json!([
                        n["metadata"]["labels"],
                        n["spec"]["taints"],
                        util::is_deleting(&n)
                    ])
                })
            };
            if let (Some(prev), cairn_store::EventKind::Put) = (&ev.prev, &ev.kind) {
                if fingerprint(prev) == fingerprint(&ev.record) {
                    return Vec::new();
                }
            }
            return self.all_items(store).await.unwrap_or_default();
        }
        let mut out = Vec::new();
        for rec in std::iter::once(&ev.record).chain(ev.prev.as_ref()) {
            if let Ok(pod) = decode(rec) {
                if let Some(k) = util::controller_key(&pod, "apps", "DaemonSet", util::daemonsets())
                {
                    if !out.contains(&k) {
                        out.push(k);
                    }
                }
            }
        }
        out
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let r = util::daemonsets();
        let all = util::list(store, &r.key_prefix(None)).await?;
        Ok(all.iter().map(|o| util::key_of(r, o)).collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(ds) = util::get(store, key).await? else {
            return Ok(None);
        };
        let pods_r = util::pods();
        let nodes = util::list(store, &util::nodes().key_prefix(None)).await?;
        let pods = util::list(store, &pods_r.key_prefix(Some(util::namespace(&ds)))).await?;
        let plan = reconcile(&ds, &nodes, &pods, cairn_wire::time::now_secs());
        for pod in &plan.delete {
            util::delete(store, pods_r, pod).await?;
        }
        for pod in plan.create {
            util::create(store, pods_r, pod).await?;
        }
        if let Some(status) = plan.status {
            let mut new = ds.clone();
            new["status"] = status;
            util::update(store, util::daemonsets(), &ds, new).await?;
        }
        Ok(plan
            .requeue_after
            .map(|s| Duration::from_secs(s.max(1) as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_wire::time::rfc3339;

    fn ds(strategy: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "default", "uid": "ds-uid",
                         "generation": 3, "resourceVersion": "7"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "updateStrategy": strategy,
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"nodeSelector": {"role": "worker"},
                                           "containers": [{"name": "c", "image": "agent:1"}]}}},
        })
    }

    fn node(name: &str, role: &str, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": {"role": role}},
               "spec": {"taints": taints},
               "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn pod(name: &str, node: &str, hash: &str, ready: bool) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "default",
                "resourceVersion": "2", "creationTimestamp": rfc3339(10),
                "labels": {"app": "agent", REVISION_LABEL: hash},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                    "name": "agent", "uid": "ds-uid", "controller": true}]},
            "spec": {"nodeName": node}, "status": {"phase": "Running"}});
        if ready {
            p["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": rfc3339(10)}]);
        }
        p
    }

    #[test]
    fn one_pinned_pod_per_eligible_node() {
        let nodes = [
            node("w1", "worker", json!([])),
            node(
                "w2",
                "worker",
                json!([{"key": "node.kubernetes.io/unschedulable",
                                         "effect": "NoSchedule"}]),
            ),
            node(
                "w3",
                "worker",
                json!([{"key": "gpu", "value": "x", "effect": "NoSchedule"}]),
            ),
            node("m1", "master", json!([])),
        ];
        let d = ds(json!({}));
        let plan = reconcile(&d, &nodes, &[], 100);
        let targets: Vec<String> = plan.create.iter().filter_map(pod_node).collect();
        assert_eq!(targets, ["w1", "w2"]);
        let p = &plan.create[0];
        assert!(p["spec"].get("nodeName").is_none());
        assert_eq!(
            p["metadata"]["labels"][REVISION_LABEL],
            json!(revision_hash(&d))
        );
        assert!(p["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/not-ready" && t["effect"] == "NoExecute"));
        assert!(crate::scheduler::matches_node_affinity(p, &nodes[0]));
        assert!(!crate::scheduler::matches_node_affinity(p, &nodes[1]));
        let st = plan.status.unwrap();
        assert_eq!(st["desiredNumberScheduled"], 2);
        assert_eq!(st["currentNumberScheduled"], 0);
        assert_eq!(st["observedGeneration"], 3);
    }

    #[test]
    fn deletes_misscheduled_extra_and_failed_pods() {
        let d = ds(json!({}));
        let h = revision_hash(&d);
        let nodes = [
            node("w1", "worker", json!([])),
            node("m1", "master", json!([])),
            node(
                "t1",
                "worker",
                json!([{"key": "k", "effect": "NoSchedule"}]),
            ),
            node("x1", "worker", json!([{"key": "k", "effect": "NoExecute"}])),
        ];
        let mut failed = pod("failed", "w1", &h, false);
        failed["status"]["phase"] = json!("Failed");
        let mut extra = pod("extra", "w1", &h, true);
        extra["metadata"]["creationTimestamp"] = json!(rfc3339(20));
        let pods = [
            pod("good", "w1", &h, true),
            extra,
            pod("wrong", "m1", &h, true),
            pod("stays", "t1", &h, true),
            pod("evicted", "x1", &h, true),
            pod("orphaned", "gone", &h, true),
            failed,
        ];
        let plan = reconcile(&d, &nodes, &pods, 100);
        let mut deleted: Vec<&str> = plan.delete.iter().map(util::name).collect();
        deleted.sort();
        assert_eq!(deleted, ["evicted", "extra", "failed", "orphaned", "wrong"]);
        assert!(plan.create.is_empty());
        let st = plan.status.unwrap();
        assert_eq!(st["desiredNumberScheduled"], 1);
        assert_eq!(st["numberMisscheduled"], 4);
        assert_eq!(st["numberReady"], 1);
        assert_eq!(st["numberAvailable"], 1);
        assert_eq!(st["updatedNumberScheduled"], 1);
    }

    #[test]
    fn rolling_update_respects_max_unavailable_and_on_delete_waits() {
        let nodes: Vec<Value> = (1..=4)
            .map(|i| node(&format!("w{i}"), "worker", json!([])))
            .collect();
        let pods: Vec<Value> = (1..=4)
            .map(|i| pod(&format!("p{i}"), &format!("w{i}"), "old", i != 4))
            .collect();
        // One old pod is unavailable: it goes, and uses the whole budget of 1.
        let plan = reconcile(&ds(json!({})), &nodes, &pods, 100);
        let deleted: Vec<&str> = plan.delete.iter().map(util::name).collect();
        assert_eq!(deleted, ["p4"]);
        let plan = reconcile(
            &ds(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "50%"}})),
            &nodes,
            &pods,
            100,
        );
        let deleted: Vec<&str> = plan.delete.iter().map(util::name).collect();
        assert_eq!(deleted, ["p4", "p1"]);
        let plan = reconcile(&ds(json!({"type": "OnDelete"})), &nodes, &pods, 100);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.status.unwrap().get("updatedNumberScheduled"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn daemonset_places_pods_on_a_store() {
        let (_dir, store) = crate::job::tests::temp_store().await;
        let s = &*store;
        let opts = crate::LoopOptions::default();
        let tasks = [
            crate::spawn(DaemonSetController, store.clone(), opts),
            crate::spawn(crate::scheduler::Scheduler, store.clone(), opts),
        ];
        for (n, role) in [("w1", "worker"), ("w2", "worker"), ("m1", "master")] {
            let mut nd = node(n, role, json!([]));
            nd["apiVersion"] = json!("v1");
            nd["kind"] = json!("Node");
            nd["status"]["allocatable"] = json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
            util::create(s, util::nodes(), nd).await.unwrap();
        }
        let mut d = ds(json!({}));
        d["metadata"] = json!({"name": "agent", "namespace": "default"});
        let d = util::create(s, util::daemonsets(), d).await.unwrap();
        let prefix = util::pods().key_prefix(Some("default"));
        let mut bound = crate::job::tests::eventually("two bound pods", || async {
            let pods = util::list(s, &prefix).await.unwrap();
            let bound: Vec<String> = pods
                .iter()
                .map(|p| str_at(p, "/spec/nodeName").to_string())
                .filter(|n| !n.is_empty())
                .collect();
            (pods.len() == 2 && bound.len() == 2).then_some(bound)
        })
        .await;
        bound.sort();
        assert_eq!(bound, ["w1", "w2"]);
        let key = util::key_of(util::daemonsets(), &d);
        crate::job::tests::eventually("status", || async {
            let d = util::get(s, &key).await.unwrap()?;
            let st = &d["status"];
            (st["desiredNumberScheduled"] == 2
                && st["currentNumberScheduled"] == 2
                && st["updatedNumberScheduled"] == 2)
                .then_some(())
        })
        .await;
        for t in tasks {
            t.abort();
        }
    }
}
