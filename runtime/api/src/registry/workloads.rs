//! Workloads (apps/v1 and batch/v1): selectors that must match their template, replica
//! counts, the template's pod spec, what may not change, and Job's generated selector.

use super::meta::{invalid, quoted, required, Cause};
use super::pod::validate_pod_spec;
use super::strategy::Strategy;
use crate::selectors::LabelSelector;
use serde_json::{json, Value};

/// The label a Job's generated selector and its pods carry.
pub const JOB_CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

fn non_negative(obj: &Value, pointer: &str, field: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = obj.pointer(pointer).and_then(Value::as_i64) {
        if n < 0 {
            causes.push(invalid(
                field,
                &n.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// A selector (at `sel_field`) that must select the template's labels (at `template`).
fn selector_matches_template(
    selector: &Value,
    template: &Value,
    sel_field: &str,
    tmpl_field: &str,
    causes: &mut Vec<Cause>,
) {
    if selector.is_null() {
        causes.push(required(sel_field.to_string(), ""));
        return;
    }
    match LabelSelector::from_label_selector_json(selector) {
        Err(e) => causes.push(invalid(sel_field, &selector.to_string(), e.message())),
        Ok(s) if s.is_everything() => causes.push(invalid(
            sel_field,
            &selector.to_string(),
            "empty selector is invalid for deployment",
        )),
        Ok(s) => {
            if !s.matches_object(template) {
                let labels = template["metadata"]["labels"].to_string();
                causes.push(invalid(
                    format!("{tmpl_field}.metadata.labels"),
                    &labels,
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
}

fn restart_policy_in(spec: &Value, field: &str, allowed: &[&str], causes: &mut Vec<Cause>) {
    let policy = spec["restartPolicy"].as_str().unwrap_or("Always");
    if !allowed.contains(&policy) {
        let supported: Vec<String> = allowed.iter().map(|a| quoted(a)).collect();
        causes.push((
            format!("{field}.restartPolicy"),
            format!(
                "Unsupported value: {}: supported values: {}",
                quoted(policy),
                supported.join(", ")
            ),
        ));
    }
}

/// What an apps/v1 workload with `spec.selector` and `spec.template` must satisfy.
fn validate_apps(obj: &Value, replicas: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    if replicas {
        non_negative(obj, "/spec/replicas", "spec.replicas", &mut causes);
    }
    non_negative(
        obj,
        "/spec/minReadySeconds",
        "spec.minReadySeconds",
        &mut causes,
    );
    non_negative(
        obj,
        "/spec/revisionHistoryLimit",
        "spec.revisionHistoryLimit",
        &mut causes,
    );
    causes.extend(selector_and_template(
        &obj["spec"],
        &obj["spec"]["selector"],
    ));
    causes
}

/// A selector that must select the template's labels, and a template whose pods always
/// restart (what every replicating workload has).
fn selector_and_template(spec: &Value, selector: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    selector_matches_template(
        selector,
        &spec["template"],
        "spec.selector",
        "spec.template",
        &mut causes,
    );
    causes.extend(validate_pod_spec(
        &spec["template"]["spec"],
        "spec.template.spec",
    ));
    restart_policy_in(
        &spec["template"]["spec"],
        "spec.template.spec",
        &["Always"],
        &mut causes,
    );
    causes
}

fn selector_immutable(new: &Value, old: &Value, causes: &mut Vec<Cause>) {
    if new["spec"]["selector"] != old["spec"]["selector"] {
        causes.push(invalid(
            "spec.selector",
            &new["spec"]["selector"].to_string(),
            "field is immutable",
        ));
    }
}

pub struct DeploymentStrategy;
impl Strategy for DeploymentStrategy {
    fn resets_status_on_create(&self) -> bool {
        true
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = validate_apps(obj, true);
        non_negative(
            obj,
            "/spec/progressDeadlineSeconds",
            "spec.progressDeadlineSeconds",
            &mut causes,
        );
        if let Some(t) = obj["spec"]["strategy"]["type"].as_str() {
            if !matches!(t, "Recreate" | "RollingUpdate") {
                causes.push((
                    "spec.strategy.type".into(),
                    format!(
                        "Unsupported value: {}: supported values: \"Recreate\", \"RollingUpdate\"",
                        quoted(t)
                    ),
                ));
            }
        }
        causes
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        selector_immutable(new, old, &mut causes);
        causes
    }
}

/// ReplicaSets (`replicas: true`) and DaemonSets: an apps/v1 selector and template, the
/// selector fixed once made.
pub struct AppsStrategy {
    pub replicas: bool,
}
impl Strategy for AppsStrategy {
    fn resets_status_on_create(&self) -> bool {
        true
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_apps(obj, self.replicas)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        selector_immutable(new, old, &mut causes);
        causes
    }
}

/// ReplicationControllers: a label-map selector, defaulted from the template's labels.
pub struct ReplicationControllerStrategy;
impl Strategy for ReplicationControllerStrategy {
    fn resets_status_on_create(&self) -> bool {
        true
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        let labels = obj["spec"]["template"]["metadata"]["labels"].clone();
        let spec = &mut obj["spec"];
        if spec["selector"].as_object().is_none_or(|m| m.is_empty()) && labels.is_object() {
            spec["selector"] = labels;
        }
        if spec["replicas"].is_null() {
            spec["replicas"] = json!(1);
        }
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        non_negative(obj, "/spec/replicas", "spec.replicas", &mut causes);
        let spec = &obj["spec"];
        if spec["selector"].as_object().is_none_or(|m| m.is_empty()) {
            causes.push(required("spec.selector", ""));
        }
        let selector = json!({"matchLabels": spec["selector"]});
        causes.extend(selector_and_template(spec, &selector));
        causes
    }
}

pub struct StatefulSetStrategy;
impl Strategy for StatefulSetStrategy {
    fn resets_status_on_create(&self) -> bool {
        true
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_apps(obj, true)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        selector_immutable(new, old, &mut causes);
        // Only these may change on a StatefulSet (as kube-apiserver's message lists them).
        let view = |o: &Value| {
            let mut s = o["spec"].clone();
            if let Some(m) = s.as_object_mut() {
                for f in [
                    "replicas",
                    "ordinals",
                    "template",
                    "updateStrategy",
                    "persistentVolumeClaimRetentionPolicy",
                    "minReadySeconds",
                    "revisionHistoryLimit",
                ] {
                    m.remove(f);
                }
            }
            s
        };
        if view(new) != view(old) {
            causes.push((
                "spec".into(),
                "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into(),
            ));
        }
        causes
    }
}

/// Validation of a Job spec at `field` (also a CronJob's `spec.jobTemplate.spec`).
fn validate_job_spec(spec: &Value, field: &str, generated: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(spec, &format!("/{f}"), &format!("{field}.{f}"), &mut causes);
    }
    if generated {
        selector_matches_template(
            &spec["selector"],
            &spec["template"],
            &format!("{field}.selector"),
            &format!("{field}.template"),
            &mut causes,
        );
    }
    let template_spec = format!("{field}.template.spec");
    causes.extend(validate_pod_spec(&spec["template"]["spec"], &template_spec));
    match spec["template"]["spec"]["restartPolicy"].as_str() {
        Some("OnFailure") | Some("Never") => {}
        None => causes.push(required(
            format!("{template_spec}.restartPolicy"),
            "valid values: \"OnFailure\", \"Never\"",
        )),
        Some(_) => restart_policy_in(
            &spec["template"]["spec"],
            &template_spec,
            &["OnFailure", "Never"],
            &mut causes,
        ),
    }
    causes
}

pub struct JobStrategy;
impl Strategy for JobStrategy {
    fn resets_status_on_create(&self) -> bool {
        true
    }

    /// Unless `manualSelector` is set, the selector is the Job's own uid, and its pods carry it.
    fn prepare_for_create(&self, obj: &mut Value) {
        let spec = &mut obj["spec"];
        if spec["parallelism"].is_null() {
            spec["parallelism"] = json!(1);
        }
        if spec["completions"].is_null() && spec["parallelism"] == 1 {
            spec["completions"] = json!(1);
        }
        if spec["backoffLimit"].is_null() {
            spec["backoffLimit"] = json!(6);
        }
        if spec["completionMode"].is_null() {
            spec["completionMode"] = json!("NonIndexed");
        }
        if spec["suspend"].is_null() {
            spec["suspend"] = json!(false);
        }
        if obj["spec"]["manualSelector"] == true {
            return;
        }
        let uid = obj["metadata"]["uid"].clone();
        let name = obj["metadata"]["name"].clone();
        obj["spec"]["selector"] = json!({"matchLabels": {JOB_CONTROLLER_UID_LABEL: uid}});
        let t = &mut obj["spec"]["template"]["metadata"];
        if !t["labels"].is_object() {
            t["labels"] = json!({});
        }
        for (k, v) in [
            (JOB_CONTROLLER_UID_LABEL, &uid),
            ("controller-uid", &uid),
            (JOB_NAME_LABEL, &name),
            ("job-name", &name),
        ] {
            t["labels"][k] = v.clone();
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        validate_job_spec(&obj["spec"], "spec", true)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        selector_immutable(new, old, &mut causes);
        for f in [
            "completions",
            "completionMode",
            "podFailurePolicy",
            "backoffLimitPerIndex",
        ] {
            if new["spec"][f] != old["spec"][f] {
                causes.push(invalid(
                    format!("spec.{f}"),
                    &new["spec"][f].to_string(),
                    "field is immutable",
                ));
            }
        }
        // The template may change only while the Job is suspended (its scheduling directives).
        if new["spec"]["template"] != old["spec"]["template"] && old["spec"]["suspend"] != true {
            causes.push(invalid("spec.template", "", "field is immutable"));
        }
        causes
    }
}

pub struct CronJobStrategy;
impl Strategy for CronJobStrategy {
    fn resets_status_on_create(&self) -> bool {
        true
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        let spec = &mut obj["spec"];
        for (f, v) in [
            ("concurrencyPolicy", json!("Allow")),
            ("suspend", json!(false)),
            ("successfulJobsHistoryLimit", json!(3)),
            ("failedJobsHistoryLimit", json!(1)),
        ] {
            if spec[f].is_null() {
                spec[f] = v;
            }
        }
    }
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let spec = &obj["spec"];
        let mut causes = Vec::new();
        match spec["schedule"].as_str() {
            None | Some("") => causes.push(required("spec.schedule", "")),
            Some(s) => {
                if let Err(e) = crate::cron::Schedule::parse(s) {
                    causes.push(invalid("spec.schedule", s, &e));
                }
            }
        }
        if let Some(p) = spec["concurrencyPolicy"].as_str() {
            if !matches!(p, "Allow" | "Forbid" | "Replace") {
                causes.push((
                    "spec.concurrencyPolicy".into(),
                    format!("Unsupported value: {}: supported values: \"Allow\", \"Forbid\", \"Replace\"", quoted(p)),
                ));
            }
        }
        non_negative(
            obj,
            "/spec/startingDeadlineSeconds",
            "spec.startingDeadlineSeconds",
            &mut causes,
        );
        causes.extend(validate_job_spec(
            &spec["jobTemplate"]["spec"],
            "spec.jobTemplate.spec",
            false,
        ));
        causes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(selector: Value, labels: Value, replicas: i64) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {"replicas": replicas, "selector": selector,
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    }

    #[test]
    fn selectors_must_match_templates() {
        let ok = deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
            1,
        );
        assert!(DeploymentStrategy.validate(&ok).is_empty());
        let bad = deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "other"}),
            -1,
        );
        let fields: Vec<String> = DeploymentStrategy
            .validate(&bad)
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(fields, ["spec.replicas", "spec.template.metadata.labels"]);
        let mut moved = ok.clone();
        moved["spec"]["selector"] = json!({"matchLabels": {"app": "web", "x": "y"}});
        moved["spec"]["template"]["metadata"]["labels"]["x"] = json!("y");
        assert_eq!(
            DeploymentStrategy.validate_update(&moved, &ok)[0].0,
            "spec.selector"
        );
    }

    #[test]
    fn jobs_get_their_own_selector() {
        let mut job = json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "perl"}]}}}});
        JobStrategy.prepare_for_create(&mut job);
        assert_eq!(
            job["spec"]["selector"]["matchLabels"][JOB_CONTROLLER_UID_LABEL],
            "u-1"
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
        assert!(JobStrategy.validate(&job).is_empty());
        job["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        assert_eq!(
            JobStrategy.validate(&job)[0].0,
            "spec.template.spec.restartPolicy"
        );
    }
}
