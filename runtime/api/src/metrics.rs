//! `/metrics` in Prometheus text, with kube-apiserver's metric names: requests by verb,
//! group, resource and code with their latency, watches open now, objects stored per
//! resource. Encoded by prometheus-client.

use crate::resources;
use cairn_store::Store;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    group: String,
    resource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: String,
    group: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoredLabels {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LongRunningLabels {
    verb: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s, doubling.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    watches: Family<LongRunningLabels, Gauge>,
    stored: Family<StoredLabels, Gauge>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let watches = Family::<LongRunningLabels, Gauge>::default();
        let stored = Family::<StoredLabels, Gauge>::default();
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, group, resource and HTTP response code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, group and resource",
            latency.clone(),
        );
        registry.register(
            "apiserver_longrunning_requests",
            "Gauge of all active long-running apiserver requests (watches)",
            watches.clone(),
        );
        registry.register(
            "apiserver_storage_objects",
            "Number of stored objects at the time of last check split by kind",
            stored.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            watches,
            stored,
        }
    })
}

/// A watch counted as open while this lives.
pub struct OpenWatch(&'static Metrics);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0
            .watches
            .get_or_create(&LongRunningLabels {
                verb: "WATCH".into(),
            })
            .dec();
    }
}

impl Metrics {
    /// Counts one finished request (`verb` as kube-apiserver names them: GET, LIST, WATCH,
    /// POST, PUT, PATCH, DELETE, DELETECOLLECTION).
    pub fn observe(&self, verb: &str, group: &str, resource: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                group: group.into(),
                resource: resource.into(),
                code: code.to_string(),
            })
            .inc();
        if verb != "WATCH" {
            self.latency
                .get_or_create(&LatencyLabels {
                    verb: verb.into(),
                    group: group.into(),
                    resource: resource.into(),
                })
                .observe(seconds);
        }
    }

    pub fn watch_opened(&'static self) -> OpenWatch {
        self.watches
            .get_or_create(&LongRunningLabels {
                verb: "WATCH".into(),
            })
            .inc();
        OpenWatch(self)
    }

    /// The text exposition, with the stored objects counted now.
    pub async fn render(&self, store: &dyn Store) -> String {
        for r in resources::all() {
            if let Ok(n) = store.count(&r.key_prefix(None)).await {
                let resource = if r.group.is_empty() {
                    r.plural.to_string()
                } else {
                    format!("{}.{}", r.plural, r.group)
                };
                self.stored
                    .get_or_create(&StoredLabels { resource })
                    .set(n as i64);
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_watches_are_counted() {
        let m = metrics();
        m.observe("LIST", "", "pods", 200, 0.002);
        let w = m.watch_opened();
        let mut out = String::new();
        encode(&mut out, &m.registry).expect("encode");
        assert!(
            out.contains(
                r#"apiserver_request_total{verb="LIST",group="",resource="pods",code="200"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains("apiserver_request_duration_seconds_bucket"),
            "{out}"
        );
        assert!(
            out.contains(r#"apiserver_longrunning_requests{verb="WATCH"} 1"#),
            "{out}"
        );
        drop(w);
    }
}
