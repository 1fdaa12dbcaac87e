//! Custom resources: each is pruned, defaulted and validated by the structural schema its
//! CRD gives the object's version (`structural.rs`), on create and on every update.

use super::meta::Cause;
use super::strategy::Strategy;
use crate::{crd, structural};
use serde_json::Value;
use std::sync::Arc;

pub struct CustomResourceStrategy;

/// The schema of `obj`'s own version (its apiVersion and kind were checked already).
fn schema(obj: &Value) -> Option<Arc<Value>> {
    let (group, version) = obj["apiVersion"].as_str()?.split_once('/')?;
    crd::schema_of(group, version, obj["kind"].as_str()?)
}

fn prepare(obj: &mut Value) {
    if let Some(s) = schema(obj) {
        structural::prune(&s, obj);
        structural::apply_defaults(&s, obj);
    }
}

impl Strategy for CustomResourceStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        prepare(obj);
    }

    fn prepare_for_update(&self, new: &mut Value, _old: &Value) {
        prepare(new);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        schema(obj)
            .map(|s| structural::validate(&s, obj))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_follow_their_versions_schema() {
        crd::set_schemas(
            "things.custom.example.com",
            vec![crd::CustomSchema {
                group: "custom.example.com".into(),
                version: "v1".into(),
                kind: "Thing".into(),
                schema: Arc::new(json!({"type": "object", "properties": {"spec": {
                    "type": "object", "required": ["size"],
                    "properties": {"size": {"type": "integer", "maximum": 5}, "mode": {"type": "string", "default": "auto"}}}}})),
                scale: None,
            }],
        );
        let mut obj = json!({"apiVersion": "custom.example.com/v1", "kind": "Thing",
            "metadata": {"name": "t"}, "spec": {"size": 9, "junk": true}});
        CustomResourceStrategy.prepare_for_create(&mut obj);
        assert_eq!(obj["spec"], json!({"size": 9, "mode": "auto"}));
        let causes = CustomResourceStrategy.validate(&obj);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].0, "spec.size");
        // Another version, or no schema: nothing to check.
        let other = json!({"apiVersion": "custom.example.com/v2", "kind": "Thing", "spec": {}});
        assert!(CustomResourceStrategy.validate(&other).is_empty());
        crd::set_schemas("things.custom.example.com", Vec::new());
    }
}
