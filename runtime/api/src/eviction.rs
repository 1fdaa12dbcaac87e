//! `pods/{name}/eviction`: a delete that honours PodDisruptionBudgets, as kube-apiserver's
//! eviction subresource does (what `kubectl drain` posts). A budget that allows no more
//! disruptions answers 429; an eviction it allows takes one from `disruptionsAllowed` (and
//! names the pod in `disruptedPods`) before the pod is deleted, so two evictions racing for
//! the last allowed disruption cannot both pass.

use crate::objects::decode;
use crate::registry::{self, meta, DeleteOptions, Part, RegistryError, WriteOptions};
use crate::resources;
use crate::selectors::LabelSelector;
use crate::status::ApiError;
use axum::http::StatusCode;
use cairn_store::{Store, StoreError};
use serde_json::{json, Value};

/// The pod disruption budgets of `namespace` that select `pod`.
async fn budgets_of(store: &dyn Store, pod: &Value) -> Result<Vec<(Value, i64)>, ApiError> {
    let pdbs = resources::find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("poddisruptionbudgets are not served"))?;
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let listed = store
        .list(&pdbs.key_prefix(Some(ns)), None, 0, None)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut out = Vec::new();
    for rec in &listed.records {
        let pdb = decode(rec)?;
        if budget_selects(&pdb, pod) {
            out.push((pdb, rec.revision));
        }
    }
    Ok(out)
}

/// Whether a budget's selector (policy/v1: an empty selector selects every pod) takes `pod`.
pub fn budget_selects(pdb: &Value, pod: &Value) -> bool {
    match LabelSelector::from_label_selector_json(&pdb["spec"]["selector"]) {
        Ok(s) => s.matches_object(pod),
        Err(_) => false,
    }
}

fn too_many_requests(message: &str, cause: Option<String>) -> ApiError {
    let mut e = ApiError::bad_request(message);
    e.code = StatusCode::TOO_MANY_REQUESTS;
    e.reason = "TooManyRequests";
    if let Some(c) = cause {
        e.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": c}]}));
    }
    e
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Takes one disruption from the budget, or says why it cannot.
async fn take_disruption(store: &dyn Store, pod: &Value, dry_run: bool) -> Result<(), ApiError> {
    let pdbs = resources::find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("poddisruptionbudgets are not served"))?;
    for _ in 0..5 {
        let budgets = budgets_of(store, pod).await?;
        let (pdb, rev) = match budgets.as_slice() {
            [] => return Ok(()),
            [one] => one.clone(),
            _ => {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ))
            }
        };
        let name = meta::name(&pdb).to_string();
        let status = &pdb["status"];
        let observed = status["observedGeneration"].as_i64().unwrap_or(0);
        let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
        let violation = "Cannot evict pod as it would violate the pod's disruption budget.";
        if observed < generation {
            return Err(too_many_requests(violation, None));
        }
        let healthy = status["currentHealthy"].as_i64().unwrap_or(0);
        let desired = status["desiredHealthy"].as_i64().unwrap_or(0);
        // An unready pod does not count toward the budget: evicting it costs nothing while the
        // budget is met (unhealthyPodEvictionPolicy IfHealthyBudget, the default).
        if !ready(pod) && healthy >= desired {
            return Ok(());
        }
        let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
        if allowed <= 0 {
            let cause = format!(
                "The disruption budget {name} needs {desired} healthy pods and has {healthy} currently"
            );
            return Err(too_many_requests(violation, Some(cause)));
        }
        if dry_run {
            return Ok(());
        }
        let mut new = pdb.clone();
        new["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if !new["status"]["disruptedPods"].is_object() {
            new["status"]["disruptedPods"] = json!({});
        }
        new["status"]["disruptedPods"][meta::name(pod)] = json!(cairn_wire::time::now_rfc3339());
        let opts = WriteOptions {
            field_manager: Some("cairn-eviction".into()),
            ..WriteOptions::default()
        };
        match registry::update(store, pdbs, &pdb, rev, new, Part::Status, &opts).await {
            Ok(_) => return Ok(()),
            Err(RegistryError::Store(StoreError::Conflict { .. })) => continue,
            Err(e) => return Err(e.into_api(pdbs, &name)),
        }
    }
    Err(ApiError::conflict("poddisruptionbudgets", "policy", ""))
}

/// Answers `POST pods/{name}/eviction` with the Eviction `body`.
pub async fn evict(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    body: &Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let pods = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("no pods"))?;
    let rec = store
        .get(&pods.key(Some(namespace), name))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found("pods", "", name))?;
    let pod = decode(&rec)?;
    if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object: {name}"
        )));
    }
    // A finished pod disrupts nothing; one being deleted already is deleted again.
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if !finished && !meta::is_deleting(&pod) {
        take_disruption(store, &pod, dry_run).await?;
    }
    let options = &body["deleteOptions"];
    let opts = DeleteOptions {
        dry_run: dry_run
            || options["dryRun"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "All")),
        grace_period: options["gracePeriodSeconds"].as_i64(),
        precondition_revision: options["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        precondition_uid: options["preconditions"]["uid"].as_str().map(str::to_string),
        ..DeleteOptions::default()
    };
    registry::delete(store, pods, &pod, rec.revision, &opts)
        .await
        .map_err(|e| e.into_api(pods, name))?;
    Ok(
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}
