//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` gets as its rules every
//! rule of the ClusterRoles its `clusterRoleSelectors` select, as kube-controller-manager's
//! clusterrole-aggregation controller keeps them (how `admin`, `edit` and `view` grow with
//! the CRDs that label roles for them).

use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::selectors::LabelSelector;
use cairn_store::{Event, Store};
use serde_json::Value;
use std::time::Duration;

fn clusterroles() -> &'static cairn_api::resources::Resource {
    cairn_api::resources::find("rbac.authorization.k8s.io", "v1", "clusterroles")
        .unwrap_or_else(|| panic!("clusterroles are missing from the resource table"))
}

/// The rules `role` aggregates from `all` ClusterRoles, in order, without repeats; `None`
/// when it has no aggregation rule.
pub fn aggregated_rules(role: &Value, all: &[Value]) -> Option<Vec<Value>> {
    let selectors: Vec<LabelSelector> = role["aggregationRule"]["clusterRoleSelectors"]
        .as_array()?
        .iter()
        .filter_map(|s| LabelSelector::from_label_selector_json(s).ok())
        .collect();
    let mut sources: Vec<&Value> = all
        .iter()
        .filter(|r| util::name(r) != util::name(role))
        .filter(|r| selectors.iter().any(|s| s.matches_object(r)))
        .collect();
    sources.sort_by_key(|r| util::name(r).to_string());
    let mut rules: Vec<Value> = Vec::new();
    for r in sources {
        for rule in r["rules"].as_array().into_iter().flatten() {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    Some(rules)
}

pub struct ClusterRoleAggregation;

#[async_trait]
impl Controller for ClusterRoleAggregation {
    fn name(&self) -> &'static str {
        "clusterrole-aggregation"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![clusterroles().key_prefix(None)]
    }

    async fn items_for(&self, store: &dyn Store, _ev: &Event) -> Vec<String> {
        // Any role may be selected by any aggregating role: look at every aggregating one.
        self.all_items(store).await.unwrap_or_default()
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let all = util::list(store, &clusterroles().key_prefix(None)).await?;
        Ok(all
            .iter()
            .filter(|r| r["aggregationRule"].is_object())
            .map(|r| util::key_of(clusterroles(), r))
            .collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(role) = util::get(store, key).await? else {
            return Ok(None);
        };
        let all = util::list(store, &clusterroles().key_prefix(None)).await?;
        if let Some(rules) = aggregated_rules(&role, &all) {
            let rules = Value::Array(rules);
            if role.get("rules") != Some(&rules) {
                let mut new = role.clone();
                new["rules"] = rules;
                util::update(store, clusterroles(), &role, new).await?;
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aggregates_the_selected_roles_rules_once() {
        let rule = |r: &str| json!({"apiGroups": [""], "resources": [r], "verbs": ["get"]});
        let view = json!({"metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"rbac.example.com/aggregate-to-view": "true"}}]}});
        let a = json!({"metadata": {"name": "a", "labels": {"rbac.example.com/aggregate-to-view": "true"}},
                       "rules": [rule("pods"), rule("services")]});
        let b = json!({"metadata": {"name": "b", "labels": {"rbac.example.com/aggregate-to-view": "true"}},
                       "rules": [rule("pods"), rule("configmaps")]});
        let other = json!({"metadata": {"name": "c"}, "rules": [rule("secrets")]});
        let rules = aggregated_rules(&view, &[view.clone(), a, b, other]).expect("aggregates");
        assert_eq!(
            rules,
            vec![rule("pods"), rule("services"), rule("configmaps")]
        );
        assert!(aggregated_rules(&json!({"metadata": {"name": "x"}}), &[]).is_none());
    }
}
