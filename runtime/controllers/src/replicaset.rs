//! The ReplicaSet controller: keeps `spec.replicas` pods made from `spec.template` running,
//! as kube-controller-manager's does. ReplicationControllers, the core/v1 kind ReplicaSets
//! replaced, run through the same controller ([`Replicated::ReplicationController`]): they
//! differ only in their resource and in a selector that is a plain label map.
//!
//! A sync claims the active pods of the namespace (pods it controls and its selector matches;
//! orphans the selector matches are adopted, controlled pods it no longer matches released),
//! creates or deletes pods to reach `spec.replicas` (deleting the least useful first:
//! unscheduled, pending, not ready, ready the shortest time, most restarts, newest), and
//! writes `status` (replicas, fullyLabeledReplicas, readyReplicas, availableReplicas,
//! observedGeneration). A ReplicaSet being deleted only gets its status updated; the garbage
//! collector removes its pods.

use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::objects::decode;
use cairn_api::selectors::LabelSelector;
use cairn_store::{Event, Store};
use cairn_wire::events::EventType;
use cairn_wire::value::str_at;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The most pods one sync creates or deletes (kube-controller-manager's burstReplicas).
const BURST: usize = 500;

/// The kinds this controller keeps replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicated {
    ReplicaSet,
    ReplicationController,
}

impl Replicated {
    pub fn resource(self) -> &'static cairn_api::resources::Resource {
        match self {
            Replicated::ReplicaSet => util::replicasets(),
            Replicated::ReplicationController => util::replicationcontrollers(),
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Replicated::ReplicaSet => "apps/v1",
            Replicated::ReplicationController => "v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Replicated::ReplicaSet => "ReplicaSet",
            Replicated::ReplicationController => "ReplicationController",
        }
    }

    /// Which pods an object selects: a LabelSelector, or a ReplicationController's label map
    /// (its template's labels when it names none, as kube-apiserver defaults it).
    pub fn selector(self, obj: &Value) -> LabelSelector {
        match self {
            Replicated::ReplicaSet => util::spec_selector(obj),
            Replicated::ReplicationController => {
                let map = match &obj["spec"]["selector"] {
                    Value::Object(m) if !m.is_empty() => Value::Object(m.clone()),
                    _ => obj["spec"]["template"]["metadata"]["labels"].clone(),
                };
                match LabelSelector::from_label_selector_json(&json!({"matchLabels": map})) {
                    Ok(s) if !s.is_everything() => s,
                    _ => LabelSelector::nothing(),
                }
            }
        }
    }

    /// Whether `owner_ref` (a pod's controller reference) names this kind.
    fn owns(self, owner_ref: &Value) -> bool {
        let api_version = str_at(owner_ref, "/apiVersion");
        owner_ref["kind"] == self.kind()
            && match self {
                Replicated::ReplicaSet => api_version.starts_with("apps/"),
                Replicated::ReplicationController => api_version == "v1",
            }
    }
}

/// What one sync of a ReplicaSet must do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Pods whose ownerReferences change (adopted or released): (as read, as to write).
    pub pod_updates: Vec<(Value, Value)>,
    /// New pods (named, without uid).
    pub create: Vec<Value>,
    /// Pods to delete.
    pub delete: Vec<Value>,
    /// The new status, when it differs from the current one.
    pub status: Option<Value>,
    /// Sync again after this many seconds (a ready pod becomes available).
    pub requeue_after: Option<i64>,
}

/// Decides what a ReplicaSet needs, from the ReplicaSet and the pods of its namespace, at `now`
/// (seconds since the epoch).
pub fn reconcile(rs: &Value, pods: &[Value], now: i64) -> Plan {
    reconcile_kind(Replicated::ReplicaSet, rs, pods, now)
}

/// [`reconcile`] for a ReplicaSet or a ReplicationController.
pub fn reconcile_kind(kind: Replicated, rs: &Value, pods: &[Value], now: i64) -> Plan {
    let mut plan = Plan::default();
    let selector = kind.selector(rs);
    let deleting = util::is_deleting(rs);
    let rs_uid = util::uid(rs);
    let mut owned: Vec<Value> = Vec::new();
    for pod in pods
        .iter()
        .filter(|p| util::pod_active(p) && util::namespace(p) == util::namespace(rs))
    {
        match util::controller_ref(pod) {
            Some(r) if r["uid"].as_str() == Some(rs_uid) => {
                if selector.matches_object(pod) {
                    owned.push(pod.clone());
                } else if !deleting {
                    let mut released = pod.clone();
                    if let Some(refs) = released["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"].as_str() != Some(rs_uid));
                    }
                    plan.pod_updates.push((pod.clone(), released));
                }
            }
            Some(_) => {}
            None => {
                if deleting || !selector.matches_object(pod) {
                    continue;
                }
                let mut adopted = pod.clone();
                let owner = util::controller_owner_ref(rs, kind.api_version(), kind.kind());
                match adopted["metadata"]["ownerReferences"].as_array_mut() {
                    Some(refs) => refs.push(owner),
                    None => adopted["metadata"]["ownerReferences"] = json!([owner]),
                }
                plan.pod_updates.push((pod.clone(), adopted.clone()));
                owned.push(adopted);
            }
        }
    }

    let replicas = util::int_at(rs, "/spec/replicas", 1).max(0) as usize;
    if !deleting {
        if owned.len() < replicas {
            let n = (replicas - owned.len()).min(BURST);
            plan.create = (0..n)
                .map(|_| util::pod_from_template(rs, kind.api_version(), kind.kind(), None, &[]))
                .collect();
        } else if owned.len() > replicas {
            let n = (owned.len() - replicas).min(BURST);
            let mut ranked: Vec<&Value> = owned.iter().collect();
            ranked.sort_by_key(|p| deletion_rank(p));
            plan.delete = ranked.into_iter().take(n).cloned().collect();
        }
    }

    let min_ready = util::int_at(rs, "/spec/minReadySeconds", 0);
    let template_labels = rs
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    let mut fully_labeled = 0;
    let mut ready = 0;
    let mut available = 0;
    for pod in &owned {
        let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
        let has_all = template_labels.is_none_or(|want| {
            want.iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        });
        if has_all {
            fully_labeled += 1;
        }
        if util::pod_ready(pod) {
            ready += 1;
        }
        match util::pod_available(pod, min_ready, now) {
            (true, _) => available += 1,
            (false, Some(left)) => {
                plan.requeue_after = Some(plan.requeue_after.map_or(left, |l| l.min(left)));
            }
            (false, None) => {}
        }
    }
    let mut status = rs["status"].as_object().cloned().unwrap_or_default();
    status.insert("replicas".into(), json!(owned.len()));
    set_or_omit(&mut status, "fullyLabeledReplicas", fully_labeled);
    set_or_omit(&mut status, "readyReplicas", ready);
    set_or_omit(&mut status, "availableReplicas", available);
    set_or_omit(
        &mut status,
        "observedGeneration",
        util::int_at(rs, "/metadata/generation", 0),
    );
    let status = Value::Object(status);
    if rs.get("status") != Some(&status) {
        plan.status = Some(status);
    }
    plan
}

/// Sets a count, or removes it when zero (the fields are `omitempty` in Kubernetes).
pub(crate) fn set_or_omit(status: &mut Map<String, Value>, field: &str, n: i64) {
    if n == 0 {
        status.remove(field);
    } else {
        status.insert(field.into(), json!(n));
    }
}

/// Orders pods so the ones to delete first come first (kube-controller-manager's
/// ActivePodsWithRanks, without the co-location rank).
fn deletion_rank(pod: &Value) -> (u8, u8, u8, i64, i64, i64) {
    let assigned = u8::from(!str_at(pod, "/spec/nodeName").is_empty());
    let phase = match str_at(pod, "/status/phase") {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    };
    let ready = util::pod_ready(pod);
    let ready_since = if ready {
        util::condition(pod, "Ready")
            .and_then(|c| c["lastTransitionTime"].as_str())
            .and_then(cairn_wire::time::parse_rfc3339)
            .unwrap_or(0)
    } else {
        0
    };
    let restarts = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["restartCount"].as_i64())
        .max()
        .unwrap_or(0);
    let created =
        cairn_wire::time::parse_rfc3339(str_at(pod, "/metadata/creationTimestamp")).unwrap_or(0);
    (
        assigned,
        phase,
        u8::from(ready),
        -ready_since,
        -restarts,
        -created,
    )
}

/// A new pod from the ReplicaSet's template, controlled by it.
pub fn pod_from_template(rs: &Value) -> Value {
    util::pod_from_template(rs, "apps/v1", "ReplicaSet", None, &[])
}

/// Runs [`reconcile_kind`] against the store, for one of the [`Replicated`] kinds.
pub struct ReplicaSetController {
    pub kind: Replicated,
}

impl Default for ReplicaSetController {
    fn default() -> Self {
        ReplicaSetController {
            kind: Replicated::ReplicaSet,
        }
    }
}

impl ReplicaSetController {
    /// The owners an event on a pod concerns: its controller, or for an orphan the objects of
    /// its namespace whose selector matches it.
    async fn owners_of_pod(&self, store: &dyn Store, pod: &Value) -> Vec<String> {
        let rs = self.kind.resource();
        let ns = util::namespace(pod);
        if let Some(r) = util::controller_ref(pod) {
            if self.kind.owns(r) {
                return vec![rs.key(Some(ns), str_at(r, "/name"))];
            }
            return Vec::new();
        }
        if !util::pod_active(pod) {
            return Vec::new();
        }
        let Ok(all) = util::list(store, &rs.key_prefix(Some(ns))).await else {
            return Vec::new();
        };
        all.iter()
            .filter(|r| self.kind.selector(r).matches_object(pod))
            .map(|r| util::key_of(rs, r))
            .collect()
    }
}

#[async_trait]
impl Controller for ReplicaSetController {
    fn name(&self) -> &'static str {
        match self.kind {
            Replicated::ReplicaSet => "replicaset",
            Replicated::ReplicationController => "replicationcontroller",
        }
    }

    fn prefixes(&self) -> Vec<String> {
        vec![
            self.kind.resource().key_prefix(None),
            util::pods().key_prefix(None),
        ]
    }

    async fn items_for(&self, store: &dyn Store, ev: &Event) -> Vec<String> {
        if ev
            .record
            .key
            .starts_with(&self.kind.resource().key_prefix(None))
        {
            return vec![ev.record.key.clone()];
        }
        let mut out = Vec::new();
        for rec in std::iter::once(&ev.record).chain(ev.prev.as_ref()) {
            if let Ok(pod) = decode(rec) {
                for k in self.owners_of_pod(store, &pod).await {
                    if !out.contains(&k) {
                        out.push(k);
                    }
                }
            }
        }
        out
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let r = self.kind.resource();
        let all = util::list(store, &r.key_prefix(None)).await?;
        Ok(all.iter().map(|o| util::key_of(r, o)).collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(rs) = util::get(store, key).await? else {
            return Ok(None);
        };
        let pods_r = util::pods();
        let pods = util::list(store, &pods_r.key_prefix(Some(util::namespace(&rs)))).await?;
        let plan = reconcile_kind(self.kind, &rs, &pods, cairn_wire::time::now_secs());
        for (old, new) in plan.pod_updates {
            util::update(store, pods_r, &old, new).await?;
        }
        let component = match self.kind {
            Replicated::ReplicaSet => "replicaset-controller",
            Replicated::ReplicationController => "replication-controller",
        };
        for pod in plan.create {
            let created = util::create(store, util::pods(), pod).await?;
            let message = format!("Created pod: {}", util::name(&created));
            util::record_event(
                store,
                component,
                &rs,
                EventType::Normal,
                "SuccessfulCreate",
                message,
            )
            .await;
        }
        for pod in &plan.delete {
            util::delete(store, pods_r, pod).await?;
            let message = format!("Deleted pod: {}", util::name(pod));
            util::record_event(
                store,
                component,
                &rs,
                EventType::Normal,
                "SuccessfulDelete",
                message,
            )
            .await;
        }
        if let Some(status) = plan.status {
            let mut new = rs.clone();
            new["status"] = status;
            util::update(store, self.kind.resource(), &rs, new).await?;
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

    fn rs(replicas: i64) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web", "namespace": "default", "uid": "rs-uid", "generation": 2,
                         "resourceVersion": "7"},
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "tier": "front"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
        })
    }

    fn pod(name: &str, owner: Option<&str>, labels: Value) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "labels": labels,
                         "uid": format!("{name}-uid"), "resourceVersion": "3",
                         "creationTimestamp": rfc3339(100)},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Pending"},
        });
        if let Some(o) = owner {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1",
                "kind": "ReplicaSet", "name": "web", "uid": o, "controller": true}]);
        }
        p
    }

    fn ready(mut p: Value, since: i64) -> Value {
        p["status"]["conditions"] =
            json!([{"type": "Ready", "status": "True", "lastTransitionTime": rfc3339(since)}]);
        p["status"]["phase"] = json!("Running");
        p
    }

    #[test]
    fn creates_missing_pods_from_the_template() {
        let plan = reconcile(&rs(3), &[], 1000);
        assert_eq!(plan.create.len(), 3);
        let p = &plan.create[0];
        assert!(util::name(p).starts_with("web-"));
        assert_eq!(util::name(p).len(), "web-".len() + 5);
        assert_eq!(
            p["metadata"]["labels"],
            json!({"app": "web", "tier": "front"})
        );
        assert_eq!(p["metadata"]["namespace"], "default");
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], "rs-uid");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
        assert_eq!(owner["kind"], "ReplicaSet");
        assert_eq!(p["spec"]["containers"][0]["image"], "nginx");
        let status = plan.status.unwrap();
        assert_eq!(status["replicas"], 0);
        assert_eq!(status["observedGeneration"], 2);
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn counts_status_and_stays_quiet_when_nothing_changes() {
        let labels = json!({"app": "web", "tier": "front"});
        let pods = vec![
            ready(pod("a", Some("rs-uid"), labels.clone()), 10),
            pod("b", Some("rs-uid"), json!({"app": "web"})),
        ];
        let mut r = rs(2);
        let plan = reconcile(&r, &pods, 1000);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        let status = plan.status.unwrap();
        assert_eq!(
            status,
            json!({"replicas": 2, "fullyLabeledReplicas": 1, "readyReplicas": 1,
                   "availableReplicas": 1, "observedGeneration": 2})
        );
        r["status"] = status;
        assert!(reconcile(&r, &pods, 1000).status.is_none());
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut r = rs(1);
        r["spec"]["minReadySeconds"] = json!(30);
        let pods = vec![ready(pod("a", Some("rs-uid"), json!({"app": "web"})), 990)];
        let plan = reconcile(&r, &pods, 1000);
        assert_eq!(plan.status.as_ref().unwrap()["readyReplicas"], 1);
        assert!(plan
            .status
            .as_ref()
            .unwrap()
            .get("availableReplicas")
            .is_none());
        assert_eq!(plan.requeue_after, Some(20));
    }

    #[test]
    fn deletes_the_least_useful_pods_first() {
        let labels = json!({"app": "web"});
        let mut bound = ready(pod("bound-ready", Some("rs-uid"), labels.clone()), 10);
        bound["spec"]["nodeName"] = json!("n1");
        let mut bound_pending = pod("bound-pending", Some("rs-uid"), labels.clone());
        bound_pending["spec"]["nodeName"] = json!("n1");
        let unbound = pod("unbound", Some("rs-uid"), labels.clone());
        let plan = reconcile(&rs(1), &[bound, bound_pending, unbound], 1000);
        let deleted: Vec<&str> = plan.delete.iter().map(util::name).collect();
        assert_eq!(deleted, ["unbound", "bound-pending"]);
    }

    #[test]
    fn adopts_orphans_and_releases_mismatches_and_ignores_others() {
        let orphan = pod("orphan", None, json!({"app": "web"}));
        let mismatch = pod("mine-but-relabeled", Some("rs-uid"), json!({"app": "db"}));
        let foreign = pod("foreign", Some("other-uid"), json!({"app": "web"}));
        let mut finished = pod("done", None, json!({"app": "web"}));
        finished["status"]["phase"] = json!("Succeeded");
        let plan = reconcile(&rs(1), &[orphan, mismatch, foreign, finished], 1000);
        assert_eq!(plan.pod_updates.len(), 2);
        let (_, adopted) = &plan.pod_updates[0];
        assert_eq!(util::name(adopted), "orphan");
        assert_eq!(adopted["metadata"]["ownerReferences"][0]["uid"], "rs-uid");
        let (_, released) = &plan.pod_updates[1];
        assert_eq!(util::name(released), "mine-but-relabeled");
        assert_eq!(released["metadata"]["ownerReferences"], json!([]));
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.status.unwrap()["replicas"], 1);
    }

    #[test]
    fn a_deleting_replicaset_neither_creates_nor_adopts() {
        let mut r = rs(3);
        r["metadata"]["deletionTimestamp"] = json!(rfc3339(1));
        let plan = reconcile(&r, &[pod("orphan", None, json!({"app": "web"}))], 1000);
        assert!(plan.create.is_empty() && plan.pod_updates.is_empty());
    }

    #[test]
    fn replication_controllers_select_by_label_map() {
        let rc = json!({"apiVersion": "v1", "kind": "ReplicationController",
            "metadata": {"name": "web", "namespace": "default", "uid": "rc-uid"},
            "spec": {"replicas": 2, "selector": {"app": "web"},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
        let orphan = pod("orphan", None, json!({"app": "web"}));
        let plan = reconcile_kind(Replicated::ReplicationController, &rc, &[orphan], 1000);
        assert_eq!(plan.create.len(), 1);
        let owner = &plan.create[0]["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["apiVersion"].as_str()),
            (Some("ReplicationController"), Some("v1"))
        );
        assert_eq!(plan.pod_updates.len(), 1, "the orphan is adopted");
        let mut no_selector = rc.clone();
        no_selector["spec"]["selector"] = json!({});
        assert!(Replicated::ReplicationController
            .selector(&no_selector)
            .matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
    }
}
