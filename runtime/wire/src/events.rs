//! Events as the kubelet, the scheduler and the controllers record them (core/v1 `Event`).
//!
//! An event series is one object: its name is derived from what it is about (the involved
//! object, field path, type, reason, message and the component reporting it), so the same
//! occurrence repeated lands on the same Event and bumps its `count` and `lastTimestamp`
//! instead of making a new object, as client-go's event correlator does. The name survives
//! restarts of the recorder, so no in-memory state is needed to deduplicate.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// `Normal` or `Warning`, the two event types Kubernetes defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One occurrence to record.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// The ObjectReference of what the event is about (see [`object_reference`]).
    pub involved: Value,
    pub kind: EventType,
    pub reason: String,
    pub message: String,
}

/// Who records: `source.component` (`kubelet`, `default-scheduler`, `replicaset-controller`)
/// and `source.host` (the node, for the kubelet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSource {
    pub component: String,
    pub host: Option<String>,
}

/// An ObjectReference to `obj` (any Kubernetes object as JSON), with `field_path` such as
/// `spec.containers{web}` for a container of a pod.
pub fn object_reference(obj: &Value, field_path: Option<&str>) -> Value {
    let m = &obj["metadata"];
    let mut r = json!({
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": m["name"],
        "uid": m["uid"],
    });
    if let Some(ns) = m["namespace"].as_str().filter(|n| !n.is_empty()) {
        r["namespace"] = json!(ns);
    }
    if let Some(rv) = m["resourceVersion"].as_str() {
        r["resourceVersion"] = json!(rv);
    }
    if let Some(p) = field_path {
        r["fieldPath"] = json!(p);
    }
    r
}

/// The field path of a container of a pod, as the kubelet writes it.
pub fn container_field_path(container: &str, init: bool) -> String {
    if init {
        format!("spec.initContainers{{{container}}}")
    } else {
        format!("spec.containers{{{container}}}")
    }
}

impl EventRecord {
    pub fn new(involved: Value, kind: EventType, reason: &str, message: impl Into<String>) -> Self {
        EventRecord {
            involved,
            kind,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// The namespace the Event lives in: the involved object's (`default` for cluster-scoped
    /// objects, as client-go records them).
    pub fn namespace(&self) -> &str {
        self.involved["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    }

    /// The name of this occurrence's series: `<involved name>.<16 hex digits>`.
    pub fn name(&self, source: &EventSource) -> String {
        let mut h = Sha256::new();
        for part in [
            self.involved["uid"].as_str().unwrap_or(""),
            self.involved["kind"].as_str().unwrap_or(""),
            self.involved["name"].as_str().unwrap_or(""),
            self.involved["fieldPath"].as_str().unwrap_or(""),
            self.kind.as_str(),
            &self.reason,
            &self.message,
            &source.component,
            source.host.as_deref().unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let digest = h.finalize();
        let base = self.involved["name"].as_str().unwrap_or("event");
        // Keep the name a valid subdomain of at most 253 characters.
        let base: String = base.chars().take(253 - 17).collect();
        format!("{base}.{}", hex::encode(&digest[..8]))
    }

    /// The first Event of the series, at `now` (RFC 3339).
    pub fn to_event(&self, source: &EventSource, now: &str) -> Value {
        let mut src = json!({"component": source.component});
        if let Some(h) = &source.host {
            src["host"] = json!(h);
        }
        let mut involved = self.involved.clone();
        // The series outlives the version of the object it was first seen at.
        if let Some(m) = involved.as_object_mut() {
            m.remove("resourceVersion");
        }
        json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": self.name(source), "namespace": self.namespace()},
            "involvedObject": involved,
            "reason": self.reason,
            "message": self.message,
            "type": self.kind.as_str(),
            "source": src,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": source.component,
            "reportingInstance": source.host.clone().unwrap_or_default(),
        })
    }
}

/// The merge patch that records one more occurrence on an existing Event.
pub fn repeat_patch(existing: &Value, now: &str) -> Value {
    json!({
        "count": existing["count"].as_i64().unwrap_or(1) + 1,
        "lastTimestamp": now,
    })
}

/// The time an Event last happened: `lastTimestamp`, `eventTime` or its creation, in seconds.
pub fn last_seen(event: &Value) -> Option<i64> {
    ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .find_map(|f| event[*f].as_str().and_then(crate::time::parse_rfc3339))
        .or_else(|| {
            event["metadata"]["creationTimestamp"]
                .as_str()
                .and_then(crate::time::parse_rfc3339)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web", "namespace": "default", "uid": "u1", "resourceVersion": "7"}})
    }

    #[test]
    fn a_series_has_one_name() {
        let src = EventSource {
            component: "kubelet".into(),
            host: Some("n1".into()),
        };
        let r = object_reference(&pod(), Some(&container_field_path("c", false)));
        assert_eq!(r["fieldPath"], "spec.containers{c}");
        let a = EventRecord::new(r.clone(), EventType::Normal, "Pulled", "already present");
        let b = EventRecord::new(r.clone(), EventType::Normal, "Pulled", "already present");
        let c = EventRecord::new(r, EventType::Normal, "Started", "Started container c");
        assert_eq!(a.name(&src), b.name(&src));
        assert_ne!(a.name(&src), c.name(&src));
        assert!(a.name(&src).starts_with("web."));
        let ev = a.to_event(&src, "2024-01-01T00:00:00Z");
        assert_eq!(ev["count"], 1);
        assert_eq!(ev["source"]["host"], "n1");
        assert_eq!(ev["metadata"]["namespace"], "default");
        assert!(ev["involvedObject"].get("resourceVersion").is_none());
        assert_eq!(repeat_patch(&ev, "t")["count"], 2);
        assert_eq!(last_seen(&ev), Some(1_704_067_200));
    }
}
