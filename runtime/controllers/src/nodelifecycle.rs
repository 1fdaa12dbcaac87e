//! The node lifecycle controller, after kube-controller-manager's: a node whose Lease in
//! `kube-node-lease` has not been renewed for the grace period (40 s) gets its conditions set
//! to Unknown ("Kubelet stopped posting node status.") and the `node.kubernetes.io/unreachable`
//! NoSchedule and NoExecute taints; a node that posts Ready=False gets the `not-ready` ones.
//! When the Lease is fresh and the node is Ready again, the taints go.
//!
//! Pods on a node with a NoExecute taint they do not tolerate are evicted (deleted the graceful
//! way, a deletionTimestamp) at once; those that tolerate it for `tolerationSeconds` are evicted
//! that long after the taint was added. A pod without a toleration for the unreachable or
//! not-ready taint counts as tolerating it for 300 s, as kube's DefaultTolerationSeconds
//! admission plugin would have given it. The clock is injectable for tests.

use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::resources::{self, Resource};
use cairn_store::{Event, Store};
use cairn_wire::events::EventType;
use cairn_wire::time::rfc3339;
use cairn_wire::value::str_at;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const GRACE_PERIOD_SECS: i64 = 40;
pub const DEFAULT_TOLERATION_SECS: i64 = 300;
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

pub(crate) fn leases() -> &'static Resource {
    resources::find("coordination.k8s.io", "v1", "leases")
        .expect("leases missing from the resource table")
}

/// What one sync of a node must do.
#[derive(Debug, Default)]
pub struct Plan {
    /// The node to write, when its conditions or taints change.
    pub node: Option<Value>,
    /// Pods to evict.
    pub evict: Vec<Value>,
    /// Look again after this many seconds (the lease expires, a toleration runs out).
    pub requeue_after: Option<i64>,
}

impl Plan {
    fn requeue(&mut self, secs: i64) {
        let secs = secs.max(1);
        self.requeue_after = Some(self.requeue_after.map_or(secs, |s| s.min(secs)));
    }
}

/// What changes when a node's agent is alive: its Lease's renewTime and its Ready
/// condition's heartbeat. Like kube, the controller times the grace period from when *it* saw
/// this change (its own clock), not from the timestamps, so clock skew between machines and
/// hand-made Node objects with old timestamps do not matter.
pub fn heartbeat_fingerprint(node: &Value, lease: Option<&Value>) -> String {
    let renew = lease.map_or("", |l| str_at(l, "/spec/renewTime"));
    let beat = util::condition(node, "Ready").map_or("", |c| str_at(c, "/lastHeartbeatTime"));
    format!("{renew}|{beat}")
}

fn taint_is(t: &Value, key: &str, effect: &str) -> bool {
    t["key"].as_str() == Some(key) && t["effect"].as_str() == Some(effect)
}

/// The taints with those of `key` set to `present`; NoExecute ones get `timeAdded` `now`.
fn set_taints(taints: &mut Vec<Value>, key: &str, present: bool, now: i64) {
    if !present {
        taints.retain(|t| t["key"].as_str() != Some(key));
        return;
    }
    for effect in ["NoSchedule", "NoExecute"] {
        if !taints.iter().any(|t| taint_is(t, key, effect)) {
            let mut t = json!({"key": key, "effect": effect});
            if effect == "NoExecute" {
                t["timeAdded"] = json!(rfc3339(now));
            }
            taints.push(t);
        }
    }
}

/// Whether a toleration tolerates a taint.
pub fn tolerates(tol: &Value, taint: &Value) -> bool {
    let effect = tol["effect"].as_str().unwrap_or("");
    if !effect.is_empty() && Some(effect) != taint["effect"].as_str() {
        return false;
    }
    let key = tol["key"].as_str().unwrap_or("");
    match tol["operator"].as_str().unwrap_or("Equal") {
        "Exists" => key.is_empty() || Some(key) == taint["key"].as_str(),
        _ => {
            Some(key) == taint["key"].as_str()
                && tol["value"].as_str().unwrap_or("") == taint["value"].as_str().unwrap_or("")
        }
    }
}

/// How long a pod tolerates a NoExecute taint: `None` forever, `Some(0)` not at all.
pub fn toleration_secs(pod: &Value, taint: &Value) -> Option<i64> {
    let tols: Vec<&Value> = pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| tolerates(t, taint))
        .collect();
    if tols.is_empty() {
        let key = taint["key"].as_str().unwrap_or("");
        return Some(if key == UNREACHABLE || key == NOT_READY {
            DEFAULT_TOLERATION_SECS
        } else {
            0
        });
    }
    // The shortest bounded toleration wins; only unbounded ones tolerate forever.
    tols.iter()
        .filter_map(|t| t["tolerationSeconds"].as_i64())
        .min()
        .map(|s| s.max(0))
}

/// Decides a node's conditions, taints and evictions at `now`, from the node, when it was
/// last heard from (`heard`), and every pod bound to it.
pub fn reconcile(node: &Value, heard: i64, pods: &[Value], now: i64, grace: i64) -> Plan {
    let mut plan = Plan::default();
    if util::is_deleting(node) {
        return plan;
    }
    let stale = now - heard > grace;
    let mut new = node.clone();
    let mut taints: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = util::condition(node, "Ready").map(|c| str_at(c, "/status").to_string());
    if stale {
        let mut conditions: Vec<Value> = node["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !conditions.iter().any(|c| c["type"] == "Ready") {
            conditions.push(json!({"type": "Ready", "status": "Unknown",
                "reason": "NodeStatusNeverUpdated", "message": "Kubelet never posted node status.",
                "lastTransitionTime": rfc3339(now)}));
        }
        for c in &mut conditions {
            if c["status"] != "Unknown" {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(rfc3339(now));
            }
        }
        new["status"]["conditions"] = Value::Array(conditions);
        set_taints(&mut taints, NOT_READY, false, now);
        set_taints(&mut taints, UNREACHABLE, true, now);
    } else {
        plan.requeue(heard + grace - now + 1);
        match ready.as_deref() {
            Some("True") => {
                set_taints(&mut taints, UNREACHABLE, false, now);
                set_taints(&mut taints, NOT_READY, false, now);
            }
            Some("False") => {
                set_taints(&mut taints, UNREACHABLE, false, now);
                set_taints(&mut taints, NOT_READY, true, now);
            }
            // Heard from, but no status posted yet: leave the taints.
            _ => {}
        }
    }
    if taints.is_empty() {
        if let Some(spec) = new["spec"].as_object_mut() {
            spec.remove("taints");
        }
    } else {
        new["spec"]["taints"] = Value::Array(taints.clone());
    }
    if new != *node {
        plan.node = Some(new);
    }

    let no_execute: Vec<&Value> = taints
        .iter()
        .filter(|t| t["effect"] == "NoExecute")
        .collect();
    if no_execute.is_empty() {
        return plan;
    }
    for pod in pods {
        if str_at(pod, "/spec/nodeName") != util::name(node) || !util::pod_active(pod) {
            continue;
        }
        // The earliest time any taint's toleration runs out.
        let mut evict_at: Option<i64> = None;
        for t in &no_execute {
            let Some(secs) = toleration_secs(pod, t) else {
                continue;
            };
            let added = t["timeAdded"]
                .as_str()
                .and_then(cairn_wire::time::parse_rfc3339)
                .unwrap_or(now);
            let at = added + secs;
            evict_at = Some(evict_at.map_or(at, |e| e.min(at)));
        }
        match evict_at {
            Some(at) if at <= now => plan.evict.push(pod.clone()),
            Some(at) => plan.requeue(at - now),
            None => {}
        }
    }
    plan
}

/// Runs [`reconcile`] against the store. Work items are Node keys.
pub struct NodeLifecycleController {
    /// Seconds since the epoch now.
    pub clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    pub grace_period: i64,
    /// Per node: the heartbeat fingerprint last seen and when (by `clock`) it was first seen.
    observed: Mutex<HashMap<String, (String, i64)>>,
}

impl Default for NodeLifecycleController {
    fn default() -> Self {
        Self::with_clock(Arc::new(cairn_wire::time::now_secs))
    }
}

impl NodeLifecycleController {
    pub fn with_clock(clock: Arc<dyn Fn() -> i64 + Send + Sync>) -> Self {
        NodeLifecycleController {
            clock,
            grace_period: GRACE_PERIOD_SECS,
            observed: Mutex::new(HashMap::new()),
        }
    }

    /// When the node was last heard from: when its heartbeat fingerprint last changed.
    fn heard(&self, node: &str, fingerprint: String, now: i64) -> i64 {
        let mut seen = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(node) {
            Some((f, at)) if *f == fingerprint => *at,
            _ => {
                seen.insert(node.to_string(), (fingerprint, now));
                now
            }
        }
    }
}

#[async_trait]
impl Controller for NodeLifecycleController {
    fn name(&self) -> &'static str {
        "nodelifecycle"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![
            util::nodes().key_prefix(None),
            leases().key_prefix(Some(LEASE_NAMESPACE)),
        ]
    }

    async fn items_for(&self, _store: &dyn Store, ev: &Event) -> Vec<String> {
        let name = ev.record.key.rsplit('/').next().unwrap_or("");
        vec![util::nodes().key(None, name)]
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let r = util::nodes();
        Ok(util::list(store, &r.key_prefix(None))
            .await?
            .iter()
            .map(|o| util::key_of(r, o))
            .collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(node) = util::get(store, key).await? else {
            let name = key.rsplit('/').next().unwrap_or("");
            self.observed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            return Ok(None);
        };
        let lease = util::get(
            store,
            &leases().key(Some(LEASE_NAMESPACE), util::name(&node)),
        )
        .await?;
        let now = (self.clock)();
        let heard = self.heard(
            util::name(&node),
            heartbeat_fingerprint(&node, lease.as_ref()),
            now,
        );
        // Pods are only needed when the node has (or gets) a NoExecute taint: lease renewals
        // of healthy nodes do not list every pod.
        let first = reconcile(&node, heard, &[], now, self.grace_period);
        let tainted = first.node.as_ref().unwrap_or(&node)["spec"]["taints"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["effect"] == "NoExecute"));
        if !tainted {
            if let Some(new) = first.node {
                let written = util::update(store, util::nodes(), &node, new).await?;
                record_readiness_change(store, &node, &written).await;
            }
            return Ok(first
                .requeue_after
                .map(|s| Duration::from_secs(s.max(1) as u64)));
        }
        let pods: Vec<Value> = util::list(store, &util::pods().key_prefix(None))
            .await?
            .into_iter()
            .filter(|p| str_at(p, "/spec/nodeName") == util::name(&node))
            .collect();
        let plan = reconcile(&node, heard, &pods, now, self.grace_period);
        if let Some(new) = plan.node {
            let written = util::update(store, util::nodes(), &node, new).await?;
            record_readiness_change(store, &node, &written).await;
        }
        for pod in &plan.evict {
            tracing::info!(pod = %util::name(pod), node = %util::name(&node), "evicting pod from unreachable node");
            util::delete(store, util::pods(), pod).await?;
            let message = format!(
                "Marking for deletion Pod {}/{}",
                util::namespace(pod),
                util::name(pod)
            );
            util::record_event(
                store,
                COMPONENT,
                pod,
                EventType::Normal,
                "TaintManagerEviction",
                message,
            )
            .await;
        }
        Ok(plan
            .requeue_after
            .map(|s| Duration::from_secs(s.max(1) as u64)))
    }
}

/// The node lifecycle controller's name in its Events.
const COMPONENT: &str = "node-controller";

/// A NodeNotReady Event when the controller took a node's Ready condition away.
async fn record_readiness_change(store: &dyn Store, before: &Value, after: &Value) {
    let ready = |n: &Value| util::condition(n, "Ready").map(|c| c["status"].clone());
    if ready(before) == Some(serde_json::json!("True")) && ready(after) != ready(before) {
        let message = format!("Node {} status is now: NodeNotReady", util::name(after));
        util::record_event(
            store,
            COMPONENT,
            after,
            EventType::Normal,
            "NodeNotReady",
            message,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{eventually, open_store, opts};

    fn node(ready: &str) -> Value {
        json!({"metadata": {"name": "n1", "creationTimestamp": rfc3339(0)},
               "spec": {},
               "status": {"conditions": [
                   {"type": "Ready", "status": ready, "reason": "KubeletReady",
                    "lastTransitionTime": rfc3339(0)},
                   {"type": "MemoryPressure", "status": "False"}]}})
    }

    fn lease(renewed: i64) -> Value {
        json!({"metadata": {"name": "n1", "namespace": LEASE_NAMESPACE},
               "spec": {"holderIdentity": "n1", "renewTime": format!("{}", rfc3339(renewed).replace('Z', ".000000Z"))}})
    }

    fn pod(name: &str, tolerations: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"},
               "spec": {"nodeName": "n1", "tolerations": tolerations},
               "status": {"phase": "Running"}})
    }

    #[test]
    fn stale_lease_marks_unknown_and_taints() {
        let n = node("True");
        let fresh = reconcile(&n, 1000, &[], 1030, 40);
        assert!(fresh.node.is_none());
        assert_eq!(fresh.requeue_after, Some(11));

        let plan = reconcile(&n, 1000, &[], 1041, 40);
        let new = plan.node.unwrap();
        let ready = util::condition(&new, "Ready").unwrap();
        assert_eq!(ready["status"], "Unknown");
        assert_eq!(ready["reason"], "NodeStatusUnknown");
        assert_eq!(ready["message"], "Kubelet stopped posting node status.");
        assert_eq!(
            util::condition(&new, "MemoryPressure").unwrap()["status"],
            "Unknown"
        );
        let taints = new["spec"]["taints"].as_array().unwrap();
        assert_eq!(taints.len(), 2);
        assert!(taints
            .iter()
            .any(|t| taint_is(t, UNREACHABLE, "NoSchedule")));
        let ne = taints
            .iter()
            .find(|t| taint_is(t, UNREACHABLE, "NoExecute"))
            .unwrap();
        assert_eq!(ne["timeAdded"], rfc3339(1041));
        // Stable once written.
        assert!(reconcile(&new, 1000, &[], 1100, 40).node.is_none());

        // The lease is fresh but the node has not posted Ready yet: taints stay.
        assert!(reconcile(&new, 1200, &[], 1201, 40).node.is_none());
        // Ready again: they go.
        let mut back = new.clone();
        back["status"]["conditions"][0]["status"] = json!("True");
        let healed = reconcile(&back, 1200, &[], 1201, 40).node.unwrap();
        assert!(healed["spec"].get("taints").is_none());
    }

    #[test]
    fn not_ready_node_gets_not_ready_taints() {
        let plan = reconcile(&node("False"), 1000, &[], 1001, 40);
        let t = plan.node.unwrap()["spec"]["taints"].clone();
        assert!(t.as_array().unwrap().iter().all(|t| t["key"] == NOT_READY));
    }

    #[test]
    fn evictions_follow_tolerations() {
        let mut n = node("Unknown");
        n["spec"]["taints"] = json!([
            {"key": UNREACHABLE, "effect": "NoSchedule"},
            {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": rfc3339(2000)}]);
        let pods = vec![
            pod("default", json!([])),
            pod(
                "short",
                json!([{"key": UNREACHABLE, "operator": "Exists",
                                 "effect": "NoExecute", "tolerationSeconds": 10}]),
            ),
            pod("forever", json!([{"operator": "Exists"}])),
        ];
        let names = |p: &Plan| {
            p.evict
                .iter()
                .map(|p| util::name(p).to_string())
                .collect::<Vec<_>>()
        };
        let p = reconcile(&n, 1900, &pods, 2005, 40);
        assert!(p.evict.is_empty());
        assert_eq!(p.requeue_after, Some(5));
        let p = reconcile(&n, 1900, &pods, 2010, 40);
        assert_eq!(names(&p), ["short"]);
        assert_eq!(p.requeue_after, Some(290));
        let p = reconcile(&n, 1900, &pods, 2300, 40);
        assert_eq!(names(&p), ["default", "short"]);
        // Pods of other nodes, and finished or deleting ones, are left alone.
        let mut other = pod("other", json!([]));
        other["spec"]["nodeName"] = json!("n2");
        let mut gone = pod("gone", json!([]));
        gone["metadata"]["deletionTimestamp"] = json!(rfc3339(2200));
        assert!(reconcile(&n, 1900, &[other, gone], 2300, 40)
            .evict
            .is_empty());
    }

    #[test]
    fn toleration_matching() {
        let taint = json!({"key": UNREACHABLE, "effect": "NoExecute"});
        assert!(tolerates(&json!({"operator": "Exists"}), &taint));
        assert!(tolerates(
            &json!({"key": UNREACHABLE, "operator": "Exists"}),
            &taint
        ));
        assert!(!tolerates(
            &json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"}),
            &taint
        ));
        assert!(!tolerates(
            &json!({"key": "other", "operator": "Exists"}),
            &taint
        ));
        let custom = json!({"key": "dedicated", "value": "x", "effect": "NoExecute"});
        assert_eq!(toleration_secs(&pod("p", json!([])), &custom), Some(0));
        assert_eq!(
            toleration_secs(
                &pod("p", json!([{"key": "dedicated", "value": "x"}])),
                &custom
            ),
            None
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn taints_and_evicts_on_a_real_store() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(&dir).await;
        let s = &*store;
        let now = Arc::new(AtomicI64::new(1_000_000));
        let clock = now.clone();
        let c = NodeLifecycleController::with_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
        let (nodes, pods) = (util::nodes(), util::pods());
        util::create(
            s,
            nodes,
            json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1"}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .await
        .unwrap();
        util::create(s, leases(), lease(1_000_000)).await.unwrap();
        util::create(
            s,
            pods,
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running"}}),
        )
        .await
        .unwrap();
        let task = crate::spawn(c, store.clone(), opts());
        let lease_key = leases().key(Some(LEASE_NAMESPACE), "n1");
        // Touching the lease (unchanged) makes the controller look again.
        let touch = || async {
            let l = util::get(s, &lease_key).await.unwrap().unwrap();
            let mut t = l.clone();
            t["metadata"]["annotations"] =
                json!({"touched": now.load(Ordering::SeqCst).to_string()});
            util::update(s, leases(), &l, t).await.unwrap();
        };
        let node_key = nodes.key(None, "n1");
        let pod_key = pods.key(Some("default"), "p");

        // Time passes without heartbeats (the controller times the grace period from when it
        // first saw the node, so keep moving the clock until it has).
        let node = eventually("unreachable taints", || async {
            now.fetch_add(GRACE_PERIOD_SECS + 1, Ordering::SeqCst);
            touch().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = util::get(s, &node_key).await.unwrap()?;
            (n["spec"]["taints"].as_array()?.len() == 2).then_some(n)
        })
        .await;
        let added = node["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|t| {
                t["timeAdded"]
                    .as_str()
                    .and_then(cairn_wire::time::parse_rfc3339)
            })
            .unwrap();
        assert_eq!(
            util::condition(&node, "Ready").unwrap()["status"],
            "Unknown"
        );
        assert!(!util::is_deleting(
            &util::get(s, &pod_key).await.unwrap().unwrap()
        ));

        now.store(added + DEFAULT_TOLERATION_SECS, Ordering::SeqCst);
        touch().await;
        eventually("the pod evicted", || async {
            let p = util::get(s, &pod_key).await.unwrap()?;
            util::is_deleting(&p).then_some(())
        })
        .await;

        // The node comes back.
        let l = util::get(s, &lease_key).await.unwrap().unwrap();
        let mut renewed = l.clone();
        renewed["spec"]["renewTime"] = json!(rfc3339(now.load(Ordering::SeqCst)));
        util::update(s, leases(), &l, renewed).await.unwrap();
        eventually("taints removed", || async {
            let n = util::get(s, &node_key).await.unwrap()?;
            if util::condition(&n, "Ready")?["status"] != "True" {
                // The agent posts Ready (may race with the controller: retried).
                let mut ready = n.clone();
                ready["status"]["conditions"][0]["status"] = json!("True");
                let _ = util::update(s, nodes, &n, ready).await;
                return None;
            }
            n["spec"].get("taints").is_none().then_some(())
        })
        .await;
        task.abort();
    }
}
