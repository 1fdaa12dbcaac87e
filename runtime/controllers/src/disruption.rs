//! The disruption controller: keeps each PodDisruptionBudget's status (expected, healthy and
//! desired pods, disruptions allowed, the DisruptionAllowed condition) as
//! kube-controller-manager's does; the API's eviction subresource spends what it allows.
//!
//! The pods a budget counts are the non-terminal pods of its namespace its selector takes
//! (policy/v1: an empty selector takes them all). `minAvailable` (a count or a percentage of
//! those pods, rounded up) or `expected - maxUnavailable` (rounded up) is the desired number
//! of healthy (Ready) pods; neither set means `minAvailable: 1`. A pod an eviction named in
//! `disruptedPods` does not count as healthy for two minutes, or until it is gone.

use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::eviction::budget_selects;
use cairn_api::objects::decode;
use cairn_store::{Event, Store};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// How long an evicted pod stays out of the healthy count while it goes.
const DISRUPTION_TIMEOUT_SECS: i64 = 120;

fn pdbs() -> &'static cairn_api::resources::Resource {
    cairn_api::resources::find("policy", "v1", "poddisruptionbudgets")
        .unwrap_or_else(|| panic!("poddisruptionbudgets are missing from the resource table"))
}

/// `n` of `total` for an int-or-percent: the number, or the percentage rounded up.
fn scaled(v: &Value, total: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.trim().parse().ok()?;
            Some((total * pct + 99) / 100)
        }
        _ => None,
    }
}

/// The budget's status for `pods` (its namespace's) at `now`.
pub fn status(pdb: &Value, pods: &[Value], now: i64) -> Value {
    let counted: Vec<&Value> = pods
        .iter()
        .filter(|p| util::namespace(p) == util::namespace(pdb))
        .filter(|p| util::pod_active(p) && budget_selects(pdb, p))
        .collect();
    let expected = counted.len() as i64;
    // Evictions still in flight: their pods exist and the eviction is recent.
    let mut disrupted = Map::new();
    for (name, at) in pdb["status"]["disruptedPods"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let recent = at
            .as_str()
            .and_then(cairn_wire::time::parse_rfc3339)
            .is_some_and(|t| t + DISRUPTION_TIMEOUT_SECS > now);
        if recent && counted.iter().any(|p| util::name(p) == name) {
            disrupted.insert(name.clone(), at.clone());
        }
    }
    let healthy = counted
        .iter()
        .filter(|p| util::pod_ready(p) && !disrupted.contains_key(util::name(p)))
        .count() as i64;
    let spec = &pdb["spec"];
    let desired = match (&spec["minAvailable"], &spec["maxUnavailable"]) {
        (min, _) if !min.is_null() => scaled(min, expected).unwrap_or(expected),
        (_, max) if !max.is_null() => (expected - scaled(max, expected).unwrap_or(0)).max(0),
        _ => 1,
    };
    let allowed = (healthy - desired).max(0);
    let old_condition = pdb["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionAllowed"))
        .cloned();
    let state = if allowed > 0 { "True" } else { "False" };
    let reason = if allowed > 0 {
        "SufficientPods"
    } else {
        "InsufficientPods"
    };
    let since = match &old_condition {
        Some(c) if c["status"] == state => c["lastTransitionTime"].clone(),
        _ => json!(cairn_wire::time::rfc3339(now)),
    };
    let generation = util::int_at(pdb, "/metadata/generation", 0);
    json!({
        "observedGeneration": generation,
        "disruptedPods": disrupted,
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "conditions": [{"type": "DisruptionAllowed", "status": state, "reason": reason,
                        "message": "", "lastTransitionTime": since,
                        "observedGeneration": generation}],
    })
}

pub struct DisruptionController;

#[async_trait]
impl Controller for DisruptionController {
    fn name(&self) -> &'static str {
        "disruption"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![pdbs().key_prefix(None), util::pods().key_prefix(None)]
    }

    async fn items_for(&self, store: &dyn Store, ev: &Event) -> Vec<String> {
        if ev.record.key.starts_with(&pdbs().key_prefix(None)) {
            return vec![ev.record.key.clone()];
        }
        let mut out = Vec::new();
        for rec in std::iter::once(&ev.record).chain(ev.prev.as_ref()) {
            let Ok(pod) = decode(rec) else { continue };
            let Ok(all) = util::list(store, &pdbs().key_prefix(Some(util::namespace(&pod)))).await
            else {
                continue;
            };
            for pdb in all.iter().filter(|b| budget_selects(b, &pod)) {
                let k = util::key_of(pdbs(), pdb);
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        out
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let all = util::list(store, &pdbs().key_prefix(None)).await?;
        Ok(all.iter().map(|o| util::key_of(pdbs(), o)).collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(pdb) = util::get(store, key).await? else {
            return Ok(None);
        };
        let pods = util::list(store, &util::pods().key_prefix(Some(util::namespace(&pdb)))).await?;
        let now = cairn_wire::time::now_secs();
        let status = status(&pdb, &pods, now);
        let pending = status["disruptedPods"]
            .as_object()
            .is_some_and(|m| !m.is_empty());
        if pdb.get("status") != Some(&status) {
            let mut new = pdb.clone();
            new["status"] = status;
            util::update(store, pdbs(), &pdb, new).await?;
        }
        // Disrupted pods drop out of the map after their timeout: look again then.
        Ok(pending.then(|| Duration::from_secs(DISRUPTION_TIMEOUT_SECS as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
               "status": {"phase": "Running",
                          "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    fn pdb(spec: Value) -> Value {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        json!({"metadata": {"name": "web", "namespace": "default", "generation": 2}, "spec": spec})
    }

    #[test]
    fn budgets_count_healthy_pods() {
        let pods = [pod("a", true), pod("b", true), pod("c", false)];
        let s = status(&pdb(json!({"minAvailable": 1})), &pods, 1000);
        assert_eq!(
            (
                s["expectedPods"].as_i64(),
                s["currentHealthy"].as_i64(),
                s["desiredHealthy"].as_i64(),
                s["disruptionsAllowed"].as_i64()
            ),
            (Some(3), Some(2), Some(1), Some(1))
        );
        assert_eq!(s["conditions"][0]["reason"], "SufficientPods");
        assert_eq!(s["observedGeneration"], 2);
        let s = status(&pdb(json!({"maxUnavailable": "50%"})), &pods, 1000);
        assert_eq!(s["desiredHealthy"], 1, "3 - ceil(1.5)");
        let s = status(&pdb(json!({"minAvailable": "100%"})), &pods, 1000);
        assert_eq!(s["disruptionsAllowed"], 0);
        assert_eq!(s["conditions"][0]["reason"], "InsufficientPods");
    }

    #[test]
    fn evicted_pods_are_not_healthy_for_a_while() {
        let mut b = pdb(json!({"minAvailable": 1}));
        b["status"] = json!({"disruptedPods": {"a": cairn_wire::time::rfc3339(1000)}});
        let pods = [pod("a", true), pod("b", true)];
        assert_eq!(status(&b, &pods, 1010)["disruptionsAllowed"], 0);
        assert_eq!(status(&b, &pods, 1200)["disruptionsAllowed"], 1);
    }
}
