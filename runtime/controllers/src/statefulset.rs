//! The StatefulSet controller: pods `<name>-0` … `<name>-(replicas-1)` with stable names,
//! hostnames and subdomain (`spec.serviceName`), as kube-controller-manager's does.
//!
//! With `podManagementPolicy: OrderedReady` (the default) pod N is created only once pods
//! 0..N-1 are Running and Ready, and scaling down removes the highest ordinal first, one at a
//! time, only while the lower ones are healthy; `Parallel` creates and deletes all at once.
//! Failed pods are deleted and re-created. Each pod carries `controller-revision-hash`
//! (`<name>-<template hash>`), `statefulset.kubernetes.io/pod-name` and
//! `apps.kubernetes.io/pod-index`. RollingUpdate (the default) replaces pods whose revision
//! is not the update revision from the highest ordinal down to `partition`, one at a time,
//! waiting for each to be Running and Ready; OnDelete replaces nothing.
//!
//! Not done: ControllerRevision objects (the kind is not served), so a pod re-created below
//! the partition gets the current template, not the old revision's; PersistentVolumeClaims
//! from `volumeClaimTemplates` (PersistentVolumeClaim is not in the resource table: they are
//! skipped); `maxUnavailable`; `persistentVolumeClaimRetentionPolicy`; `ordinals.start`.

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
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// What one sync of a StatefulSet must do.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<Value>,
    pub delete: Vec<Value>,
    pub status: Option<Value>,
    pub requeue_after: Option<i64>,
}

/// The update revision: `<name>-<template hash>`.
pub fn update_revision(sts: &Value) -> String {
    let hash = super::deployment::pod_template_hash(
        &sts["spec"]["template"],
        sts["status"]["collisionCount"].as_i64().filter(|c| *c != 0),
    );
    format!("{}-{hash}", util::name(sts))
}

fn ordinal_of(sts: &Value, pod: &Value) -> Option<i64> {
    let rest = util::name(pod)
        .strip_prefix(util::name(sts))?
        .strip_prefix('-')?;
    (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        .then(|| rest.parse().ok())
        .flatten()
}

fn healthy(pod: &Value) -> bool {
    str_at(pod, "/status/phase") == "Running" && util::pod_ready(pod) && !util::is_deleting(pod)
}

fn revision(pod: &Value) -> &str {
    str_at(pod, &format!("/metadata/labels/{REVISION_LABEL}"))
}

/// The pod of ordinal `i`.
pub fn new_pod(sts: &Value, i: i64, rev: &str) -> Value {
    let name = format!("{}-{i}", util::name(sts));
    let index = i.to_string();
    let mut pod = util::pod_from_template(
        sts,
        "apps/v1",
        "StatefulSet",
        Some(&name),
        &[
            (REVISION_LABEL, rev),
            (POD_NAME_LABEL, &name),
            (POD_INDEX_LABEL, &index),
        ],
    );
    pod["spec"]["hostname"] = json!(name);
    let service = str_at(sts, "/spec/serviceName");
    if !service.is_empty() {
        pod["spec"]["subdomain"] = json!(service);
    }
    pod
}

/// Decides what a StatefulSet needs, from it and the pods of its namespace, at `now`.
pub fn reconcile(sts: &Value, pods: &[Value], now: i64) -> Plan {
    let mut plan = Plan::default();
    let update_rev = update_revision(sts);
    let current_rev = match str_at(sts, "/status/currentRevision") {
        "" => update_rev.clone(),
        r => r.to_string(),
    };
    let replicas = util::int_at(sts, "/spec/replicas", 1).max(0);
    let parallel = str_at(sts, "/spec/podManagementPolicy") == "Parallel";
    let deleting = util::is_deleting(sts);
    let min_ready = util::int_at(sts, "/spec/minReadySeconds", 0);
    let mut by_ordinal: BTreeMap<i64, &Value> = BTreeMap::new();
    for pod in pods.iter().filter(|p| util::is_controlled_by(p, sts)) {
        if let Some(i) = ordinal_of(sts, pod) {
            by_ordinal.insert(i, pod);
        }
    }

    // Counts, over the pods as they are.
    let (mut count, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    for pod in by_ordinal.values().filter(|p| !util::is_deleting(p)) {
        count += 1;
        if util::pod_ready(pod) {
            ready += 1;
        }
        match util::pod_available(pod, min_ready, now) {
            (true, _) => available += 1,
            (false, Some(left)) => {
                plan.requeue_after = Some(plan.requeue_after.map_or(left, |l: i64| l.min(left)));
            }
            _ => {}
        }
        if revision(pod) == current_rev {
            current += 1;
        }
        if revision(pod) == update_rev {
            updated += 1;
        }
    }

    if !deleting {
        // Pods 0..replicas, in order.
        let mut blocked = false;
        for i in 0..replicas {
            match by_ordinal.get(&i) {
                None => {
                    if !blocked || parallel {
                        plan.create.push(new_pod(sts, i, &update_rev));
                    }
                    blocked = true;
                }
                Some(p) if str_at(p, "/status/phase") == "Failed" && !util::is_deleting(p) => {
                    plan.delete.push((*p).clone());
                    blocked = true;
                }
                Some(p) if !healthy(p) => blocked = true,
                Some(_) => {}
            }
            if blocked && !parallel && !plan.create.is_empty() {
                break;
            }
        }
        // Condemned pods, highest ordinal first.
        let condemned: Vec<&Value> = by_ordinal
            .range(replicas..)
            .rev()
            .map(|(_, p)| *p)
            .filter(|p| !util::is_deleting(p))
            .collect();
        if parallel {
            plan.delete.extend(condemned.into_iter().cloned());
        } else if !blocked {
            let terminating = by_ordinal
                .range(replicas..)
                .any(|(_, p)| util::is_deleting(p));
            if let (Some(p), false) = (condemned.first(), terminating) {
                plan.delete.push((*p).clone());
            }
        }
        // Rolling update: highest ordinal first, down to the partition, one at a time.
        let rolling = str_at(sts, "/spec/updateStrategy/type") != "OnDelete";
        let partition = util::int_at(sts, "/spec/updateStrategy/rollingUpdate/partition", 0);
        let all_there = (0..replicas).all(|i| by_ordinal.get(&i).is_some_and(|p| healthy(p)));
        if rolling && all_there && plan.delete.is_empty() && plan.create.is_empty() {
            for i in (partition.max(0)..replicas).rev() {
                let p = by_ordinal[&i];
                if revision(p) != update_rev {
                    plan.delete.push(p.clone());
                    break;
                }
            }
        }
    }

    let mut status = sts["status"].as_object().cloned().unwrap_or_default();
    let mut current_rev = current_rev;
    // The rollout is complete: the update revision becomes the current one.
    if updated == replicas && ready == replicas && count == replicas {
        current_rev = update_rev.clone();
        current = updated;
    }
    status.insert("replicas".into(), json!(count));
    set_or_omit(&mut status, "readyReplicas", ready);
    status.insert("availableReplicas".into(), json!(available));
    set_or_omit(&mut status, "currentReplicas", current);
    set_or_omit(&mut status, "updatedReplicas", updated);
    status.insert("currentRevision".into(), json!(current_rev));
    status.insert("updateRevision".into(), json!(update_rev));
    status.insert(
        "collisionCount".into(),
        json!(sts["status"]["collisionCount"].as_i64().unwrap_or(0)),
    );
    set_or_omit(
        &mut status,
        "observedGeneration",
        util::int_at(sts, "/metadata/generation", 0),
    );
    let status = Value::Object(status);
    if sts.get("status") != Some(&status) {
        plan.status = Some(status);
    }
    plan
}

/// Runs [`reconcile`] against the store.
pub struct StatefulSetController;

#[async_trait]
impl Controller for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![
            util::statefulsets().key_prefix(None),
            util::pods().key_prefix(None),
        ]
    }

    async fn items_for(&self, _store: &dyn Store, ev: &Event) -> Vec<String> {
        if ev
            .record
            .key
            .starts_with(&util::statefulsets().key_prefix(None))
        {
            return vec![ev.record.key.clone()];
        }
        let mut out = Vec::new();
        for rec in std::iter::once(&ev.record).chain(ev.prev.as_ref()) {
            if let Ok(pod) = decode(rec) {
                let r = util::statefulsets();
                if let Some(k) = util::controller_key(&pod, "apps", "StatefulSet", r) {
                    if !out.contains(&k) {
                        out.push(k);
                    }
                }
            }
        }
        out
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let r = util::statefulsets();
        let all = util::list(store, &r.key_prefix(None)).await?;
        Ok(all.iter().map(|o| util::key_of(r, o)).collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(sts) = util::get(store, key).await? else {
            return Ok(None);
        };
        let pods_r = util::pods();
        let pods = util::list(store, &pods_r.key_prefix(Some(util::namespace(&sts)))).await?;
        let plan = reconcile(&sts, &pods, cairn_wire::time::now_secs());
        for pod in &plan.delete {
            util::delete(store, pods_r, pod).await?;
        }
        for pod in plan.create {
            match util::create(store, pods_r, pod).await {
                // A pod of that name still exists (being deleted): the next event retries.
                Err(e)
                    if util::is_store_error(&e, |s| {
                        matches!(s, cairn_store::StoreError::AlreadyExists)
                    }) => {}
                other => {
                    other?;
                }
            }
        }
        if let Some(status) = plan.status {
            let mut new = sts.clone();
            new["status"] = status;
            util::update(store, util::statefulsets(), &sts, new).await?;
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

    fn sts(replicas: i64, extra: Value) -> Value {
        let mut s = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "default", "uid": "sts-uid",
                         "generation": 2, "resourceVersion": "7"},
            "spec": {"replicas": replicas, "serviceName": "db-headless",
                     "selector": {"matchLabels": {"app": "db"}},
                     "template": {"metadata": {"labels": {"app": "db"}},
                                  "spec": {"containers": [{"name": "c", "image": "pg:16"}]}}},
        });
        for (k, v) in extra.as_object().unwrap() {
            s["spec"][k] = v.clone();
        }
        s
    }

    fn pod(i: i64, rev: &str, healthy: bool) -> Value {
        let mut p = json!({"metadata": {"name": format!("db-{i}"), "namespace": "default",
                "resourceVersion": "2", "labels": {"app": "db", REVISION_LABEL: rev},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "name": "db", "uid": "sts-uid", "controller": true}]},
            "spec": {}, "status": {"phase": "Pending"}});
        if healthy {
            p["status"] = json!({"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": rfc3339(1)}]});
        }
        p
    }

    fn names(v: &[Value]) -> Vec<&str> {
        v.iter().map(util::name).collect()
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time() {
        let s = sts(3, json!({}));
        let rev = update_revision(&s);
        let plan = reconcile(&s, &[], 100);
        assert_eq!(names(&plan.create), ["db-0"]);
        let p = &plan.create[0];
        assert_eq!(p["spec"]["hostname"], "db-0");
        assert_eq!(p["spec"]["subdomain"], "db-headless");
        assert_eq!(p["metadata"]["labels"][POD_NAME_LABEL], "db-0");
        assert_eq!(p["metadata"]["labels"][POD_INDEX_LABEL], "0");
        assert_eq!(p["metadata"]["labels"][REVISION_LABEL], json!(rev));
        // db-0 not ready yet: wait.
        assert!(reconcile(&s, &[pod(0, &rev, false)], 100).create.is_empty());
        let plan = reconcile(&s, &[pod(0, &rev, true)], 100);
        assert_eq!(names(&plan.create), ["db-1"]);
        // Parallel: all at once.
        let plan = reconcile(
            &sts(3, json!({"podManagementPolicy": "Parallel"})),
            &[],
            100,
        );
        assert_eq!(names(&plan.create), ["db-0", "db-1", "db-2"]);
    }

    #[test]
    fn scales_down_from_the_highest_ordinal() {
        let s = sts(1, json!({}));
        let rev = update_revision(&s);
        let pods: Vec<Value> = (0..3).map(|i| pod(i, &rev, true)).collect();
        let plan = reconcile(&s, &pods, 100);
        assert_eq!(names(&plan.delete), ["db-2"]);
        let st = plan.status.unwrap();
        assert_eq!(st["replicas"], 3);
        assert_eq!(st["readyReplicas"], 3);
        assert_eq!(st["updateRevision"], json!(rev));
        assert_eq!(st["observedGeneration"], 2);
    }

    #[test]
    fn rolling_update_in_reverse_order_with_partition() {
        let s = sts(
            3,
            json!({"updateStrategy": {"type": "RollingUpdate",
                                                 "rollingUpdate": {"partition": 1}}}),
        );
        let mut s2 = s.clone();
        s2["status"]["currentRevision"] = json!("db-old");
        let rev = update_revision(&s);
        let old: Vec<Value> = (0..3).map(|i| pod(i, "db-old", true)).collect();
        let plan = reconcile(&s2, &old, 100);
        assert_eq!(names(&plan.delete), ["db-2"]);
        let st = plan.status.unwrap();
        assert_eq!(st["currentRevision"], "db-old");
        assert_eq!(st["currentReplicas"], 3);
        // db-2 updated: db-1 next; db-0 is below the partition.
        let mid = [
            pod(0, "db-old", true),
            pod(1, "db-old", true),
            pod(2, &rev, true),
        ];
        assert_eq!(names(&reconcile(&s2, &mid, 100).delete), ["db-1"]);
        let done = [
            pod(0, "db-old", true),
            pod(1, &rev, true),
            pod(2, &rev, true),
        ];
        let plan = reconcile(&s2, &done, 100);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.status.unwrap()["updatedReplicas"], 2);
        // An updated pod that is not ready holds the rollout.
        let waiting = [
            pod(0, "db-old", true),
            pod(1, "db-old", true),
            pod(2, &rev, false),
        ];
        assert!(reconcile(&s2, &waiting, 100).delete.is_empty());
        // OnDelete replaces nothing.
        let mut on_delete = s2.clone();
        on_delete["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        assert!(reconcile(&on_delete, &old, 100).delete.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statefulset_starts_pods_in_order_on_a_store() {
        let (_dir, store) = crate::job::tests::temp_store().await;
        let s = &*store;
        let task = crate::spawn(
            StatefulSetController,
            store.clone(),
            crate::LoopOptions::default(),
        );
        let mut st = sts(3, json!({}));
        st["metadata"] = json!({"name": "db", "namespace": "default"});
        let st = util::create(s, util::statefulsets(), st).await.unwrap();
        let prefix = util::pods().key_prefix(Some("default"));
        // Stand in for the node agent, checking the order as it goes.
        for i in 0..3 {
            let p = crate::job::tests::eventually("the next pod", || async {
                let pods = util::list(s, &prefix).await.unwrap();
                (pods.len() == i + 1).then(|| {
                    pods.into_iter()
                        .find(|p| util::name(p) == format!("db-{i}"))
                })?
            })
            .await;
            let mut ready = p.clone();
            ready["status"] = json!({"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True",
                 "lastTransitionTime": cairn_wire::time::now_rfc3339()}]});
            util::update(s, util::pods(), &p, ready).await.unwrap();
        }
        let key = util::key_of(util::statefulsets(), &st);
        crate::job::tests::eventually("three ready replicas", || async {
            let st = util::get(s, &key).await.unwrap()?;
            (st["status"]["readyReplicas"] == 3
                && st["status"]["currentRevision"] == st["status"]["updateRevision"])
                .then_some(())
        })
        .await;
        task.abort();
    }
}
