//! The Job controller: runs pods until `spec.completions` of them succeed (at most
//! `spec.parallelism` at a time), as kube-controller-manager's does for NonIndexed Jobs.
//!
//! Succeeded and failed pods are counted from the pod phase (with `restartPolicy: OnFailure`,
//! container restarts count as failures too). More failures than `backoffLimit` (default 6),
//! or running longer than `activeDeadlineSeconds`, fail the Job (conditions FailureTarget and
//! Failed, reasons BackoffLimitExceeded / DeadlineExceeded) and delete its running pods;
//! enough successes complete it (conditions SuccessCriteriaMet and Complete). A finished Job
//! with `ttlSecondsAfterFinished` is deleted that long after it finished. `spec.suspend`
//! deletes the running pods and creates none.
//!
//! Not done: Indexed completion mode, podFailurePolicy, successPolicy, backoff delays between
//! pod re-creations, pod finalizers (`batch.kubernetes.io/job-tracking`).

use super::replicaset::set_or_omit;
use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::objects::decode;
use cairn_store::{Event, Store};
use cairn_wire::events::EventType;
use cairn_wire::time::rfc3339;
use cairn_wire::value::str_at;
use serde_json::{json, Value};
use std::time::Duration;

/// What one sync of a Job must do.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<Value>,
    pub delete: Vec<Value>,
    pub status: Option<Value>,
    /// The Job's time to live after finishing has passed: delete it.
    pub delete_job: bool,
    pub requeue_after: Option<i64>,
}

/// The Job controller's name in its Events.
const COMPONENT: &str = "job-controller";

/// Whether a Job has finished: its Complete or Failed condition is True.
pub fn finished(job: &Value) -> Option<&'static str> {
    ["Complete", "Failed"]
        .into_iter()
        .find(|c| util::condition(job, c).is_some_and(|c| c["status"] == "True"))
}

fn requeue(plan: &mut Plan, secs: i64) {
    let secs = secs.max(1);
    plan.requeue_after = Some(plan.requeue_after.map_or(secs, |s| s.min(secs)));
}

fn condition(kind: &str, reason: &str, message: &str, now: i64) -> Value {
    json!({"type": kind, "status": "True", "reason": reason, "message": message,
           "lastProbeTime": rfc3339(now), "lastTransitionTime": rfc3339(now)})
}

/// The labels every pod of the Job carries.
pub fn pod_labels(job: &Value) -> [(&'static str, &str); 4] {
    [
        ("batch.kubernetes.io/controller-uid", util::uid(job)),
        ("batch.kubernetes.io/job-name", util::name(job)),
        ("controller-uid", util::uid(job)),
        ("job-name", util::name(job)),
    ]
}

/// Decides what a Job needs, from the Job and the pods of its namespace, at `now`.
pub fn reconcile(job: &Value, pods: &[Value], now: i64) -> Plan {
    let mut plan = Plan::default();
    let owned: Vec<&Value> = pods
        .iter()
        .filter(|p| util::is_controlled_by(p, job))
        .collect();
    let active: Vec<&Value> = owned
        .iter()
        .copied()
        .filter(|p| util::pod_active(p))
        .collect();
    let phase_count = |ph: &str| {
        owned
            .iter()
            .filter(|p| str_at(p, "/status/phase") == ph)
            .count() as i64
    };
    let st = &job["status"];
    let succeeded = phase_count("Succeeded").max(st["succeeded"].as_i64().unwrap_or(0));
    let mut failed = phase_count("Failed").max(st["failed"].as_i64().unwrap_or(0));
    let restarts: i64 = if str_at(job, "/spec/template/spec/restartPolicy") == "OnFailure" {
        active
            .iter()
            .flat_map(|p| {
                p["status"]["containerStatuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
            })
            .filter_map(|c| c["restartCount"].as_i64())
            .sum()
    } else {
        0
    };
    let mut status = st.as_object().cloned().unwrap_or_default();
    let mut conditions: Vec<Value> = st["conditions"].as_array().cloned().unwrap_or_default();

    if let Some(done) = finished(job) {
        plan.delete = active.iter().map(|p| (*p).clone()).collect();
        if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() {
            let at = if done == "Complete" {
                cairn_wire::time::parse_rfc3339(str_at(job, "/status/completionTime"))
            } else {
                None
            }
            .or_else(|| {
                util::condition(job, done)
                    .and_then(|c| c["lastTransitionTime"].as_str())
                    .and_then(cairn_wire::time::parse_rfc3339)
            })
            .unwrap_or(now);
            if !util::is_deleting(job) && at + ttl <= now {
                plan.delete_job = true;
            } else {
                requeue(&mut plan, at + ttl - now);
            }
        }
        let running = active.len() as i64 - plan.delete.len() as i64;
        set_or_omit(&mut status, "active", running.max(0));
        status.remove("ready");
    } else if util::is_deleting(job) {
        return plan;
    } else {
        let suspended = job["spec"]["suspend"].as_bool() == Some(true);
        if !suspended && status.get("startTime").is_none_or(Value::is_null) {
            status.insert("startTime".into(), json!(rfc3339(now)));
        }
        let start = cairn_wire::time::parse_rfc3339(
            status
                .get("startTime")
                .and_then(Value::as_str)
                .unwrap_or(""),
        )
        .unwrap_or(now);
        let backoff_limit = util::int_at(job, "/spec/backoffLimit", 6);
        let completions = job["spec"]["completions"].as_i64();
        let parallelism = util::int_at(job, "/spec/parallelism", 1).max(0);
        failed = failed.max(0);
        let mut failure: Option<(&str, String)> = None;
        if failed + restarts > backoff_limit {
            failure = Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".into(),
            ));
        } else if let Some(ads) = job["spec"]["activeDeadlineSeconds"].as_i64() {
            if !suspended {
                if start + ads <= now {
                    failure = Some((
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline".into(),
                    ));
                } else {
                    requeue(&mut plan, start + ads - now);
                }
            }
        }
        let complete = match completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        if let Some((reason, message)) = failure {
            conditions.push(condition("FailureTarget", reason, &message, now));
            conditions.push(condition("Failed", reason, &message, now));
            plan.delete = active.iter().map(|p| (*p).clone()).collect();
        } else if complete {
            let m = "Reached expected number of succeeded pods";
            conditions.push(condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                m,
                now,
            ));
            conditions.push(condition("Complete", "CompletionsReached", m, now));
            status.insert("completionTime".into(), json!(rfc3339(now)));
            plan.delete = active.iter().map(|p| (*p).clone()).collect();
        } else {
            let want = if suspended {
                0
            } else {
                match completions {
                    Some(c) => parallelism.min(c - succeeded).max(0),
                    None if succeeded > 0 => 0,
                    None => parallelism,
                }
            };
            let have = active.len() as i64;
            if have < want {
                let labels = pod_labels(job);
                plan.create = (0..want - have)
                    .map(|_| util::pod_from_template(job, "batch/v1", "Job", None, &labels))
                    .collect();
            } else if have > want {
                let mut ranked = active.clone();
                // Not yet running first, then the newest.
                ranked.sort_by_key(|p| {
                    (
                        str_at(p, "/status/phase") == "Running",
                        std::cmp::Reverse(str_at(p, "/metadata/creationTimestamp").to_string()),
                    )
                });
                plan.delete = ranked
                    .into_iter()
                    .take((have - want) as usize)
                    .cloned()
                    .collect();
            }
            if finished(&json!({"status": {"conditions": conditions}})).is_none() {
                let sus = util::condition(job, "Suspended").is_some_and(|c| c["status"] == "True");
                if suspended && !sus {
                    conditions.retain(|c| c["type"] != "Suspended");
                    conditions.push(condition("Suspended", "JobSuspended", "Job suspended", now));
                } else if !suspended && sus {
                    conditions.retain(|c| c["type"] != "Suspended");
                    let mut c = condition("Suspended", "JobResumed", "Job resumed", now);
                    c["status"] = json!("False");
                    conditions.push(c);
                }
            }
        }
        let ready = active.iter().filter(|p| util::pod_ready(p)).count() as i64;
        let running = active.len() as i64 - plan.delete.len() as i64;
        set_or_omit(&mut status, "active", running.max(0));
        status.insert(
            "ready".into(),
            json!(if plan.delete.is_empty() { ready } else { 0 }),
        );
    }
    set_or_omit(&mut status, "succeeded", succeeded);
    set_or_omit(&mut status, "failed", failed);
    if !conditions.is_empty() {
        status.insert("conditions".into(), json!(conditions));
    }
    status.insert("uncountedTerminatedPods".into(), json!({}));
    let status = Value::Object(status);
    if job.get("status") != Some(&status) {
        plan.status = Some(status);
    }
    plan
}

/// Runs [`reconcile`] against the store.
pub struct JobController;

#[async_trait]
impl Controller for JobController {
    fn name(&self) -> &'static str {
        "job"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![util::jobs().key_prefix(None), util::pods().key_prefix(None)]
    }

    async fn items_for(&self, _store: &dyn Store, ev: &Event) -> Vec<String> {
        if ev.record.key.starts_with(&util::jobs().key_prefix(None)) {
            return vec![ev.record.key.clone()];
        }
        let mut out = Vec::new();
        for rec in std::iter::once(&ev.record).chain(ev.prev.as_ref()) {
            if let Ok(pod) = decode(rec) {
                if let Some(k) = util::controller_key(&pod, "batch", "Job", util::jobs()) {
                    if !out.contains(&k) {
                        out.push(k);
                    }
                }
            }
        }
        out
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let r = util::jobs();
        let all = util::list(store, &r.key_prefix(None)).await?;
        Ok(all.iter().map(|o| util::key_of(r, o)).collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(job) = util::get(store, key).await? else {
            return Ok(None);
        };
        let pods_r = util::pods();
        let pods = util::list(store, &pods_r.key_prefix(Some(util::namespace(&job)))).await?;
        let plan = reconcile(&job, &pods, cairn_wire::time::now_secs());
        if plan.delete_job {
            // Background propagation: the garbage collector removes the pods.
            util::delete(store, util::jobs(), &job).await?;
            return Ok(None);
        }
        let normal = EventType::Normal;
        for pod in plan.create {
            let created = util::create(store, pods_r, pod).await?;
            let message = format!("Created pod: {}", util::name(&created));
            util::record_event(store, COMPONENT, &job, normal, "SuccessfulCreate", message).await;
        }
        for pod in &plan.delete {
            util::delete(store, pods_r, pod).await?;
            let message = format!("Deleted pod: {}", util::name(pod));
            util::record_event(store, COMPONENT, &job, normal, "SuccessfulDelete", message).await;
        }
        if let Some(status) = plan.status {
            let was = finished(&job);
            let mut new = job.clone();
            new["status"] = status;
            let written = util::update(store, util::jobs(), &job, new).await?;
            match (was, finished(&written)) {
                (None, Some("Complete")) => {
                    util::record_event(
                        store,
                        COMPONENT,
                        &written,
                        normal,
                        "Completed",
                        "Job completed",
                    )
                    .await
                }
                (None, Some(_)) => {
                    let reason = util::condition(&written, "Failed")
                        .and_then(|c| c["reason"].as_str())
                        .unwrap_or("BackoffLimitExceeded")
                        .to_string();
                    let message = util::condition(&written, "Failed")
                        .and_then(|c| c["message"].as_str())
                        .unwrap_or("Job has reached the specified backoff limit")
                        .to_string();
                    util::record_event(
                        store,
                        COMPONENT,
                        &written,
                        EventType::Warning,
                        &reason,
                        message,
                    )
                    .await
                }
                _ => {}
            }
        }
        Ok(plan
            .requeue_after
            .map(|s| Duration::from_secs(s.max(1) as u64)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn job(spec: Value) -> Value {
        let mut j = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "namespace": "default", "uid": "job-uid",
                         "generation": 1, "resourceVersion": "5"},
            "spec": {"template": {"metadata": {"labels": {"app": "pi"}},
                     "spec": {"restartPolicy": "Never",
                              "containers": [{"name": "c", "image": "perl"}]}}},
        });
        for (k, v) in spec.as_object().unwrap() {
            j["spec"][k] = v.clone();
        }
        j
    }

    fn pod(name: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": "3",
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                "name": "pi", "uid": "job-uid", "controller": true}]},
               "spec": {}, "status": {"phase": phase}})
    }

    #[test]
    fn runs_parallel_pods_with_job_labels() {
        let plan = reconcile(&job(json!({"completions": 5, "parallelism": 2})), &[], 100);
        assert_eq!(plan.create.len(), 2);
        let labels = &plan.create[0]["metadata"]["labels"];
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], "job-uid");
        assert_eq!(labels["job-name"], "pi");
        assert_eq!(labels["controller-uid"], "job-uid");
        assert_eq!(labels["app"], "pi");
        assert_eq!(
            plan.create[0]["metadata"]["ownerReferences"][0]["kind"],
            "Job"
        );
        let st = plan.status.unwrap();
        assert_eq!(st["startTime"], rfc3339(100));
        // Four succeeded of five: one more pod, not two.
        let pods: Vec<Value> = (0..4).map(|i| pod(&format!("p{i}"), "Succeeded")).collect();
        let plan = reconcile(
            &job(json!({"completions": 5, "parallelism": 2})),
            &pods,
            100,
        );
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.status.unwrap()["succeeded"], 4);
    }

    #[test]
    fn completes_with_conditions_and_times() {
        let pods = [pod("a", "Succeeded"), pod("b", "Succeeded")];
        let plan = reconcile(
            &job(json!({"completions": 2, "parallelism": 2})),
            &pods,
            200,
        );
        let st = plan.status.unwrap();
        let types: Vec<&str> = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);
        assert_eq!(st["completionTime"], rfc3339(200));
        assert_eq!(st["succeeded"], 2);
        assert!(plan.create.is_empty());
    }

    #[test]
    fn backoff_limit_and_deadline_fail_the_job() {
        let pods = [pod("a", "Failed"), pod("b", "Failed"), pod("c", "Running")];
        let plan = reconcile(&job(json!({"backoffLimit": 1})), &pods, 100);
        let st = plan.status.unwrap();
        let failed = util::condition(&json!({"status": st}), "Failed")
            .unwrap()
            .clone();
        assert_eq!(failed["reason"], "BackoffLimitExceeded");
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(st["failed"], 2);

        let mut j = job(json!({"activeDeadlineSeconds": 10}));
        j["status"]["startTime"] = json!(rfc3339(100));
        let plan = reconcile(&j, &[pod("c", "Running")], 105);
        assert_eq!(plan.requeue_after, Some(5));
        assert!(plan.delete.is_empty());
        let plan = reconcile(&j, &[pod("c", "Running")], 110);
        let st = plan.status.unwrap();
        let failed = util::condition(&json!({"status": st}), "Failed")
            .unwrap()
            .clone();
        assert_eq!(failed["reason"], "DeadlineExceeded");
        assert_eq!(plan.delete.len(), 1);
    }

    #[test]
    fn on_failure_restarts_count_toward_the_backoff_limit() {
        let mut j = job(json!({"backoffLimit": 2}));
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
        let mut p = pod("a", "Running");
        p["status"]["containerStatuses"] = json!([{"name": "c", "restartCount": 3}]);
        let plan = reconcile(&j, &[p], 100);
        assert!(finished(&json!({"status": plan.status.unwrap()})) == Some("Failed"));
    }

    #[test]
    fn ttl_after_finished_deletes_the_job() {
        let mut j = job(json!({"ttlSecondsAfterFinished": 30}));
        j["status"] = json!({"completionTime": rfc3339(100), "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True",
                            "lastTransitionTime": rfc3339(100)}]});
        let plan = reconcile(&j, &[pod("a", "Succeeded")], 110);
        assert!(!plan.delete_job);
        assert_eq!(plan.requeue_after, Some(20));
        assert!(reconcile(&j, &[], 130).delete_job);
    }

    #[test]
    fn suspend_deletes_running_pods() {
        let plan = reconcile(&job(json!({"suspend": true})), &[pod("a", "Running")], 100);
        assert_eq!(plan.delete.len(), 1);
        assert!(plan.create.is_empty());
        let st = plan.status.unwrap();
        assert!(st.get("startTime").is_none());
        assert_eq!(
            util::condition(&json!({"status": st}), "Suspended").unwrap()["status"],
            "True"
        );
    }

    /// Polls `f` until it returns something (8 s at most).
    pub(crate) use crate::testkit::eventually;

    pub(crate) use crate::testkit::temp_store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn job_runs_to_completion_on_a_store() {
        let (_dir, store) = temp_store().await;
        let s = &*store;
        let task = crate::spawn(JobController, store.clone(), crate::LoopOptions::default());
        let mut j = job(json!({"completions": 2, "parallelism": 2}));
        j["metadata"] = json!({"name": "pi", "namespace": "default"});
        let j = util::create(s, util::jobs(), j).await.unwrap();
        let prefix = util::pods().key_prefix(Some("default"));
        let pods = eventually("two pods", || async {
            let pods = util::list(s, &prefix).await.unwrap();
            (pods.len() == 2).then_some(pods)
        })
        .await;
        for p in pods {
            assert!(util::is_controlled_by(&p, &j));
            let mut done = p.clone();
            done["status"]["phase"] = json!("Succeeded");
            util::update(s, util::pods(), &p, done).await.unwrap();
        }
        let key = util::key_of(util::jobs(), &j);
        let done = eventually("the Job to complete", || async {
            let j = util::get(s, &key).await.unwrap()?;
            (finished(&j) == Some("Complete")).then_some(j)
        })
        .await;
        assert_eq!(done["status"]["succeeded"], 2);
        assert!(done["status"]["completionTime"].is_string());
        assert_eq!(util::list(s, &prefix).await.unwrap().len(), 2);
        task.abort();
    }
}
