//! The scheduler: binds each pod without `spec.nodeName` to a node, as kube-scheduler's
//! default profile does for the common cases.
//!
//! Filters, in kube-scheduler's order, each giving its reason for a node it rejects:
//! NodeUnschedulable (`spec.unschedulable`, unless tolerated), TaintToleration (NoSchedule and
//! NoExecute taints; a node that is not Ready counts as tainted `node.kubernetes.io/not-ready`
//! — or `unreachable` when its Ready status is Unknown — as the node lifecycle controller
//! would taint it), NodeAffinity (`nodeSelector` and required node affinity: matchExpressions
//! In/NotIn/Exists/DoesNotExist/Gt/Lt and matchFields on metadata.name), NodePorts (host
//! ports in use) and NodeResourcesFit (requests against allocatable minus the requests of the
//! pods already there, and the pod count). Among the nodes left, the least allocated wins
//! (cpu and memory, counting 100m / 200Mi for containers that request nothing, so such pods
//! spread); ties go to the first node by name.
//!
//! A bound pod gets `spec.nodeName` and the condition PodScheduled=True; a pod no node fits
//! gets PodScheduled=False, reason Unschedulable, with kube-scheduler's message
//! (`0/2 nodes are available: 1 Insufficient cpu, 1 node(s) were unschedulable.`), and is
//! tried again when nodes change, a bound pod goes away, or at the periodic resync.

use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::objects::decode;
use cairn_store::{Event, EventKind, Store};
use cairn_wire::events::EventType;
use cairn_wire::quantity::parse_quantity;
use cairn_wire::time::now_rfc3339;
use cairn_wire::value::str_at;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
const DEFAULT_MAX_PODS: i128 = 110;
/// What kube-scheduler counts, for scoring only, for a container requesting no cpu (in
/// millicores) / memory (in bytes).
const DEFAULT_MILLI_CPU: i128 = 100;
const DEFAULT_MEMORY: i128 = 200 * 1024 * 1024;

/// Requests in thousandths of each resource's unit.
type Resources = BTreeMap<String, i128>;

fn quantities(v: &Value) -> Resources {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, q)| Some((k.clone(), parse_quantity(q.as_str()?)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// A container's requests (a resource with only a limit requests its limit).
fn container_requests(c: &Value) -> Resources {
    let mut r = quantities(&c["resources"]["limits"]);
    r.extend(quantities(&c["resources"]["requests"]));
    r
}

/// The pod's effective requests: the sum over containers, at least each init container's,
/// plus the overhead.
pub fn pod_requests(pod: &Value) -> Resources {
    let spec = &pod["spec"];
    let mut total = Resources::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        for (k, v) in container_requests(c) {
            *total.entry(k).or_default() += v;
        }
    }
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        for (k, v) in container_requests(c) {
            let e = total.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    for (k, v) in quantities(&spec["overhead"]) {
        *total.entry(k).or_default() += v;
    }
    total
}

/// cpu and memory as the scorer counts them (defaults for containers requesting nothing).
fn nonzero_requests(pod: &Value) -> (i128, i128) {
    let mut cpu = 0;
    let mut mem = 0;
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let r = container_requests(c);
        cpu += r.get("cpu").copied().unwrap_or(DEFAULT_MILLI_CPU);
        mem += r.get("memory").copied().unwrap_or(DEFAULT_MEMORY * 1000);
    }
    (cpu, mem)
}

fn toleration_matches(t: &Value, key: &str, value: &str, effect: &str) -> bool {
    let t_effect = str_at(t, "/effect");
    if !t_effect.is_empty() && t_effect != effect {
        return false;
    }
    let t_key = str_at(t, "/key");
    if !t_key.is_empty() && t_key != key {
        return false;
    }
    match str_at(t, "/operator") {
        "Exists" => true,
        "" | "Equal" => str_at(t, "/value") == value,
        _ => false,
    }
}

fn tolerates(pod: &Value, key: &str, value: &str, effect: &str) -> bool {
    pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| toleration_matches(t, key, value, effect))
}

/// The node's taints, with the one the node lifecycle controller would add when the node is
/// not Ready.
fn effective_taints(node: &Value) -> Vec<(String, String, String)> {
    let mut taints: Vec<(String, String, String)> = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                str_at(t, "/key").to_string(),
                str_at(t, "/value").to_string(),
                str_at(t, "/effect").to_string(),
            )
        })
        .collect();
    let ready = util::condition(node, "Ready").map(|c| str_at(c, "/status"));
    let implied = match ready {
        Some("True") => None,
        Some("Unknown") => Some("node.kubernetes.io/unreachable"),
        _ => Some("node.kubernetes.io/not-ready"),
    };
    if let Some(k) = implied {
        if !taints.iter().any(|(key, _, _)| key == k) {
            taints.push((k.to_string(), String::new(), "NoSchedule".to_string()));
        }
    }
    taints
}

fn expression_matches(e: &Value, lookup: impl Fn(&str) -> Option<String>) -> bool {
    let key = str_at(e, "/key");
    let values: Vec<&str> = e["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let have = lookup(key);
    match str_at(e, "/operator") {
        "In" => have.is_some_and(|h| values.contains(&h.as_str())),
        "NotIn" => !have.is_some_and(|h| values.contains(&h.as_str())),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(Ok(h)), Some(Ok(v))) = (
                have.map(|h| h.parse::<i64>()),
                values.first().map(|v| v.parse::<i64>()),
            ) else {
                return false;
            };
            if op == "Gt" {
                h > v
            } else {
                h < v
            }
        }
        _ => false,
    }
}

/// `nodeSelector` and required node affinity (NodeAffinity's filter).
pub fn matches_node_affinity(pod: &Value, node: &Value) -> bool {
    let labels = node["metadata"]["labels"].as_object();
    let label = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if let Some(sel) = pod["spec"]["nodeSelector"].as_object() {
        if !sel.iter().all(|(k, v)| label(k).as_deref() == v.as_str()) {
            return false;
        }
    }
    let required =
        &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    if required.is_null() {
        return true;
    }
    let field = |k: &str| (k == "metadata.name").then(|| util::name(node).to_string());
    required["nodeSelectorTerms"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|term| {
            let exprs = term["matchExpressions"].as_array();
            let fields = term["matchFields"].as_array();
            let n = exprs.map_or(0, Vec::len) + fields.map_or(0, Vec::len);
            n > 0
                && exprs
                    .into_iter()
                    .flatten()
                    .all(|e| expression_matches(e, label))
                && fields
                    .into_iter()
                    .flatten()
                    .all(|e| expression_matches(e, field))
        })
}

/// (protocol, hostIP, port) of every host port a pod asks for.
fn host_ports(pod: &Value) -> Vec<(String, String, i64)> {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod["spec"][*f].as_array())
        .flatten()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| {
            let port = p["hostPort"].as_i64().filter(|p| *p > 0)?;
            let proto = match str_at(p, "/protocol") {
                "" => "TCP",
                x => x,
            };
            let ip = match str_at(p, "/hostIP") {
                "" => "0.0.0.0",
                x => x,
            };
            Some((proto.to_string(), ip.to_string(), port))
        })
        .collect()
}

fn allocatable(node: &Value) -> Resources {
    let mut a = quantities(&node["status"]["capacity"]);
    a.extend(quantities(&node["status"]["allocatable"]));
    a
}

/// Why a node cannot take the pod (empty: it can). One filter's reasons, as kube-scheduler
/// stops at the first filter that fails.
pub fn filter(pod: &Value, node: &Value, pods_on_node: &[&Value]) -> Vec<String> {
    if node["spec"]["unschedulable"].as_bool() == Some(true)
        && !tolerates(pod, "node.kubernetes.io/unschedulable", "", "NoSchedule")
    {
        return vec!["node(s) were unschedulable".into()];
    }
    for (key, value, effect) in effective_taints(node) {
        if (effect == "NoSchedule" || effect == "NoExecute")
            && !tolerates(pod, &key, &value, &effect)
        {
            return vec![format!("node(s) had untolerated taint {{{key}: {value}}}")];
        }
    }
    if !matches_node_affinity(pod, node) {
        return vec!["node(s) didn't match Pod's node affinity/selector".into()];
    }
    let wanted = host_ports(pod);
    if !wanted.is_empty() {
        let used: Vec<(String, String, i64)> =
            pods_on_node.iter().flat_map(|p| host_ports(p)).collect();
        let conflict = wanted.iter().any(|(proto, ip, port)| {
            used.iter().any(|(p2, ip2, port2)| {
                proto == p2 && port == port2 && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
            })
        });
        if conflict {
            return vec!["node(s) didn't have free ports for the requested pod ports".into()];
        }
    }
    let alloc = allocatable(node);
    let mut reasons = Vec::new();
    let max_pods = alloc
        .get("pods")
        .map(|p| p / 1000)
        .unwrap_or(DEFAULT_MAX_PODS);
    if pods_on_node.len() as i128 + 1 > max_pods {
        reasons.push("Too many pods".to_string());
    }
    let requests = pod_requests(pod);
    let mut used = Resources::new();
    for p in pods_on_node {
        for (k, v) in pod_requests(p) {
            *used.entry(k).or_default() += v;
        }
    }
    for (res, want) in requests.iter().filter(|(_, v)| **v > 0) {
        let have = alloc.get(res).copied().unwrap_or(0) - used.get(res).copied().unwrap_or(0);
        if *want > have {
            reasons.push(format!("Insufficient {res}"));
        }
    }
    reasons
}

/// NodeResourcesFit's LeastAllocated score (0–100).
fn score(pod: &Value, node: &Value, pods_on_node: &[&Value]) -> i128 {
    let alloc = allocatable(node);
    let (mut cpu, mut mem) = nonzero_requests(pod);
    for p in pods_on_node {
        let (c, m) = nonzero_requests(p);
        cpu += c;
        mem += m;
    }
    let part = |capacity: i128, requested: i128| {
        if capacity == 0 || requested > capacity {
            0
        } else {
            (capacity - requested) * 100 / capacity
        }
    };
    (part(alloc.get("cpu").copied().unwrap_or(0), cpu)
        + part(alloc.get("memory").copied().unwrap_or(0), mem))
        / 2
}

/// Whether the pod still occupies its node's resources.
fn occupies(pod: &Value) -> bool {
    !matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// Picks a node for the pod among `nodes`, given every pod (bound ones count against their
/// node); `Err` carries the Unschedulable message.
pub fn schedule(pod: &Value, nodes: &[Value], pods: &[Value]) -> Result<String, String> {
    if nodes.is_empty() {
        return Err("no nodes available to schedule pods".into());
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(i128, &str)> = None;
    for node in nodes {
        let name = util::name(node);
        let on_node: Vec<&Value> = pods
            .iter()
            .filter(|p| str_at(p, "/spec/nodeName") == name && occupies(p))
            .filter(|p| util::uid(p) != util::uid(pod) || util::uid(pod).is_empty())
            .collect();
        let why = filter(pod, node, &on_node);
        if !why.is_empty() {
            for r in why {
                *reasons.entry(r).or_default() += 1;
            }
            continue;
        }
        let s = score(pod, node, &on_node);
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, name));
        }
    }
    if let Some((_, name)) = best {
        return Ok(name.to_string());
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    Err(format!(
        "0/{} nodes are available: {}.",
        nodes.len(),
        parts.join(", ")
    ))
}

/// Whether the scheduler should place this pod.
pub fn needs_scheduling(pod: &Value) -> bool {
    str_at(pod, "/spec/nodeName").is_empty()
        && !util::is_deleting(pod)
        && occupies(pod)
        && matches!(str_at(pod, "/spec/schedulerName"), "" | DEFAULT_SCHEDULER)
}

/// Sets a pod condition (keeping lastTransitionTime when its status does not change);
/// returns whether anything changed.
fn set_pod_condition(pod: &mut Value, mut cond: Value) -> bool {
    let kind = str_at(&cond, "/type").to_string();
    if let Some(cur) = util::condition(pod, &kind) {
        let same = ["status", "reason", "message"]
            .iter()
            .all(|f| cur.get(*f) == cond.get(*f));
        if same {
            return false;
        }
        if cur["status"] == cond["status"] {
            cond["lastTransitionTime"] = cur["lastTransitionTime"].clone();
        }
    }
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    if let Some(list) = pod["status"]["conditions"].as_array_mut() {
        match list.iter_mut().find(|c| c["type"].as_str() == Some(&kind)) {
            Some(c) => *c = cond,
            None => list.push(cond),
        }
    }
    true
}

/// The pod as it should be written after a scheduling attempt, or `None` when nothing changes.
pub fn scheduled_pod(pod: &Value, result: &Result<String, String>, now: &str) -> Option<Value> {
    let mut new = pod.clone();
    match result {
        Ok(node) => {
            new["spec"]["nodeName"] = json!(node);
            set_pod_condition(
                &mut new,
                json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                       "lastTransitionTime": now}),
            );
            Some(new)
        }
        Err(message) => set_pod_condition(
            &mut new,
            json!({"type": "PodScheduled", "status": "False", "lastProbeTime": null,
                   "lastTransitionTime": now, "reason": "Unschedulable", "message": message}),
        )
        .then_some(new),
    }
}

/// What of a node matters to scheduling (so heartbeats do not wake the scheduler).
fn node_fingerprint(node: &Value) -> Value {
    json!([
        node["metadata"]["labels"],
        node["spec"]["taints"],
        node["spec"]["unschedulable"],
        node["status"]["allocatable"],
        node["status"]["capacity"],
        util::condition(node, "Ready").map(|c| c["status"].clone()),
    ])
}

/// The scheduler's name in its Events, as kube-scheduler reports itself.
const COMPONENT: &str = "default-scheduler";

/// Runs [`schedule`] against the store.
pub struct Scheduler;

impl Scheduler {
    async fn pending(store: &dyn Store) -> Result<Vec<String>> {
        let r = util::pods();
        let pods = util::list(store, &r.key_prefix(None)).await?;
        Ok(pods
            .iter()
            .filter(|p| needs_scheduling(p))
            .map(|p| util::key_of(r, p))
            .collect())
    }
}

#[async_trait]
impl Controller for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![
            util::pods().key_prefix(None),
            util::nodes().key_prefix(None),
        ]
    }

    async fn items_for(&self, store: &dyn Store, ev: &Event) -> Vec<String> {
        let Ok(obj) = decode(&ev.record) else {
            return Vec::new();
        };
        let prev = ev.prev.as_ref().and_then(|p| decode(p).ok());
        let cluster_changed = if ev.record.key.starts_with(&util::nodes().key_prefix(None)) {
            ev.kind == EventKind::Delete
                || prev.as_ref().map(node_fingerprint) != Some(node_fingerprint(&obj))
        } else {
            // A bound pod that goes away (or finishes) frees room on its node.
            let bound = !str_at(&obj, "/spec/nodeName").is_empty();
            let freed = ev.kind == EventKind::Delete
                || (!occupies(&obj) && prev.as_ref().is_some_and(occupies));
            if !bound || !freed {
                return if ev.kind == EventKind::Put && needs_scheduling(&obj) {
                    vec![ev.record.key.clone()]
                } else {
                    Vec::new()
                };
            }
            true
        };
        if cluster_changed {
            Self::pending(store).await.unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        Self::pending(store).await
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(pod) = util::get(store, key).await? else {
            return Ok(None);
        };
        if !needs_scheduling(&pod) {
            return Ok(None);
        }
        let nodes = util::list(store, &util::nodes().key_prefix(None)).await?;
        let pods = util::list(store, &util::pods().key_prefix(None)).await?;
        let result = schedule(&pod, &nodes, &pods);
        if let Some(new) = scheduled_pod(&pod, &result, &now_rfc3339()) {
            let written = util::update(store, util::pods(), &pod, new).await?;
            let (ns, name) = (util::namespace(&pod), util::name(&pod));
            match &result {
                Ok(node) => {
                    tracing::debug!(%key, %node, "scheduled");
                    let message = format!("Successfully assigned {ns}/{name} to {node}");
                    util::record_event(
                        store,
                        COMPONENT,
                        &written,
                        EventType::Normal,
                        "Scheduled",
                        message,
                    )
                    .await;
                }
                Err(why) => {
                    tracing::debug!(%key, %why, "unschedulable");
                    util::record_event(
                        store,
                        COMPONENT,
                        &written,
                        EventType::Warning,
                        "FailedScheduling",
                        why.as_str(),
                    )
                    .await;
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, mem: &str) -> Value {
        json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })
    }

    fn pod(cpu: Option<&str>) -> Value {
        let mut p = json!({"metadata": {"name": "p", "namespace": "default", "uid": "p-uid"},
                           "spec": {"containers": [{"name": "c", "image": "x"}]}});
        if let Some(c) = cpu {
            p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": c}});
        }
        p
    }

    fn bound(name: &str, node: &str, cpu: &str) -> Value {
        let mut p = pod(Some(cpu));
        p["metadata"]["name"] = json!(name);
        p["metadata"]["uid"] = json!(format!("{name}-uid"));
        p["spec"]["nodeName"] = json!(node);
        p
    }

    #[test]
    fn least_allocated_node_wins() {
        let nodes = [node("a", "2", "4Gi"), node("b", "2", "4Gi")];
        let pods = [bound("x", "a", "1")];
        assert_eq!(schedule(&pod(Some("500m")), &nodes, &pods), Ok("b".into()));
        // Pods that request nothing still spread.
        let pods = [bound("x", "a", "0")];
        assert_eq!(schedule(&pod(None), &nodes, &pods), Ok("b".into()));
        // Finished pods take no room.
        let mut done = bound("y", "b", "2");
        done["status"]["phase"] = json!("Succeeded");
        assert_eq!(
            schedule(&pod(Some("1500m")), &nodes, &[bound("x", "a", "1"), done]),
            Ok("b".into())
        );
    }

    #[test]
    fn unschedulable_messages_follow_kube_scheduler() {
        let mut cordoned = node("a", "2", "4Gi");
        cordoned["spec"]["unschedulable"] = json!(true);
        let full = node("b", "1", "4Gi");
        let err = schedule(&pod(Some("1500m")), &[cordoned, full], &[]).unwrap_err();
        assert_eq!(
            err,
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) were unschedulable."
        );
        assert_eq!(
            schedule(&pod(None), &[], &[]).unwrap_err(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn taints_and_readiness() {
        let mut tainted = node("a", "2", "4Gi");
        tainted["spec"]["taints"] =
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
        let mut not_ready = node("b", "2", "4Gi");
        not_ready["status"]["conditions"][0]["status"] = json!("False");
        let mut soft = node("c", "2", "4Gi");
        soft["spec"]["taints"] = json!([{"key": "x", "effect": "PreferNoSchedule"}]);
        let nodes = [tainted.clone(), not_ready.clone()];
        let err = schedule(&pod(None), &nodes, &[]).unwrap_err();
        assert_eq!(
            err,
            "0/2 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
             1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
        );
        let mut tolerant = pod(None);
        tolerant["spec"]["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
        assert_eq!(schedule(&tolerant, &nodes, &[]), Ok("a".into()));
        let mut everything = pod(None);
        everything["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
        assert_eq!(schedule(&everything, &[not_ready], &[]), Ok("b".into()));
        assert_eq!(schedule(&pod(None), &[soft], &[]), Ok("c".into()));
    }

    #[test]
    fn node_selector_and_affinity() {
        let mut a = node("a", "2", "4Gi");
        a["metadata"]["labels"]["disk"] = json!("ssd");
        a["metadata"]["labels"]["cores"] = json!("8");
        let b = node("b", "2", "4Gi");
        let mut p = pod(None);
        p["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        assert_eq!(schedule(&p, &[b.clone(), a.clone()], &[]), Ok("a".into()));
        assert_eq!(
            schedule(&p, std::slice::from_ref(&b), &[]).unwrap_err(),
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        );
        let affinity = |exprs: Value| {
            let mut p = pod(None);
            p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}});
            p
        };
        let nodes = [a.clone(), b.clone()];
        let pick = |p: &Value| schedule(p, &nodes, &[]).ok();
        assert_eq!(
            pick(&affinity(
                json!([{"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}])
            )),
            Some("a".into())
        );
        assert_eq!(
            pick(&affinity(
                json!([{"key": "disk", "operator": "NotIn", "values": ["ssd"]}])
            )),
            Some("b".into())
        );
        assert_eq!(
            pick(&affinity(json!([{"key": "disk", "operator": "Exists"}]))),
            Some("a".into())
        );
        assert_eq!(
            pick(&affinity(
                json!([{"key": "disk", "operator": "DoesNotExist"}])
            )),
            Some("b".into())
        );
        assert_eq!(
            pick(&affinity(
                json!([{"key": "cores", "operator": "Gt", "values": ["4"]}])
            )),
            Some("a".into())
        );
        let mut by_name = pod(None);
        by_name["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}});
        assert_eq!(pick(&by_name), Some("b".into()));
    }

    #[test]
    fn resources_ports_and_pod_count() {
        let mut small = node("a", "1", "1Gi");
        small["status"]["allocatable"]["pods"] = json!("1");
        let mut p = pod(Some("100m"));
        p["spec"]["containers"][0]["resources"]["limits"] = json!({"memory": "2Gi"});
        assert_eq!(
            schedule(&p, std::slice::from_ref(&small), &[bound("x", "a", "100m")]).unwrap_err(),
            "0/1 nodes are available: 1 Insufficient memory, 1 Too many pods."
        );
        let mut web = pod(None);
        web["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
        let mut other = web.clone();
        other["metadata"]["uid"] = json!("other");
        other["spec"]["nodeName"] = json!("a");
        let a = node("a", "2", "4Gi");
        assert_eq!(
            schedule(&web, &[a], &[other]).unwrap_err(),
            "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
        );
        let mut init = pod(Some("100m"));
        init["spec"]["initContainers"] =
            json!([{"name": "i", "resources": {"requests": {"cpu": "2"}}}]);
        assert_eq!(pod_requests(&init)["cpu"], 2000);
    }

    #[test]
    fn conditions_are_written_once() {
        let p = pod(None);
        let bound = scheduled_pod(&p, &Ok("a".into()), "t1").unwrap();
        assert_eq!(bound["spec"]["nodeName"], "a");
        assert_eq!(bound["status"]["conditions"][0]["type"], "PodScheduled");
        assert_eq!(bound["status"]["conditions"][0]["status"], "True");
        let msg: Result<String, String> = Err("0/1 nodes are available: x.".into());
        let failed = scheduled_pod(&p, &msg, "t1").unwrap();
        assert_eq!(failed["status"]["conditions"][0]["reason"], "Unschedulable");
        assert!(scheduled_pod(&failed, &msg, "t2").is_none());
        assert!(!needs_scheduling(&bound));
        assert!(needs_scheduling(&p));
    }
}
