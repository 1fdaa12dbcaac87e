//! The CronJob controller: creates a Job from `spec.jobTemplate` at each time `spec.schedule`
//! names, as kube-controller-manager's (CronJobControllerV2) does.
//!
//! The schedule is standard 5-field cron (minute hour day-of-month month day-of-week; `*`,
//! `?`, ranges, steps, lists, month and weekday names; day-of-month and day-of-week are ORed
//! when both are restricted) or a macro (`@yearly`, `@annually`, `@monthly`, `@weekly`,
//! `@daily`, `@midnight`, `@hourly`). Only UTC is supported: a `spec.timeZone` other than
//! `UTC`/`Etc/UTC` is refused with a `UnknownTimeZone` warning Event and nothing is scheduled.
//! Jobs are named `<cronjob>-<scheduled time in minutes since the epoch>`; only the most recent
//! missed time is run, unless it is older than `startingDeadlineSeconds`. `concurrencyPolicy`
//! Allow/Forbid/Replace, `suspend`, and the history limits (successful 3, failed 1) apply.
//! The clock is injectable ([`CronJobController::with_clock`]) for tests.

use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::cron::Schedule;
use cairn_api::objects::decode;
use cairn_store::{Event, Store};
use cairn_wire::time::rfc3339;
use cairn_wire::value::str_at;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// What one sync of a CronJob must do.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Option<Value>,
    pub delete: Vec<Value>,
    pub status: Option<Value>,
    /// A warning to record as an Event: (reason, message).
    pub warning: Option<(String, String)>,
    pub requeue_after: Option<i64>,
}

fn job_ref(job: &Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "name": util::name(job),
           "namespace": util::namespace(job), "uid": util::uid(job)})
}

/// Decides what a CronJob needs, from it and the Jobs of its namespace, at `now`.
pub fn reconcile(cj: &Value, jobs: &[Value], now: i64) -> Plan {
    let mut plan = Plan::default();
    let owned: Vec<&Value> = jobs
        .iter()
        .filter(|j| util::is_controlled_by(j, cj))
        .collect();
    let mut active: Vec<&Value> = Vec::new();
    let mut succeeded: Vec<&Value> = Vec::new();
    let mut failed: Vec<&Value> = Vec::new();
    for j in &owned {
        match super::job::finished(j) {
            Some("Complete") => succeeded.push(j),
            Some(_) => failed.push(j),
            None if !util::is_deleting(j) => active.push(j),
            None => {}
        }
    }
    let mut status = cj["status"].as_object().cloned().unwrap_or_default();
    let last_success = succeeded
        .iter()
        .filter_map(|j| cairn_wire::time::parse_rfc3339(str_at(j, "/status/completionTime")))
        .max();
    if let Some(t) = last_success {
        let old = status
            .get("lastSuccessfulTime")
            .and_then(Value::as_str)
            .and_then(cairn_wire::time::parse_rfc3339);
        if old.is_none_or(|o| o < t) {
            status.insert("lastSuccessfulTime".into(), json!(rfc3339(t)));
        }
    }
    // History limits: delete the oldest finished Jobs beyond them.
    let created = |j: &&Value| {
        (
            cairn_wire::time::parse_rfc3339(str_at(j, "/metadata/creationTimestamp")).unwrap_or(0),
            util::name(j).to_string(),
        )
    };
    for (mut list, limit) in [
        (
            succeeded,
            util::int_at(cj, "/spec/successfulJobsHistoryLimit", 3),
        ),
        (failed, util::int_at(cj, "/spec/failedJobsHistoryLimit", 1)),
    ] {
        list.sort_by_key(created);
        let extra = list.len().saturating_sub(limit.max(0) as usize);
        plan.delete.extend(
            list.into_iter()
                .take(extra)
                .filter(|j| !util::is_deleting(j))
                .cloned(),
        );
    }

    let mut new_active: Vec<Value> = active.iter().map(|j| job_ref(j)).collect();
    let tz = str_at(cj, "/spec/timeZone");
    let schedule = if !tz.is_empty() && tz != "UTC" && tz != "Etc/UTC" {
        Err((
            "UnknownTimeZone",
            format!("invalid timeZone: {tz:?}: only UTC is supported"),
        ))
    } else {
        Schedule::parse(str_at(cj, "/spec/schedule")).map_err(|e| {
            (
                "UnparseableSchedule",
                format!(
                    "unparseable schedule: {:?} : {e}",
                    str_at(cj, "/spec/schedule")
                ),
            )
        })
    };
    match schedule {
        Err((reason, message)) => plan.warning = Some((reason.to_string(), message)),
        Ok(_) if util::is_deleting(cj) => {}
        Ok(sched) => {
            let earliest = status
                .get("lastScheduleTime")
                .and_then(Value::as_str)
                .and_then(cairn_wire::time::parse_rfc3339)
                .or_else(|| {
                    cairn_wire::time::parse_rfc3339(str_at(cj, "/metadata/creationTimestamp"))
                })
                .unwrap_or(now);
            let after = earliest;
            let suspended = cj["spec"]["suspend"].as_bool() == Some(true);
            let latest = sched.most_recent(after, now);
            if let (Some(t), false) = (latest, suspended) {
                let too_late = cj["spec"]["startingDeadlineSeconds"]
                    .as_i64()
                    .is_some_and(|sds| t + sds < now);
                let name = format!("{}-{}", util::name(cj), t / 60);
                let exists = owned.iter().any(|j| util::name(j) == name);
                let policy = str_at(cj, "/spec/concurrencyPolicy");
                if too_late {
                    plan.warning = Some((
                        "MissSchedule".into(),
                        format!("Missed scheduled time to start a job: {}", rfc3339(t)),
                    ));
                } else if exists {
                    status.insert("lastScheduleTime".into(), json!(rfc3339(t)));
                } else if policy == "Forbid" && !active.is_empty() {
                    // Skipped; looked at again when the active Job finishes or at the next time.
                } else {
                    if policy == "Replace" {
                        plan.delete.extend(active.iter().map(|j| (*j).clone()));
                        new_active.clear();
                    }
                    plan.create = Some(job_from_template(cj, &name, t));
                    status.insert("lastScheduleTime".into(), json!(rfc3339(t)));
                }
            }
            if let Some(next) = sched.next_after(now) {
                plan.requeue_after = Some((next - now).max(1));
            }
        }
    }
    if new_active.is_empty() {
        status.remove("active");
    } else {
        status.insert("active".into(), json!(new_active));
    }
    let status = Value::Object(status);
    if cj.get("status").unwrap_or(&json!({})) != &status {
        plan.status = Some(status);
    }
    plan
}

/// The Job for the scheduled time `t`.
pub fn job_from_template(cj: &Value, name: &str, t: i64) -> Value {
    let template = &cj["spec"]["jobTemplate"];
    let mut metadata = json!({
        "name": name,
        "namespace": util::namespace(cj),
        "ownerReferences": [util::controller_owner_ref(cj, "batch/v1", "CronJob")],
    });
    for field in ["labels", "annotations"] {
        if let Some(v) = template["metadata"].get(field).filter(|v| v.is_object()) {
            metadata[field] = v.clone();
        }
    }
    if !metadata["annotations"].is_object() {
        metadata["annotations"] = json!({});
    }
    metadata["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] = json!(rfc3339(t));
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
    })
}

/// Runs [`reconcile`] against the store, with an injectable clock.
#[derive(Clone)]
pub struct CronJobController {
    clock: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl Default for CronJobController {
    fn default() -> Self {
        CronJobController {
            clock: Arc::new(cairn_wire::time::now_secs),
        }
    }
}

impl CronJobController {
    /// A controller reading the time (seconds since the epoch) from `clock`.
    pub fn with_clock(clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        CronJobController {
            clock: Arc::new(clock),
        }
    }
}

#[async_trait]
impl Controller for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![
            util::cronjobs().key_prefix(None),
            util::jobs().key_prefix(None),
        ]
    }

    async fn items_for(&self, _store: &dyn Store, ev: &Event) -> Vec<String> {
        if ev
            .record
            .key
            .starts_with(&util::cronjobs().key_prefix(None))
        {
            return vec![ev.record.key.clone()];
        }
        let mut out = Vec::new();
        for rec in std::iter::once(&ev.record).chain(ev.prev.as_ref()) {
            if let Ok(job) = decode(rec) {
                if let Some(k) = util::controller_key(&job, "batch", "CronJob", util::cronjobs()) {
                    if !out.contains(&k) {
                        out.push(k);
                    }
                }
            }
        }
        out
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let r = util::cronjobs();
        let all = util::list(store, &r.key_prefix(None)).await?;
        Ok(all.iter().map(|o| util::key_of(r, o)).collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(cj) = util::get(store, key).await? else {
            return Ok(None);
        };
        let jobs_r = util::jobs();
        let jobs = util::list(store, &jobs_r.key_prefix(Some(util::namespace(&cj)))).await?;
        let now = (self.clock)();
        let plan = reconcile(&cj, &jobs, now);
        for job in &plan.delete {
            // Background propagation: the garbage collector removes the pods.
            util::delete(store, jobs_r, job).await?;
        }
        if let Some(job) = plan.create {
            match util::create(store, jobs_r, job).await {
                Err(e)
                    if util::is_store_error(&e, |s| {
                        matches!(s, cairn_store::StoreError::AlreadyExists)
                    }) => {}
                other => {
                    other?;
                }
            }
        }
        if let Some((reason, message)) = &plan.warning {
            record_warning(store, &cj, reason, message).await;
        }
        if let Some(status) = plan.status {
            let mut new = cj.clone();
            new["status"] = status;
            util::update(store, util::cronjobs(), &cj, new).await?;
        }
        // Look again at the next scheduled time, and at least once a minute (the clock may be
        // a test's).
        Ok(Some(Duration::from_secs(
            plan.requeue_after.unwrap_or(60).clamp(1, 60) as u64,
        )))
    }
}

/// Records a Warning Event about a CronJob.
async fn record_warning(store: &dyn Store, cj: &Value, reason: &str, message: &str) {
    let warning = cairn_wire::events::EventType::Warning;
    util::record_event(store, "cronjob-controller", cj, warning, reason, message).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2024-01-01T00:00:00Z, a Monday.
    const T0: i64 = 1_704_067_200;

    fn cj(spec: Value) -> Value {
        let mut c = json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "tick", "namespace": "default", "uid": "cj-uid",
                         "resourceVersion": "4", "creationTimestamp": rfc3339(T0)},
            "spec": {"schedule": "*/5 * * * *",
                     "jobTemplate": {"metadata": {"labels": {"app": "tick"}},
                                     "spec": {"template": {"spec": {"restartPolicy": "Never",
                                         "containers": [{"name": "c", "image": "busybox"}]}}}}},
        });
        for (k, v) in spec.as_object().unwrap() {
            c["spec"][k] = v.clone();
        }
        c
    }

    fn job(name: &str, state: Option<&str>, created: i64) -> Value {
        let mut j = json!({"metadata": {"name": name, "namespace": "default", "uid": name,
                "resourceVersion": "9", "creationTimestamp": rfc3339(created),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                    "name": "tick", "uid": "cj-uid", "controller": true}]},
            "spec": {}, "status": {}});
        if let Some(s) = state {
            j["status"]["conditions"] = json!([{"type": s, "status": "True"}]);
            if s == "Complete" {
                j["status"]["completionTime"] = json!(rfc3339(created + 10));
            }
        }
        j
    }

    #[test]
    fn creates_the_job_for_the_most_recent_time() {
        let plan = reconcile(&cj(json!({})), &[], T0 + 11 * 60 + 30);
        let job = plan.create.unwrap();
        let t = T0 + 10 * 60;
        assert_eq!(util::name(&job), format!("tick-{}", t / 60));
        assert_eq!(job["metadata"]["labels"]["app"], "tick");
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
        assert_eq!(
            job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"],
            rfc3339(t)
        );
        assert_eq!(plan.status.unwrap()["lastScheduleTime"], rfc3339(t));
        assert_eq!(plan.requeue_after, Some(3 * 60 + 30));
        // Nothing due yet.
        assert!(reconcile(&cj(json!({})), &[], T0 + 4 * 60).create.is_none());
        // Suspended.
        assert!(reconcile(&cj(json!({"suspend": true})), &[], T0 + 600)
            .create
            .is_none());
    }

    #[test]
    fn concurrency_policies_and_deadline() {
        let running = job("tick-old", None, T0);
        let now = T0 + 5 * 60;
        let plan = reconcile(
            &cj(json!({"concurrencyPolicy": "Forbid"})),
            std::slice::from_ref(&running),
            now,
        );
        assert!(plan.create.is_none());
        assert_eq!(plan.status.unwrap()["active"][0]["name"], "tick-old");
        let plan = reconcile(
            &cj(json!({"concurrencyPolicy": "Replace"})),
            std::slice::from_ref(&running),
            now,
        );
        assert!(plan.create.is_some());
        assert_eq!(plan.delete.len(), 1);
        let plan = reconcile(&cj(json!({})), &[running], now);
        assert!(plan.create.is_some() && plan.delete.is_empty());
        // Too late to start.
        let plan = reconcile(&cj(json!({"startingDeadlineSeconds": 30})), &[], now + 100);
        assert!(plan.create.is_none());
        assert_eq!(plan.warning.unwrap().0, "MissSchedule");
    }

    #[test]
    fn history_limits_and_time_zones() {
        let jobs: Vec<Value> = (0..5)
            .map(|i| job(&format!("ok-{i}"), Some("Complete"), T0 + i))
            .chain((0..2).map(|i| job(&format!("bad-{i}"), Some("Failed"), T0 + i)))
            .collect();
        let plan = reconcile(&cj(json!({"suspend": true})), &jobs, T0 + 100);
        let deleted: Vec<&str> = plan.delete.iter().map(util::name).collect();
        assert_eq!(deleted, ["ok-0", "ok-1", "bad-0"]);
        assert_eq!(plan.status.unwrap()["lastSuccessfulTime"], rfc3339(T0 + 14));
        let plan = reconcile(&cj(json!({"timeZone": "Europe/Paris"})), &[], T0 + 600);
        assert!(plan.create.is_none());
        assert_eq!(plan.warning.unwrap().0, "UnknownTimeZone");
        assert!(
            reconcile(&cj(json!({"timeZone": "Etc/UTC"})), &[], T0 + 600)
                .create
                .is_some()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cronjob_creates_jobs_on_a_store_with_a_fake_clock() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let (_dir, store) = crate::job::tests::temp_store().await;
        let s = &*store;
        let clock = std::sync::Arc::new(AtomicI64::new(cairn_wire::time::now_secs()));
        let c = clock.clone();
        let task = crate::spawn(
            CronJobController::with_clock(move || c.load(Ordering::SeqCst)),
            store.clone(),
            crate::LoopOptions::default(),
        );
        let mut c = cj(json!({"schedule": "* * * * *", "concurrencyPolicy": "Replace"}));
        c["metadata"] = json!({"name": "tick", "namespace": "default"});
        let c = util::create(s, util::cronjobs(), c).await.unwrap();
        let jobs = util::jobs().key_prefix(Some("default"));
        // Two minutes later: one Job, for the latest minute.
        let t = cairn_wire::time::now_secs() + 120;
        clock.store(t, Ordering::SeqCst);
        let cj_key = util::key_of(util::cronjobs(), &c);
        // Touch the CronJob so it syncs now.
        let mut touched = c.clone();
        touched["metadata"]["labels"] = json!({"touched": "1"});
        util::update(s, util::cronjobs(), &c, touched)
            .await
            .unwrap();
        let expected = format!("tick-{}", t / 60);
        let expected = expected.as_str();
        crate::job::tests::eventually("the scheduled Job", || async {
            let all = util::list(s, &jobs).await.unwrap();
            let c = util::get(s, &cj_key).await.unwrap()?;
            (all.len() == 1
                && util::name(&all[0]) == expected
                && c["status"]["active"][0]["name"] == expected)
                .then_some(())
        })
        .await;
        task.abort();
    }
}
