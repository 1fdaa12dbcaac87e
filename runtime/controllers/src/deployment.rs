//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets, one
//! per template, as kube-controller-manager's does.
//!
//! The new ReplicaSet of a Deployment is the oldest one whose template equals the
//! Deployment's (ignoring the `pod-template-hash` label); when there is none, one is created,
//! named `<deployment>-<hash>` where the hash is FNV-1a of the template's canonical JSON (and
//! the collision count), with `pod-template-hash: <hash>` added to its selector, template and
//! labels. Each new template gets the next `deployment.kubernetes.io/revision`; a template that
//! comes back (a rollback) moves its ReplicaSet to the newest revision and records the old one
//! in `deployment.kubernetes.io/revision-history`.
//!
//! `RollingUpdate` scales the new ReplicaSet up while the total stays within replicas +
//! maxSurge, and old ones down while availability stays at least replicas - maxUnavailable
//! (both default 25%; surge rounds up, unavailability down, and both zero means one
//! unavailable). `Recreate` scales every old ReplicaSet to zero, waits for their pods to be
//! gone, then scales the new one up. A change of `spec.replicas` alone (and a paused
//! Deployment) scales the ReplicaSets proportionally instead. When a rollout is complete, old
//! ReplicaSets beyond `revisionHistoryLimit` (default 10) that have no pods are deleted.
//!
//! Status: observedGeneration, replicas, updatedReplicas, readyReplicas, availableReplicas,
//! unavailableReplicas, and the conditions `Available` (MinimumReplicasAvailable /
//! MinimumReplicasUnavailable) and `Progressing` (NewReplicaSetCreated, FoundNewReplicaSet,
//! ReplicaSetUpdated, NewReplicaSetAvailable, ProgressDeadlineExceeded, DeploymentPaused,
//! DeploymentResumed), which is what `kubectl rollout status` reads.

use super::util::{self, int_at};
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::objects::decode;
use cairn_store::{Event, EventKind, Store};
use cairn_wire::time::rfc3339;
use cairn_wire::value::str_at;
use serde_json::{json, Map, Value};
use std::time::Duration;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";

/// Annotations of a Deployment that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// The longest revision-history annotation kept.
const REVISION_HISTORY_CHARS: usize = 2000;
const NO_DEADLINE: i64 = i32::MAX as i64;

const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";
const RESUMED: &str = "DeploymentResumed";

/// One write a sync of a Deployment asks for, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateReplicaSet(Value),
    /// (as read, as to write)
    UpdateReplicaSet(Value, Value),
    DeleteReplicaSet(Value),
    /// The Deployment with new annotations and status.
    UpdateDeployment(Value),
}

#[derive(Debug, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Sync again after this many seconds (to notice a progress deadline passing).
    pub requeue_after: Option<i64>,
}

/// Decides one step of a Deployment's rollout from the Deployment, every ReplicaSet of its
/// namespace and (for `Recreate`) the pods of its namespace, at `now` (seconds since the
/// epoch).
pub fn reconcile(d: &Value, replicasets: &[Value], pods: &[Value], now: i64) -> Plan {
    let mut s = Sync {
        orig: d,
        d: d.clone(),
        all_in_namespace: replicasets,
        rses: Vec::new(),
        created: None,
        deleted: Vec::new(),
        pods,
        now,
        requeue_after: None,
    };
    s.run();
    s.finish()
}

/// One ReplicaSet the Deployment controls: as read (None when about to be created) and the
/// working copy.
struct Rs {
    orig: Option<Value>,
    v: Value,
}

struct Sync<'a> {
    orig: &'a Value,
    d: Value,
    all_in_namespace: &'a [Value],
    rses: Vec<Rs>,
    created: Option<usize>,
    deleted: Vec<Value>,
    pods: &'a [Value],
    now: i64,
    requeue_after: Option<i64>,
}

/// An int-or-percent (`2`, `"25%"`) scaled to `total`, rounding percents up or down.
pub fn scaled_value(v: &Value, total: i64, round_up: bool) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let s = v.as_str()?;
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
    let x = pct * total;
    Some(if round_up {
        (x + 99).div_euclid(100)
    } else {
        x.div_euclid(100)
    })
}

fn replicas_of(obj: &Value) -> i64 {
    int_at(obj, "/spec/replicas", 1)
}

fn status_of(obj: &Value, field: &str) -> i64 {
    obj["status"][field].as_i64().unwrap_or(0)
}

fn annotation<'v>(obj: &'v Value, key: &str) -> Option<&'v str> {
    obj["metadata"]["annotations"][key].as_str()
}

fn revision_of(rs: &Value) -> i64 {
    annotation(rs, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn set_annotation(obj: &mut Value, key: &str, value: &str) -> bool {
    if annotation(obj, key) == Some(value) {
        return false;
    }
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"][key] = json!(value);
    true
}

fn created_at(obj: &Value) -> (i64, String) {
    (
        cairn_wire::time::parse_rfc3339(str_at(obj, "/metadata/creationTimestamp"))
            .unwrap_or(i64::MAX),
        util::name(obj).to_string(),
    )
}

/// Removes nulls, the hash label and then-empty label maps, so templates compare as
/// Kubernetes' semantic equality does.
fn normalized_template(t: &Value) -> Value {
    fn strip_nulls(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(strip_nulls);
            }
            Value::Array(a) => a.iter_mut().for_each(strip_nulls),
            _ => {}
        }
    }
    let mut t = t.clone();
    strip_nulls(&mut t);
    if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            labels.remove(HASH_LABEL);
            if labels.is_empty() {
                meta.remove("labels");
            }
        }
        if meta.is_empty() {
            t.as_object_mut().map(|o| o.remove("metadata"));
        }
    }
    t
}

/// Whether two pod templates are equal, ignoring `pod-template-hash`.
pub fn templates_equal(a: &Value, b: &Value) -> bool {
    normalized_template(a) == normalized_template(b)
}

/// JSON with object keys sorted, whatever order the map keeps.
fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The `pod-template-hash` of a template: FNV-1a (32 bits) over its canonical JSON and the
/// collision count, written with kube's "safe" alphabet (no vowels, no 0/1/3).
pub fn pod_template_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut text = String::new();
    canonical_json(&normalized_template(template), &mut text);
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(text.as_bytes());
    if let Some(c) = collision_count {
        feed(&(c as u32).to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

fn new_condition(kind: &str, status: &str, reason: &str, message: String, now: &str) -> Value {
    json!({
        "type": kind, "status": status,
        "lastUpdateTime": now, "lastTransitionTime": now,
        "reason": reason, "message": message,
    })
}

fn conditions_mut(status: &mut Value) -> &mut Vec<Value> {
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    status["conditions"]
        .as_array_mut()
        .expect("conditions was just made an array")
}

fn get_condition<'v>(status: &'v Value, kind: &str) -> Option<&'v Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"].as_str() == Some(kind))
}

fn remove_condition(status: &mut Value, kind: &str) {
    if let Some(c) = status["conditions"].as_array_mut() {
        c.retain(|c| c["type"].as_str() != Some(kind));
        if c.is_empty() {
            status.as_object_mut().map(|s| s.remove("conditions"));
        }
    }
}

/// deploymentutil.SetDeploymentCondition: no change when status and reason are the same; the
/// transition time is kept when only the reason changes; the condition moves to the end.
fn set_condition(status: &mut Value, mut cond: Value) {
    if let Some(cur) = get_condition(status, str_at(&cond, "/type")) {
        if cur["status"] == cond["status"] && cur["reason"] == cond["reason"] {
            return;
        }
        if cur["status"] == cond["status"] {
            cond["lastTransitionTime"] = cur["lastTransitionTime"].clone();
        }
    }
    let kind = str_at(&cond, "/type").to_string();
    let list = conditions_mut(status);
    list.retain(|c| c["type"].as_str() != Some(kind.as_str()));
    list.push(cond);
}

impl Sync<'_> {
    fn replicas(&self) -> i64 {
        replicas_of(&self.d)
    }

    fn is_rolling(&self) -> bool {
        str_at(&self.d, "/spec/strategy/type") != "Recreate"
    }

    /// (maxSurge, maxUnavailable) for the desired replicas, as ResolveFenceposts.
    fn fenceposts(&self) -> (i64, i64) {
        let ru = &self.d["spec"]["strategy"]["rollingUpdate"];
        let desired = self.replicas();
        let default = json!("25%");
        let pick = |v: &Value| {
            if v.is_null() {
                default.clone()
            } else {
                v.clone()
            }
        };
        let surge = scaled_value(&pick(&ru["maxSurge"]), desired, true).unwrap_or(0);
        let mut unavailable =
            scaled_value(&pick(&ru["maxUnavailable"]), desired, false).unwrap_or(0);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        (surge.max(0), unavailable.max(0))
    }

    fn max_surge(&self) -> i64 {
        if self.is_rolling() {
            self.fenceposts().0
        } else {
            0
        }
    }

    fn max_unavailable(&self) -> i64 {
        if !self.is_rolling() || self.replicas() == 0 {
            return 0;
        }
        self.fenceposts().1.min(self.replicas())
    }

    fn progress_deadline(&self) -> Option<i64> {
        let d = int_at(&self.d, "/spec/progressDeadlineSeconds", 600);
        (d != NO_DEADLINE).then_some(d)
    }

    fn now_str(&self) -> String {
        rfc3339(self.now)
    }

    fn v(&self, i: usize) -> &Value {
        &self.rses[i].v
    }

    fn sum(&self, idx: &[usize], f: impl Fn(&Value) -> i64) -> i64 {
        idx.iter().map(|i| f(self.v(*i))).sum()
    }

    fn run(&mut self) {
        self.claim();
        if util::spec_selector(&self.d).is_nothing() {
            // kube refuses to act on an empty selector; it only records the generation seen.
            let generation = int_at(&self.d, "/metadata/generation", 0);
            if status_of(&self.d, "observedGeneration") < generation {
                self.d["status"]["observedGeneration"] = json!(generation);
            }
            return;
        }
        if util::is_deleting(&self.d) {
            let (new, old) = self.new_and_old(false);
            self.sync_status(&all(new, &old), new);
            return;
        }
        self.check_paused_conditions();
        if self.d["spec"]["paused"].as_bool() == Some(true) || self.is_scaling_event() {
            self.sync_scale();
        } else if self.is_rolling() {
            self.rollout_rolling();
        } else {
            self.rollout_recreate();
        }
    }

    /// Takes the ReplicaSets the Deployment controls (adopting orphans its selector matches,
    /// releasing controlled ones it no longer matches).
    fn claim(&mut self) {
        let selector = util::spec_selector(&self.d);
        let deleting = util::is_deleting(&self.d);
        let d_uid = util::uid(&self.d).to_string();
        for rs in self.all_in_namespace {
            match util::controller_ref(rs) {
                Some(r) if r["uid"].as_str() == Some(&d_uid) => {
                    if selector.matches_object(rs) {
                        self.rses.push(Rs {
                            orig: Some(rs.clone()),
                            v: rs.clone(),
                        });
                    } else if !deleting {
                        let mut released = rs.clone();
                        if let Some(refs) = released["metadata"]["ownerReferences"].as_array_mut() {
                            refs.retain(|r| r["uid"].as_str() != Some(&d_uid));
                        }
                        // Released ones are written but take no further part.
                        self.rses.push(Rs {
                            orig: Some(rs.clone()),
                            v: released,
                        });
                    }
                }
                Some(_) => {}
                None => {
                    if deleting || util::is_deleting(rs) || !selector.matches_object(rs) {
                        continue;
                    }
                    let mut adopted = rs.clone();
                    let owner = util::controller_owner_ref(&self.d, "apps/v1", "Deployment");
                    match adopted["metadata"]["ownerReferences"].as_array_mut() {
                        Some(refs) => refs.push(owner),
                        None => adopted["metadata"]["ownerReferences"] = json!([owner]),
                    }
                    self.rses.push(Rs {
                        orig: Some(rs.clone()),
                        v: adopted,
                    });
                }
            }
        }
    }

    /// The indices of the ReplicaSets that take part (controlled ones), oldest first.
    fn controlled(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.rses.len())
            .filter(|i| util::is_controlled_by(self.v(*i), &self.d))
            .collect();
        idx.sort_by_key(|i| created_at(self.v(*i)));
        idx
    }

    /// getAllReplicaSetsAndSyncRevision: the new ReplicaSet (created if asked and missing)
    /// and the old ones, oldest first; syncs the revision annotations.
    fn new_and_old(&mut self, create: bool) -> (Option<usize>, Vec<usize>) {
        let idx = self.controlled();
        let template = self.d["spec"]["template"].clone();
        let new = idx
            .iter()
            .copied()
            .find(|i| templates_equal(&self.v(*i)["spec"]["template"], &template));
        let old: Vec<usize> = idx.iter().copied().filter(|i| Some(*i) != new).collect();
        let max_old_revision = old
            .iter()
            .map(|i| revision_of(self.v(*i)))
            .max()
            .unwrap_or(0);
        let new_revision = (max_old_revision + 1).to_string();
        let min_ready = int_at(&self.d, "/spec/minReadySeconds", 0);
        if let Some(i) = new {
            let mut rs = self.rses[i].v.clone();
            let mut changed = self.set_new_rs_annotations(&mut rs, &new_revision, true);
            if int_at(&rs, "/spec/minReadySeconds", 0) != min_ready {
                rs["spec"]["minReadySeconds"] = json!(min_ready);
                changed = true;
            }
            if changed {
                self.rses[i].v = rs;
            }
            let revision = annotation(self.v(i), REVISION).unwrap_or("").to_string();
            set_annotation(&mut self.d, REVISION, &revision);
            if self.progress_deadline().is_some()
                && get_condition(&self.d["status"], "Progressing").is_none()
            {
                let msg = format!("Found new replica set \"{}\"", util::name(self.v(i)));
                let c = new_condition(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    msg,
                    &self.now_str(),
                );
                set_condition(&mut self.d["status"], c);
            }
            return (Some(i), old);
        }
        if !create {
            return (None, old);
        }
        let collision = self.d["status"]["collisionCount"].as_i64();
        let hash = pod_template_hash(&template, collision);
        let name = format!("{}-{hash}", util::name(&self.d));
        if self
            .all_in_namespace
            .iter()
            .any(|rs| util::name(rs) == name)
        {
            // A ReplicaSet of that name that is not this template's: count a collision so the
            // next hash differs (the write of the status triggers the next sync).
            self.d["status"]["collisionCount"] = json!(collision.unwrap_or(0) + 1);
            return (None, old);
        }
        let mut t = template;
        t["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = self.d["spec"]["selector"].clone();
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let mut rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": util::namespace(&self.d),
                "labels": t["metadata"]["labels"].clone(),
                "ownerReferences": [util::controller_owner_ref(&self.d, "apps/v1", "Deployment")],
            },
            "spec": {"replicas": 0, "minReadySeconds": min_ready, "selector": selector, "template": t},
        });
        let all_rs: Vec<&Value> = old.iter().map(|i| self.v(*i)).collect();
        let count = self.new_rs_new_replicas(&all_rs, &rs);
        rs["spec"]["replicas"] = json!(count);
        self.set_new_rs_annotations(&mut rs, &new_revision, false);
        self.rses.push(Rs { orig: None, v: rs });
        let i = self.rses.len() - 1;
        self.created = Some(i);
        if self.progress_deadline().is_some() {
            let c = new_condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{name}\""),
                &self.now_str(),
            );
            set_condition(&mut self.d["status"], c);
        }
        set_annotation(&mut self.d, REVISION, &new_revision);
        (Some(i), old)
    }

    /// SetNewReplicaSetAnnotations: copies the Deployment's annotations, moves the revision
    /// forward (recording the old one in the history), and on creation sets the replica
    /// annotations. Returns whether anything changed.
    fn set_new_rs_annotations(&self, rs: &mut Value, new_revision: &str, exists: bool) -> bool {
        let mut changed = false;
        if let Some(ann) = self.d["metadata"]["annotations"].as_object() {
            for (k, v) in ann {
                if NOT_COPIED.contains(&k.as_str()) {
                    continue;
                }
                if let Some(v) = v.as_str() {
                    changed |= set_annotation(rs, k, v);
                }
            }
        }
        let old_revision = annotation(rs, REVISION).map(str::to_string);
        let old_int = match old_revision.as_deref() {
            None => 0,
            Some(s) => match s.parse::<i64>() {
                Ok(n) => n,
                Err(_) => return changed,
            },
        };
        let new_int: i64 = new_revision.parse().unwrap_or(0);
        if old_int < new_int {
            set_annotation(rs, REVISION, new_revision);
            changed = true;
            if let Some(old) = old_revision {
                let history = annotation(rs, REVISION_HISTORY).unwrap_or("").to_string();
                if history.is_empty() {
                    set_annotation(rs, REVISION_HISTORY, &old);
                } else {
                    let mut parts: Vec<&str> = history.split(',').collect();
                    let mut total = history.len() + old.len() + 1;
                    let mut start = 0;
                    while total > REVISION_HISTORY_CHARS && start < parts.len() {
                        total -= parts[start].len() + 1;
                        start += 1;
                    }
                    if total <= REVISION_HISTORY_CHARS {
                        parts = parts.split_off(start);
                        parts.push(&old);
                        set_annotation(rs, REVISION_HISTORY, &parts.join(","));
                    }
                }
            }
        }
        if !exists {
            changed |= self.set_replicas_annotations(rs);
        }
        changed
    }

    fn set_replicas_annotations(&self, rs: &mut Value) -> bool {
        let desired = self.replicas().to_string();
        let max = (self.replicas() + self.max_surge()).to_string();
        let a = set_annotation(rs, DESIRED_REPLICAS, &desired);
        let b = set_annotation(rs, MAX_REPLICAS, &max);
        a || b
    }

    /// NewRSNewReplicas: how far the new ReplicaSet may grow now, given every ReplicaSet
    /// (`others` excludes `new`).
    fn new_rs_new_replicas(&self, others: &[&Value], new: &Value) -> i64 {
        let desired = self.replicas();
        if !self.is_rolling() {
            return desired;
        }
        let current = others.iter().map(|r| replicas_of(r)).sum::<i64>() + replicas_of(new);
        let max_total = desired + self.fenceposts().0;
        if current >= max_total {
            return replicas_of(new);
        }
        let up = (max_total - current).min(desired - replicas_of(new));
        replicas_of(new) + up
    }

    /// Scales one ReplicaSet (and stamps the replica annotations); true when its size changed.
    fn scale(&mut self, i: usize, count: i64) -> bool {
        let mut rs = self.rses[i].v.clone();
        let resized = replicas_of(&rs) != count;
        let annotated = self.set_replicas_annotations(&mut rs);
        if resized || annotated {
            rs["spec"]["replicas"] = json!(count);
            self.rses[i].v = rs;
        }
        resized
    }

    fn rollout_rolling(&mut self) {
        let (new, old) = self.new_and_old(true);
        let Some(n) = new else {
            // A hash collision was counted; the status write brings the next attempt.
            self.sync_rollout_status(&old, None);
            return;
        };
        let all = all(new, &old);
        if self.reconcile_new(&all, n) {
            self.sync_rollout_status(&all, new);
            return;
        }
        let active_old: Vec<usize> = old
            .iter()
            .copied()
            .filter(|i| replicas_of(self.v(*i)) > 0)
            .collect();
        if self.reconcile_old(&all, &active_old, n) {
            self.sync_rollout_status(&all, new);
            return;
        }
        if self.complete(&self.d["status"]) {
            self.cleanup(&old);
        }
        self.sync_rollout_status(&all, new);
    }

    fn reconcile_new(&mut self, all: &[usize], n: usize) -> bool {
        let current = replicas_of(self.v(n));
        let desired = self.replicas();
        if current == desired {
            return false;
        }
        if current > desired {
            return self.scale(n, desired);
        }
        let others: Vec<&Value> = all
            .iter()
            .filter(|i| **i != n)
            .map(|i| self.v(*i))
            .collect();
        let count = self.new_rs_new_replicas(&others, self.v(n));
        self.scale(n, count)
    }

    fn reconcile_old(&mut self, all: &[usize], old: &[usize], n: usize) -> bool {
        if self.sum(old, replicas_of) == 0 {
            return false;
        }
        let all_pods = self.sum(all, replicas_of);
        let min_available = self.replicas() - self.max_unavailable();
        let new_unavailable = replicas_of(self.v(n)) - status_of(self.v(n), "availableReplicas");
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        // Unhealthy old replicas go first: they would block the rollout otherwise.
        let mut cleaned = 0;
        for &i in old {
            if cleaned >= max_scaled_down {
                break;
            }
            let spec = replicas_of(self.v(i));
            let available = status_of(self.v(i), "availableReplicas");
            if spec == 0 || spec == available {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(spec - available);
            self.scale(i, spec - down);
            cleaned += down;
        }
        // Then healthy ones, as far as availability allows.
        let available = self.sum(all, |r| status_of(r, "availableReplicas"));
        let mut scaled = 0;
        if available > min_available {
            let to_scale = available - min_available;
            for &i in old {
                if scaled >= to_scale {
                    break;
                }
                let spec = replicas_of(self.v(i));
                if spec == 0 {
                    continue;
                }
                let down = spec.min(to_scale - scaled);
                self.scale(i, spec - down);
                scaled += down;
            }
        }
        cleaned + scaled > 0
    }

    fn rollout_recreate(&mut self) {
        let (new, old) = self.new_and_old(false);
        let mut scaled_down = false;
        for &i in &old {
            if replicas_of(self.v(i)) > 0 {
                scaled_down |= self.scale(i, 0);
            }
        }
        if scaled_down || self.old_pods_running(new, &old) {
            self.sync_rollout_status(&all(new, &old), new);
            return;
        }
        let (new, old) = match new {
            Some(_) => (new, old),
            None => self.new_and_old(true),
        };
        if let Some(n) = new {
            if replicas_of(self.v(n)) != self.replicas() {
                let desired = self.replicas();
                self.scale(n, desired);
            }
        }
        if self.complete(&self.d["status"]) {
            self.cleanup(&old);
        }
        self.sync_rollout_status(&all(new, &old), new);
    }

    fn old_pods_running(&self, new: Option<usize>, old: &[usize]) -> bool {
        if self.sum(old, |r| status_of(r, "replicas")) > 0 {
            return true;
        }
        let old_uids: Vec<&str> = old.iter().map(|i| util::uid(self.v(*i))).collect();
        let new_uid = new.map(|n| util::uid(self.v(n)));
        self.pods.iter().any(|p| {
            let Some(owner) = util::controller_ref(p).and_then(|r| r["uid"].as_str()) else {
                return false;
            };
            Some(owner) != new_uid
                && old_uids.contains(&owner)
                && !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed")
        })
    }

    /// isScalingEvent: an active ReplicaSet was sized for another replica count.
    fn is_scaling_event(&mut self) -> bool {
        let (new, old) = self.new_and_old(false);
        let desired = self.replicas();
        all(new, &old).into_iter().any(|i| {
            let rs = self.v(i);
            replicas_of(rs) > 0
                && annotation(rs, DESIRED_REPLICAS)
                    .and_then(|a| a.parse::<i64>().ok())
                    .is_some_and(|a| a != desired)
        })
    }

    /// `sync`: proportional scaling (paused Deployments and replica changes), then status.
    fn sync_scale(&mut self) {
        let (new, old) = self.new_and_old(false);
        self.scale_proportionally(new, &old);
        if self.d["spec"]["paused"].as_bool() == Some(true) {
            self.cleanup(&old);
        }
        self.sync_status(&all(new, &old), new);
    }

    fn scale_proportionally(&mut self, new: Option<usize>, old: &[usize]) {
        let desired = self.replicas();
        // One active ReplicaSet (or none: the newest) takes the whole count.
        let mut newest_first = old.to_vec();
        newest_first.reverse();
        let active: Vec<usize> = new
            .into_iter()
            .chain(newest_first.iter().copied())
            .filter(|i| replicas_of(self.v(*i)) > 0)
            .collect();
        let only = match active.len() {
            0 => new.or(newest_first.first().copied()),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = only {
            if replicas_of(self.v(i)) != desired {
                self.scale(i, desired);
            }
            return;
        }
        // A saturated new ReplicaSet: the old ones go to zero.
        if let Some(n) = new {
            let rs = self.v(n);
            if replicas_of(rs) == desired
                && annotation(rs, DESIRED_REPLICAS) == Some(desired.to_string().as_str())
                && status_of(rs, "availableReplicas") == desired
            {
                for &i in old {
                    if replicas_of(self.v(i)) > 0 {
                        self.scale(i, 0);
                    }
                }
                return;
            }
        }
        if !self.is_rolling() {
            return;
        }
        let mut active: Vec<usize> = old
            .iter()
            .copied()
            .chain(new)
            .filter(|i| replicas_of(self.v(*i)) > 0)
            .collect();
        let total = self.sum(&active, replicas_of);
        let allowed = if desired > 0 {
            desired + self.max_surge()
        } else {
            0
        };
        let to_add = allowed - total;
        if to_add > 0 {
            // Largest first; among equals the newest.
            active.sort_by(|a, b| {
                replicas_of(self.v(*b))
                    .cmp(&replicas_of(self.v(*a)))
                    .then_with(|| created_at(self.v(*b)).cmp(&created_at(self.v(*a))))
            });
        } else if to_add < 0 {
            // Largest first; among equals the oldest.
            active.sort_by(|a, b| {
                replicas_of(self.v(*b))
                    .cmp(&replicas_of(self.v(*a)))
                    .then_with(|| created_at(self.v(*a)).cmp(&created_at(self.v(*b))))
            });
        }
        let mut added = 0;
        let mut sizes = Vec::new();
        for &i in &active {
            let spec = replicas_of(self.v(i));
            if to_add != 0 {
                let p = self.proportion(self.v(i), to_add, added);
                sizes.push(spec + p);
                added += p;
            } else {
                sizes.push(spec);
            }
        }
        for (k, &i) in active.iter().enumerate() {
            if k == 0 && to_add != 0 {
                sizes[0] = (sizes[0] + to_add - added).max(0);
            }
            self.scale(i, sizes[k]);
        }
    }

    /// GetProportion: this ReplicaSet's share of a change of `to_add` replicas.
    fn proportion(&self, rs: &Value, to_add: i64, added: i64) -> i64 {
        let spec = replicas_of(rs);
        if spec == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = if self.replicas() == 0 {
            -spec
        } else {
            let max_now = self.replicas() + self.max_surge();
            let before = annotation(rs, MAX_REPLICAS)
                .and_then(|a| a.parse::<i64>().ok())
                .filter(|b| *b != 0)
                .unwrap_or_else(|| status_of(&self.d, "replicas"));
            if before == 0 {
                0
            } else {
                ((spec * max_now) as f64 / before as f64).round() as i64 - spec
            }
        };
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// Deletes old ReplicaSets without pods beyond revisionHistoryLimit, lowest revision first.
    fn cleanup(&mut self, old: &[usize]) {
        let limit = int_at(&self.d, "/spec/revisionHistoryLimit", 10);
        let mut cleanable: Vec<usize> = old
            .iter()
            .copied()
            .filter(|i| !util::is_deleting(self.v(*i)))
            .collect();
        let diff = cleanable.len() as i64 - limit;
        if diff <= 0 {
            return;
        }
        cleanable.sort_by_key(|i| (revision_of(self.v(*i)), created_at(self.v(*i))));
        for &i in cleanable.iter().take(diff as usize) {
            let rs = self.v(i);
            if status_of(rs, "replicas") != 0
                || replicas_of(rs) != 0
                || int_at(rs, "/metadata/generation", 0) > status_of(rs, "observedGeneration")
                || self.rses[i].orig.is_none()
            {
                continue;
            }
            if let Some(orig) = self.rses[i].orig.clone() {
                self.deleted.push(orig);
            }
        }
    }

    fn check_paused_conditions(&mut self) {
        if self.progress_deadline().is_none() {
            return;
        }
        let cond = get_condition(&self.d["status"], "Progressing");
        let reason = cond.map(|c| str_at(c, "/reason")).unwrap_or("");
        if reason == TIMED_OUT {
            return;
        }
        let paused = self.d["spec"]["paused"].as_bool() == Some(true);
        let now = self.now_str();
        if paused && reason != PAUSED {
            let c = new_condition(
                "Progressing",
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
                &now,
            );
            set_condition(&mut self.d["status"], c);
        } else if !paused && reason == PAUSED {
            let c = new_condition(
                "Progressing",
                "Unknown",
                RESUMED,
                "Deployment is resumed".into(),
                &now,
            );
            set_condition(&mut self.d["status"], c);
        }
    }

    /// calculateStatus: counts from the ReplicaSets and the Available condition.
    fn calculate_status(&self, all: &[usize], new: Option<usize>) -> Value {
        let available = self.sum(all, |r| status_of(r, "availableReplicas"));
        let total = self.sum(all, replicas_of);
        let mut counts = Map::new();
        let generation = int_at(&self.d, "/metadata/generation", 0);
        let updated = new.map_or(0, |n| status_of(self.v(n), "replicas"));
        for (field, n) in [
            ("observedGeneration", generation),
            ("replicas", self.sum(all, |r| status_of(r, "replicas"))),
            ("updatedReplicas", updated),
            (
                "readyReplicas",
                self.sum(all, |r| status_of(r, "readyReplicas")),
            ),
            ("availableReplicas", available),
            ("unavailableReplicas", (total - available).max(0)),
        ] {
            super::replicaset::set_or_omit(&mut counts, field, n);
        }
        let mut status = self.d["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        if let Some(m) = status.as_object_mut() {
            for f in [
                "observedGeneration",
                "replicas",
                "updatedReplicas",
                "readyReplicas",
                "availableReplicas",
                "unavailableReplicas",
            ] {
                m.remove(f);
            }
            m.extend(counts);
        }
        let now = self.now_str();
        let c = if available >= self.replicas() - self.max_unavailable() {
            new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                &now,
            )
        } else {
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                &now,
            )
        };
        set_condition(&mut status, c);
        status
    }

    /// DeploymentComplete.
    fn complete(&self, status: &Value) -> bool {
        let desired = self.replicas();
        status_of_status(status, "updatedReplicas") == desired
            && status_of_status(status, "replicas") == desired
            && status_of_status(status, "availableReplicas") == desired
            && status_of_status(status, "observedGeneration")
                >= int_at(&self.d, "/metadata/generation", 0)
    }

    fn sync_status(&mut self, all: &[usize], new: Option<usize>) {
        let status = self.calculate_status(all, new);
        self.d["status"] = status;
    }

    /// syncRolloutStatus: the status with the Progressing condition brought up to date.
    fn sync_rollout_status(&mut self, all: &[usize], new: Option<usize>) {
        let mut status = self.calculate_status(all, new);
        let deadline = self.progress_deadline();
        if deadline.is_none() {
            remove_condition(&mut status, "Progressing");
        }
        let current = get_condition(&self.d["status"], "Progressing").cloned();
        let complete_before = status_of_status(&status, "replicas")
            == status_of_status(&status, "updatedReplicas")
            && current
                .as_ref()
                .is_some_and(|c| c["reason"] == NEW_RS_AVAILABLE);
        let now = self.now_str();
        let what = match new {
            Some(n) => format!("ReplicaSet \"{}\"", util::name(self.v(n))),
            None => format!("Deployment \"{}\"", util::name(&self.d)),
        };
        if let (Some(deadline), false) = (deadline, complete_before) {
            if self.complete(&status) {
                let c = new_condition(
                    "Progressing",
                    "True",
                    NEW_RS_AVAILABLE,
                    format!("{what} has successfully progressed."),
                    &now,
                );
                set_condition(&mut status, c);
            } else if self.progressing(&status) {
                let mut c = new_condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("{what} is progressing."),
                    &now,
                );
                if let Some(cur) = &current {
                    if cur["status"] == "True" {
                        c["lastTransitionTime"] = cur["lastTransitionTime"].clone();
                    }
                    remove_condition(&mut status, "Progressing");
                }
                set_condition(&mut status, c);
            } else if self.timed_out(&status, deadline) {
                let c = new_condition(
                    "Progressing",
                    "False",
                    TIMED_OUT,
                    format!("{what} has timed out progressing."),
                    &now,
                );
                set_condition(&mut status, c);
            }
        }
        if status == self.d["status"] {
            // Nothing new: look again when the progress deadline would pass.
            if let (Some(deadline), Some(cur)) = (deadline, current) {
                if !self.complete(&status) && cur["reason"] != TIMED_OUT {
                    if let Some(updated) = cur["lastUpdateTime"]
                        .as_str()
                        .and_then(cairn_wire::time::parse_rfc3339)
                    {
                        self.requeue_after = Some((updated + deadline - self.now).max(1) + 1);
                    }
                }
            }
        }
        self.d["status"] = status;
    }

    /// DeploymentProgressing: more updated, fewer old, more ready or more available replicas.
    fn progressing(&self, new: &Value) -> bool {
        let old = &self.d["status"];
        let s = status_of_status;
        let old_old = s(old, "replicas") - s(old, "updatedReplicas");
        let new_old = s(new, "replicas") - s(new, "updatedReplicas");
        s(new, "updatedReplicas") > s(old, "updatedReplicas")
            || new_old < old_old
            || s(new, "readyReplicas") > s(old, "readyReplicas")
            || s(new, "availableReplicas") > s(old, "availableReplicas")
    }

    fn timed_out(&self, status: &Value, deadline: i64) -> bool {
        let Some(c) = get_condition(status, "Progressing") else {
            return false;
        };
        match str_at(c, "/reason") {
            NEW_RS_AVAILABLE => false,
            TIMED_OUT => true,
            _ => cairn_wire::time::parse_rfc3339(str_at(c, "/lastUpdateTime"))
                .is_some_and(|t| t + deadline < self.now),
        }
    }

    fn finish(self) -> Plan {
        let mut actions = Vec::new();
        if let Some(i) = self.created {
            actions.push(Action::CreateReplicaSet(self.rses[i].v.clone()));
        }
        for rs in &self.rses {
            if let Some(orig) = &rs.orig {
                if *orig != rs.v && !self.deleted.iter().any(|d| util::uid(d) == util::uid(orig)) {
                    actions.push(Action::UpdateReplicaSet(orig.clone(), rs.v.clone()));
                }
            }
        }
        for rs in self.deleted {
            actions.push(Action::DeleteReplicaSet(rs));
        }
        if self.d != *self.orig {
            actions.push(Action::UpdateDeployment(self.d));
        }
        Plan {
            actions,
            requeue_after: self.requeue_after,
        }
    }
}

fn status_of_status(status: &Value, field: &str) -> i64 {
    status[field].as_i64().unwrap_or(0)
}

fn all(new: Option<usize>, old: &[usize]) -> Vec<usize> {
    let mut v = old.to_vec();
    v.extend(new);
    v
}

/// Runs [`reconcile`] against the store.
pub struct DeploymentController;

impl DeploymentController {
    /// The Deployments an event on a ReplicaSet concerns: its controller, or for an orphan the
    /// Deployments of its namespace whose selector matches it.
    async fn owners_of_rs(store: &dyn Store, rs: &Value) -> Vec<String> {
        let dr = util::deployments();
        let ns = util::namespace(rs);
        if let Some(r) = util::controller_ref(rs) {
            if r["kind"] == "Deployment" {
                return vec![dr.key(Some(ns), str_at(r, "/name"))];
            }
            return Vec::new();
        }
        let Ok(all) = util::list(store, &dr.key_prefix(Some(ns))).await else {
            return Vec::new();
        };
        all.iter()
            .filter(|d| util::spec_selector(d).matches_object(rs))
            .map(|d| util::key_of(dr, d))
            .collect()
    }
}

#[async_trait]
impl Controller for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![
            util::deployments().key_prefix(None),
            util::replicasets().key_prefix(None),
            util::pods().key_prefix(None),
        ]
    }

    async fn items_for(&self, store: &dyn Store, ev: &Event) -> Vec<String> {
        let key = &ev.record.key;
        if key.starts_with(&util::deployments().key_prefix(None)) {
            return vec![key.clone()];
        }
        let mut out = Vec::new();
        if key.starts_with(&util::replicasets().key_prefix(None)) {
            for rec in std::iter::once(&ev.record).chain(ev.prev.as_ref()) {
                if let Ok(rs) = decode(rec) {
                    for k in Self::owners_of_rs(store, &rs).await {
                        if !out.contains(&k) {
                            out.push(k);
                        }
                    }
                }
            }
            return out;
        }
        // Pods matter only to Recreate, which waits for the old ones to be gone.
        let Ok(pod) = decode(&ev.record) else {
            return out;
        };
        let finished = matches!(str_at(&pod, "/status/phase"), "Succeeded" | "Failed");
        if ev.kind != EventKind::Delete && !finished {
            return out;
        }
        let Some(r) = util::controller_ref(&pod).filter(|r| r["kind"] == "ReplicaSet") else {
            return out;
        };
        let rs_key = util::replicasets().key(Some(util::namespace(&pod)), str_at(r, "/name"));
        if let Ok(Some(rs)) = util::get(store, &rs_key).await {
            if let Some(d) = util::controller_ref(&rs).filter(|r| r["kind"] == "Deployment") {
                out.push(util::deployments().key(Some(util::namespace(&rs)), str_at(d, "/name")));
            }
        }
        out
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let r = util::deployments();
        let all = util::list(store, &r.key_prefix(None)).await?;
        Ok(all.iter().map(|o| util::key_of(r, o)).collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(d) = util::get(store, key).await? else {
            return Ok(None);
        };
        let ns = util::namespace(&d).to_string();
        let rs_r = util::replicasets();
        let rses = util::list(store, &rs_r.key_prefix(Some(&ns))).await?;
        let pods = if str_at(&d, "/spec/strategy/type") == "Recreate" {
            util::list(store, &util::pods().key_prefix(Some(&ns))).await?
        } else {
            Vec::new()
        };
        let plan = reconcile(&d, &rses, &pods, cairn_wire::time::now_secs());
        for action in plan.actions {
            match action {
                Action::CreateReplicaSet(rs) => {
                    let created = util::create(store, rs_r, rs).await?;
                    let to = util::int_at(&created, "/spec/replicas", 0);
                    let message = format!("Scaled up replica set {} to {to}", util::name(&created));
                    record_scaling(store, &d, message).await;
                }
                Action::UpdateReplicaSet(old, new) => {
                    let (from, to) = (
                        util::int_at(&old, "/spec/replicas", 0),
                        util::int_at(&new, "/spec/replicas", 0),
                    );
                    let written = util::update(store, rs_r, &old, new).await?;
                    if from != to {
                        let way = if to > from { "up" } else { "down" };
                        let message = format!(
                            "Scaled {way} replica set {} from {from} to {to}",
                            util::name(&written)
                        );
                        record_scaling(store, &d, message).await;
                    }
                }
                Action::DeleteReplicaSet(rs) => util::delete(store, rs_r, &rs).await?,
                Action::UpdateDeployment(new) => {
                    util::update(store, util::deployments(), &d, new).await?;
                }
            }
        }
        Ok(plan
            .requeue_after
            .map(|s| Duration::from_secs(s.max(1) as u64)))
    }
}

/// A ScalingReplicaSet Event on the Deployment, as kube-controller-manager words it.
async fn record_scaling(store: &dyn Store, d: &Value, message: String) {
    let normal = cairn_wire::events::EventType::Normal;
    util::record_event(
        store,
        "deployment-controller",
        d,
        normal,
        "ScalingReplicaSet",
        message,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1,
                         "resourceVersion": "5", "creationTimestamp": rfc3339(NOW - 100)},
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}},
        })
    }

    /// Applies a plan to in-memory objects, as the store would (uids, revisions, generations).
    fn apply(plan: &Plan, d: &mut Value, rses: &mut Vec<Value>) {
        for a in &plan.actions {
            match a {
                Action::CreateReplicaSet(rs) => {
                    let mut rs = rs.clone();
                    rs["metadata"]["uid"] = json!(format!("uid-{}", util::name(&rs)));
                    rs["metadata"]["creationTimestamp"] = json!(rfc3339(NOW + rses.len() as i64));
                    rs["metadata"]["generation"] = json!(1);
                    rses.push(rs);
                }
                Action::UpdateReplicaSet(old, new) => {
                    let i = rses
                        .iter()
                        .position(|r| r == old)
                        .expect("updated RS exists");
                    let mut new = new.clone();
                    if new["spec"] != old["spec"] {
                        new["metadata"]["generation"] =
                            json!(int_at(old, "/metadata/generation", 0) + 1);
                    }
                    rses[i] = new;
                }
                Action::DeleteReplicaSet(rs) => rses.retain(|r| util::name(r) != util::name(rs)),
                Action::UpdateDeployment(new) => *d = new.clone(),
            }
        }
    }

    /// What the ReplicaSet controller and kubelets would report once pods are up.
    fn settle(rses: &mut [Value], ready: bool) {
        for rs in rses.iter_mut() {
            let n = replicas_of(rs);
            let gen = int_at(rs, "/metadata/generation", 1);
            rs["status"] = json!({"replicas": n, "observedGeneration": gen});
            if ready {
                rs["status"]["readyReplicas"] = json!(n);
                rs["status"]["availableReplicas"] = json!(n);
            }
        }
    }

    fn by_name<'a>(rses: &'a [Value], prefix: &str) -> &'a Value {
        rses.iter()
            .find(|r| util::name(r) == prefix)
            .expect("replicaset")
    }

    #[test]
    fn int_or_percent() {
        assert_eq!(scaled_value(&json!("25%"), 3, true), Some(1));
        assert_eq!(scaled_value(&json!("25%"), 3, false), Some(0));
        assert_eq!(scaled_value(&json!("50%"), 10, false), Some(5));
        assert_eq!(scaled_value(&json!(2), 10, false), Some(2));
        assert_eq!(scaled_value(&json!("x"), 10, false), None);
    }

    #[test]
    fn hashes_are_stable_and_ignore_the_hash_label() {
        let d = deployment(3, "nginx:1");
        let t = &d["spec"]["template"];
        let h = pod_template_hash(t, None);
        assert!(!h.is_empty() && h.len() <= 10);
        assert!(h
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
        let mut labeled = t.clone();
        labeled["metadata"]["labels"][HASH_LABEL] = json!(h);
        assert_eq!(pod_template_hash(&labeled, None), h);
        assert!(templates_equal(t, &labeled));
        assert_ne!(pod_template_hash(t, Some(1)), h);
        let other = deployment(3, "nginx:2");
        assert_ne!(pod_template_hash(&other["spec"]["template"], None), h);
    }

    #[test]
    fn first_sync_creates_the_new_replicaset() {
        let d = deployment(3, "nginx:1");
        let plan = reconcile(&d, &[], &[], NOW);
        let Action::CreateReplicaSet(rs) = &plan.actions[0] else {
            panic!("expected a create, got {:?}", plan.actions)
        };
        let hash = pod_template_hash(&d["spec"]["template"], None);
        assert_eq!(util::name(rs), format!("web-{hash}"));
        assert_eq!(rs["spec"]["replicas"], 3);
        assert_eq!(rs["spec"]["selector"]["matchLabels"][HASH_LABEL], hash);
        assert_eq!(
            rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL],
            hash
        );
        assert_eq!(rs["metadata"]["labels"][HASH_LABEL], hash);
        assert_eq!(rs["metadata"]["annotations"][REVISION], "1");
        assert_eq!(rs["metadata"]["annotations"][DESIRED_REPLICAS], "3");
        assert_eq!(rs["metadata"]["annotations"][MAX_REPLICAS], "4");
        assert_eq!(rs["metadata"]["ownerReferences"][0]["uid"], "d-uid");
        let Action::UpdateDeployment(nd) = plan.actions.last().unwrap() else {
            panic!("expected a deployment update")
        };
        assert_eq!(nd["metadata"]["annotations"][REVISION], "1");
        assert_eq!(nd["status"]["observedGeneration"], 1);
        let p = get_condition(&nd["status"], "Progressing").unwrap();
        assert_eq!(p["reason"], "NewReplicaSetCreated");
        let a = get_condition(&nd["status"], "Available").unwrap();
        assert_eq!(a["status"], "False");
    }

    #[test]
    fn rolling_update_converges_and_reports_complete() {
        let mut d = deployment(3, "nginx:1");
        let mut rses = Vec::new();
        // Roll out the first template until nothing changes.
        for _ in 0..10 {
            let plan = reconcile(&d, &rses, &[], NOW);
            apply(&plan, &mut d, &mut rses);
            settle(&mut rses, true);
        }
        assert_eq!(rses.len(), 1);
        let st = &d["status"];
        assert_eq!(
            (
                st["replicas"].as_i64(),
                st["updatedReplicas"].as_i64(),
                st["availableReplicas"].as_i64()
            ),
            (Some(3), Some(3), Some(3))
        );
        assert!(st.get("unavailableReplicas").is_none());
        let p = get_condition(st, "Progressing").unwrap();
        assert_eq!(p["reason"], NEW_RS_AVAILABLE);
        assert_eq!(
            p["message"],
            format!(
                "ReplicaSet \"{}\" has successfully progressed.",
                util::name(&rses[0])
            )
        );
        assert_eq!(get_condition(st, "Available").unwrap()["status"], "True");
        // A steady state writes nothing.
        assert!(reconcile(&d, &rses, &[], NOW).actions.is_empty());

        // New image: surge 1 (25% of 3, rounded up), unavailable 0 (rounded down).
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        d["metadata"]["generation"] = json!(2);
        let old_name = util::name(&rses[0]).to_string();
        let mut max_total = 0;
        for _ in 0..30 {
            let plan = reconcile(&d, &rses, &[], NOW);
            apply(&plan, &mut d, &mut rses);
            let total: i64 = rses.iter().map(replicas_of).sum();
            max_total = max_total.max(total);
            // Availability never drops under replicas - maxUnavailable.
            let available: i64 = rses.iter().map(|r| status_of(r, "availableReplicas")).sum();
            assert!(available >= 3, "availability dropped to {available}");
            settle(&mut rses, true);
        }
        assert_eq!(max_total, 4, "surge is one pod");
        assert_eq!(rses.len(), 2);
        let new = rses.iter().find(|r| util::name(r) != old_name).unwrap();
        assert_eq!(replicas_of(new), 3);
        assert_eq!(new["metadata"]["annotations"][REVISION], "2");
        assert_eq!(replicas_of(by_name(&rses, &old_name)), 0);
        assert_eq!(d["metadata"]["annotations"][REVISION], "2");
        assert_eq!(d["status"]["updatedReplicas"], 3);
        assert_eq!(d["status"]["replicas"], 3);
        assert_eq!(d["status"]["observedGeneration"], 2);
        assert_eq!(
            get_condition(&d["status"], "Progressing").unwrap()["reason"],
            NEW_RS_AVAILABLE
        );

        // Back to the first template: its ReplicaSet becomes the newest revision again.
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1");
        d["metadata"]["generation"] = json!(3);
        for _ in 0..30 {
            let plan = reconcile(&d, &rses, &[], NOW);
            apply(&plan, &mut d, &mut rses);
            settle(&mut rses, true);
        }
        let first = by_name(&rses, &old_name);
        assert_eq!(replicas_of(first), 3);
        assert_eq!(first["metadata"]["annotations"][REVISION], "3");
        assert_eq!(first["metadata"]["annotations"][REVISION_HISTORY], "1");
        assert_eq!(d["metadata"]["annotations"][REVISION], "3");
    }

    #[test]
    fn revision_history_limit_deletes_the_oldest_empty_replicasets() {
        let mut d = deployment(1, "v0");
        d["spec"]["revisionHistoryLimit"] = json!(1);
        let mut rses = Vec::new();
        for v in 0..4 {
            d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(format!("v{v}"));
            d["metadata"]["generation"] = json!(v + 1);
            for _ in 0..20 {
                let plan = reconcile(&d, &rses, &[], NOW);
                apply(&plan, &mut d, &mut rses);
                settle(&mut rses, true);
            }
        }
        // The current one and one old one.
        assert_eq!(rses.len(), 2);
        let revs: Vec<i64> = rses.iter().map(revision_of).collect();
        assert!(revs.contains(&4) && revs.contains(&3), "{revs:?}");
    }

    #[test]
    fn recreate_scales_old_down_and_waits_for_pods() {
        let mut d = deployment(2, "v1");
        d["spec"]["strategy"] = json!({"type": "Recreate"});
        let mut rses = Vec::new();
        for _ in 0..5 {
            let plan = reconcile(&d, &rses, &[], NOW);
            apply(&plan, &mut d, &mut rses);
            settle(&mut rses, true);
        }
        assert_eq!(rses.len(), 1);
        assert_eq!(replicas_of(&rses[0]), 2);
        let old_uid = util::uid(&rses[0]).to_string();
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("v2");
        d["metadata"]["generation"] = json!(2);
        // First step: old scaled to zero, nothing new yet.
        let plan = reconcile(&d, &rses, &[], NOW);
        apply(&plan, &mut d, &mut rses);
        assert_eq!(rses.len(), 1);
        assert_eq!(replicas_of(&rses[0]), 0);
        settle(&mut rses, true);
        // An old pod still running (terminating): wait.
        let pod = json!({"metadata": {"name": "p", "namespace": "default", "ownerReferences": [
            {"kind": "ReplicaSet", "uid": old_uid, "controller": true}]},
            "status": {"phase": "Running"}});
        let plan = reconcile(&d, &rses, std::slice::from_ref(&pod), NOW);
        assert!(!plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateReplicaSet(_))));
        // Gone: the new ReplicaSet comes, at full size.
        let plan = reconcile(&d, &rses, &[], NOW);
        let created = plan.actions.iter().find_map(|a| match a {
            Action::CreateReplicaSet(rs) => Some(rs),
            _ => None,
        });
        assert_eq!(created.map(replicas_of), Some(2));
    }

    #[test]
    fn scaling_is_proportional_during_a_rollout() {
        // Mid-rollout: old has 6, new has 4, deployment asked for 10 (+3 surge); now 20.
        let mut d = deployment(20, "v2");
        d["spec"]["strategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}});
        d["status"] = json!({"replicas": 10});
        let mk = |name: &str, image: &str, n: i64, created: i64, rev: &str| {
            let mut t = d["spec"]["template"].clone();
            t["spec"]["containers"][0]["image"] = json!(image);
            t["metadata"]["labels"][HASH_LABEL] = json!(name);
            json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"),
                     "labels": {"app": "web", HASH_LABEL: name},
                     "creationTimestamp": rfc3339(created),
                     "annotations": {REVISION: rev, DESIRED_REPLICAS: "10", MAX_REPLICAS: "13"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                         "name": "web", "uid": "d-uid", "controller": true}]},
                   "spec": {"replicas": n, "template": t,
                            "selector": {"matchLabels": {"app": "web", HASH_LABEL: name}}},
                   "status": {"replicas": n, "availableReplicas": n}})
        };
        let rses = vec![
            mk("old", "v1", 6, NOW - 50, "1"),
            mk("new", "v2", 4, NOW - 10, "2"),
        ];
        let plan = reconcile(&d, &rses, &[], NOW);
        let mut sizes: Vec<(String, i64)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::UpdateReplicaSet(_, n) => Some((util::name(n).to_string(), replicas_of(n))),
                _ => None,
            })
            .collect();
        sizes.sort();
        // 23 allowed: 6*23/13 = 10.6 -> 11 (+5), 4*23/13 = 7.1 -> 7 (+3), leftover 5 to the
        // largest.
        assert_eq!(sizes, [("new".to_string(), 7), ("old".to_string(), 16)]);
    }

    #[test]
    fn adopts_orphan_replicasets_and_ignores_foreign_ones() {
        let d = deployment(1, "v1");
        let hash = pod_template_hash(&d["spec"]["template"], None);
        let mut t = d["spec"]["template"].clone();
        t["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let orphan = json!({"metadata": {"name": format!("web-{hash}"), "namespace": "default",
                "uid": "o", "labels": {"app": "web", HASH_LABEL: hash}, "resourceVersion": "2"},
            "spec": {"replicas": 1, "template": t, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": 1}});
        let plan = reconcile(&d, &[orphan], &[], NOW);
        let adopted = plan.actions.iter().find_map(|a| match a {
            Action::UpdateReplicaSet(_, n) => Some(n),
            _ => None,
        });
        let adopted = adopted.expect("adopted");
        assert_eq!(adopted["metadata"]["ownerReferences"][0]["uid"], "d-uid");
        assert!(!plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateReplicaSet(_))));
    }

    #[test]
    fn progress_deadline_times_out() {
        let mut d = deployment(1, "v1");
        d["spec"]["progressDeadlineSeconds"] = json!(60);
        let mut rses = Vec::new();
        let plan = reconcile(&d, &rses, &[], NOW);
        apply(&plan, &mut d, &mut rses);
        settle(&mut rses, false);
        let plan = reconcile(&d, &rses, &[], NOW + 1);
        apply(&plan, &mut d, &mut rses);
        // No progress after the deadline.
        let plan = reconcile(&d, &rses, &[], NOW + 120);
        apply(&plan, &mut d, &mut rses);
        let p = get_condition(&d["status"], "Progressing").unwrap();
        assert_eq!(p["reason"], TIMED_OUT);
        assert_eq!(p["status"], "False");
    }

    #[test]
    fn paused_deployments_only_scale() {
        let mut d = deployment(2, "v1");
        let mut rses = Vec::new();
        for _ in 0..5 {
            let plan = reconcile(&d, &rses, &[], NOW);
            apply(&plan, &mut d, &mut rses);
            settle(&mut rses, true);
        }
        d["spec"]["paused"] = json!(true);
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("v2");
        d["spec"]["replicas"] = json!(4);
        for _ in 0..5 {
            let plan = reconcile(&d, &rses, &[], NOW);
            apply(&plan, &mut d, &mut rses);
            settle(&mut rses, true);
        }
        assert_eq!(rses.len(), 1);
        assert_eq!(replicas_of(&rses[0]), 4);
        let p = get_condition(&d["status"], "Progressing").unwrap();
        assert_eq!(p["reason"], PAUSED);
    }
}
