//! The endpoints controllers: for every Service with a selector, an Endpoints object of the
//! same name and EndpointSlices (discovery.k8s.io/v1) listing the matching pods that have an
//! IP, as kube-controller-manager's endpoints and endpointslice controllers do.
//!
//! Ready pods go to `addresses` (slice condition ready=true), running but not ready ones to
//! `notReadyAddresses` (ready=false); terminating pods only appear in slices
//! (terminating=true). Ports come from the Service's targetPort, a number or the name of a
//! container port; pods whose ports resolve differently land in different subsets/slices.
//! Slices are labeled with `kubernetes.io/service-name` and owned by the Service, so the garbage
//! collector removes them with it; Endpoints are removed here when the Service is gone.

use super::service::services;
use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::objects::{decode, generated_name};
use cairn_api::resources::{self, Resource};
use cairn_api::selectors::LabelSelector;
use cairn_store::{Event, EventKind, Store};
use cairn_wire::value::str_at;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

pub(crate) fn endpoints() -> &'static Resource {
    resources::find("", "v1", "endpoints").expect("endpoints missing from the resource table")
}

pub(crate) fn endpointslices() -> &'static Resource {
    resources::find("discovery.k8s.io", "v1", "endpointslices")
        .expect("endpointslices missing from the resource table")
}

/// The Service's pod selector (`spec.selector`, a plain label map); `None` when it has none
/// (its endpoints are managed by hand).
pub fn service_selector(svc: &Value) -> Option<LabelSelector> {
    let sel = svc["spec"]["selector"]
        .as_object()
        .filter(|m| !m.is_empty())?;
    LabelSelector::from_label_selector_json(&json!({ "matchLabels": sel })).ok()
}

/// The container port a service port's targetPort names on `pod` (a number is itself).
pub fn resolve_target_port(port: &Value, pod: &Value) -> Option<i64> {
    let protocol = port["protocol"].as_str().unwrap_or("TCP");
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) if s.parse::<i64>().is_ok() => s.parse().ok(),
        Value::String(name) if !name.is_empty() => pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| {
                p["name"].as_str() == Some(name)
                    && p["protocol"].as_str().unwrap_or("TCP") == protocol
            })
            .and_then(|p| p["containerPort"].as_i64()),
        _ => port["port"].as_i64(),
    }
}

/// One endpoint port: (name, port, protocol).
type Port = (String, i64, String);

fn port_json(p: &Port) -> Value {
    json!({"name": p.0, "port": p.1, "protocol": p.2})
}

/// A matching pod as an endpoint.
struct Member<'a> {
    pod: &'a Value,
    ip: &'a str,
    ready: bool,
    terminating: bool,
}

fn target_ref(pod: &Value) -> Value {
    json!({"kind": "Pod", "namespace": util::namespace(pod), "name": util::name(pod),
           "uid": util::uid(pod)})
}

/// What the Endpoints and EndpointSlices of a Service must hold.
#[derive(Debug, PartialEq)]
pub struct Desired {
    /// The whole Endpoints object (without uid/resourceVersion).
    pub endpoints: Value,
    /// Per distinct port set: the slice's `ports` and `endpoints`.
    pub slices: Vec<(Value, Value)>,
}

/// Decides the Endpoints and slice contents of a Service with a selector from the pods of its
/// namespace; `None` for a Service without selector.
pub fn reconcile(svc: &Value, pods: &[Value]) -> Option<Desired> {
    let selector = service_selector(svc)?;
    let publish_not_ready = svc["spec"]["publishNotReadyAddresses"].as_bool() == Some(true);
    let svc_ports: &[Value] = svc["spec"]["ports"].as_array().map_or(&[], Vec::as_slice);
    // Port set -> members, ordered for stable output.
    let mut groups: BTreeMap<Vec<Port>, Vec<Member>> = BTreeMap::new();
    for pod in pods {
        if util::namespace(pod) != util::namespace(svc)
            || !selector.matches_object(pod)
            || matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
        {
            continue;
        }
        let ip = str_at(pod, "/status/podIP");
        if ip.is_empty() {
            continue;
        }
        let terminating = util::is_deleting(pod);
        let ready = (util::pod_ready(pod) || publish_not_ready) && !terminating;
        let ports: Vec<Port> = svc_ports
            .iter()
            .filter_map(|p| {
                let n = resolve_target_port(p, pod)?;
                Some((
                    p["name"].as_str().unwrap_or("").to_string(),
                    n,
                    p["protocol"].as_str().unwrap_or("TCP").to_string(),
                ))
            })
            .collect();
        if !svc_ports.is_empty() && ports.is_empty() {
            continue;
        }
        groups.entry(ports).or_default().push(Member {
            pod,
            ip,
            ready,
            terminating,
        });
    }

    let mut subsets = Vec::new();
    let mut slices = Vec::new();
    for (ports, mut members) in groups {
        members.sort_by(|a, b| (a.ip, util::name(a.pod)).cmp(&(b.ip, util::name(b.pod))));
        let address = |m: &Member| {
            let mut a = json!({"ip": m.ip, "targetRef": target_ref(m.pod)});
            let node = str_at(m.pod, "/spec/nodeName");
            if !node.is_empty() {
                a["nodeName"] = json!(node);
            }
            a
        };
        let live: Vec<&Member> = members.iter().filter(|m| !m.terminating).collect();
        let ready: Vec<Value> = live
            .iter()
            .filter(|m| m.ready)
            .map(|m| address(m))
            .collect();
        let not_ready: Vec<Value> = live
            .iter()
            .filter(|m| !m.ready)
            .map(|m| address(m))
            .collect();
        if !live.is_empty() {
            let mut subset = Map::new();
            if !ready.is_empty() {
                subset.insert("addresses".into(), json!(ready));
            }
            if !not_ready.is_empty() {
                subset.insert("notReadyAddresses".into(), json!(not_ready));
            }
            if !ports.is_empty() {
                subset.insert(
                    "ports".into(),
                    Value::Array(ports.iter().map(port_json).collect()),
                );
            }
            subsets.push(Value::Object(subset));
        }
        let eps: Vec<Value> = members
            .iter()
            .map(|m| {
                let mut e = json!({
                    "addresses": [m.ip],
                    "conditions": {
                        "ready": m.ready,
                        "serving": util::pod_ready(m.pod) || publish_not_ready,
                        "terminating": m.terminating,
                    },
                    "targetRef": target_ref(m.pod),
                });
                let node = str_at(m.pod, "/spec/nodeName");
                if !node.is_empty() {
                    e["nodeName"] = json!(node);
                }
                e
            })
            .collect();
        slices.push((
            Value::Array(ports.iter().map(port_json).collect()),
            Value::Array(eps),
        ));
    }
    if slices.is_empty() {
        // An empty placeholder slice, as kube keeps one.
        slices.push((json!([]), json!([])));
    }

    let mut labels = svc["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if crate::service::is_headless(svc) {
        labels.insert("service.kubernetes.io/headless".into(), json!(""));
    }
    let mut metadata = json!({"name": util::name(svc), "namespace": util::namespace(svc)});
    if !labels.is_empty() {
        metadata["labels"] = Value::Object(labels);
    }
    let mut endpoints = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": metadata});
    if !subsets.is_empty() {
        endpoints["subsets"] = json!(subsets);
    }
    Some(Desired { endpoints, slices })
}

/// A new EndpointSlice of the Service.
pub fn new_slice(svc: &Value, ports: &Value, endpoints: &Value) -> Value {
    let mut prefix = format!("{}-", util::name(svc));
    if prefix.len() > 58 {
        prefix.truncate(58);
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": generated_name(&prefix),
            "generateName": prefix,
            "namespace": util::namespace(svc),
            "labels": {SERVICE_NAME_LABEL: util::name(svc), MANAGED_BY_LABEL: MANAGED_BY},
            "ownerReferences": [util::controller_owner_ref(svc, "v1", "Service")],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

fn is_managed_slice_of(slice: &Value, svc_name: &str) -> bool {
    let labels = &slice["metadata"]["labels"];
    labels[SERVICE_NAME_LABEL].as_str() == Some(svc_name)
        && labels[MANAGED_BY_LABEL].as_str() == Some(MANAGED_BY)
}

/// What to do to the existing managed slices: (updates as (old, new), creates (ports,
/// endpoints), deletes).
pub type SlicePlan = (Vec<(Value, Value)>, Vec<(Value, Value)>, Vec<Value>);

/// Matches wanted slices to existing ones by their ports.
pub fn plan_slices(svc: &Value, wanted: &[(Value, Value)], existing: &[Value]) -> SlicePlan {
    let mut left: Vec<&Value> = existing.iter().collect();
    let mut updates = Vec::new();
    let mut creates = Vec::new();
    let mut unmatched = Vec::new();
    for (ports, eps) in wanted {
        match left.iter().position(|s| &s["ports"] == ports) {
            Some(i) => {
                let s = left.remove(i);
                let mut new = s.clone();
                new["endpoints"] = eps.clone();
                new["addressType"] = json!("IPv4");
                new["metadata"]["ownerReferences"] =
                    json!([util::controller_owner_ref(svc, "v1", "Service")]);
                if new != *s {
                    updates.push((s.clone(), new));
                }
            }
            None => unmatched.push((ports.clone(), eps.clone())),
        }
    }
    // Reuse slices whose ports changed rather than deleting and creating.
    for (ports, eps) in unmatched {
        match left.pop() {
            Some(s) => {
                let mut new = s.clone();
                new["ports"] = ports;
                new["endpoints"] = eps;
                new["metadata"]["ownerReferences"] =
                    json!([util::controller_owner_ref(svc, "v1", "Service")]);
                updates.push((s.clone(), new));
            }
            None => creates.push((ports, eps)),
        }
    }
    (updates, creates, left.into_iter().cloned().collect())
}

/// Runs [`reconcile`] against the store. Work items are Service keys.
#[derive(Default)]
pub struct EndpointsController {
    /// Whether the first full list looked for Endpoints whose Service is gone (done once, as
    /// kube's checkLeftoverEndpoints: later, a Service's delete event removes its Endpoints,
    /// and hand-made Endpoints created before their Service are not touched).
    leftovers_checked: std::sync::atomic::AtomicBool,
}

/// Endpoints used as a leader-election lock, which have no Service.
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

impl EndpointsController {
    fn service_key(ns: &str, name: &str) -> String {
        services().key(Some(ns), name)
    }
}

/// The namespace and name in a namespaced key `/registry/<group>/<plural>/<ns>/<name>`.
fn ns_name(key: &str) -> Option<(&str, &str)> {
    let mut parts = key.rsplitn(3, '/');
    let name = parts.next()?;
    let ns = parts.next()?;
    Some((ns, name))
}

#[async_trait]
impl Controller for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![
            services().key_prefix(None),
            util::pods().key_prefix(None),
            endpoints().key_prefix(None),
            endpointslices().key_prefix(None),
        ]
    }

    async fn items_for(&self, store: &dyn Store, ev: &Event) -> Vec<String> {
        let key = &ev.record.key;
        let endpoints_deleted =
            key.starts_with(&endpoints().key_prefix(None)) && ev.kind == EventKind::Delete;
        if key.starts_with(&services().key_prefix(None)) || endpoints_deleted {
            return ns_name(key)
                .map(|(ns, n)| vec![Self::service_key(ns, n)])
                .unwrap_or_default();
        }
        if key.starts_with(&endpointslices().key_prefix(None)) {
            return decode(&ev.record)
                .ok()
                .and_then(|s| {
                    let svc = s["metadata"]["labels"][SERVICE_NAME_LABEL].as_str()?;
                    Some(vec![Self::service_key(util::namespace(&s), svc)])
                })
                .unwrap_or_default();
        }
        // A pod: every Service of its namespace that selects it (before or after).
        let pods: Vec<Value> = std::iter::once(&ev.record)
            .chain(ev.prev.as_ref())
            .filter_map(|r| decode(r).ok())
            .collect();
        let Some(ns) = pods.first().map(|p| util::namespace(p).to_string()) else {
            return Vec::new();
        };
        let Ok(svcs) = util::list(store, &services().key_prefix(Some(&ns))).await else {
            return Vec::new();
        };
        svcs.iter()
            .filter(|s| {
                service_selector(s).is_some_and(|sel| pods.iter().any(|p| sel.matches_object(p)))
            })
            .map(|s| util::key_of(services(), s))
            .collect()
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let r = services();
        let mut keys: Vec<String> = util::list(store, &r.key_prefix(None))
            .await?
            .iter()
            .map(|o| util::key_of(r, o))
            .collect();
        if self
            .leftovers_checked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(keys);
        }
        // Endpoints whose Service is gone.
        for e in util::list(store, &endpoints().key_prefix(None)).await? {
            if e["metadata"]["annotations"][LEADER_ANNOTATION].is_string() {
                continue;
            }
            let k = Self::service_key(util::namespace(&e), util::name(&e));
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some((ns, name)) = ns_name(key) else {
            return Ok(None);
        };
        let ep_key = endpoints().key(Some(ns), name);
        let current_ep = util::get(store, &ep_key).await?;
        let svc = util::get(store, key).await?;
        let Some(svc) = svc.filter(|s| !util::is_deleting(s)) else {
            // The Service is gone: so are its Endpoints (slices go with the collector).
            if let Some(ep) = current_ep {
                util::delete(store, endpoints(), &ep).await?;
            }
            return Ok(None);
        };
        let pods = util::list(store, &util::pods().key_prefix(Some(ns))).await?;
        let Some(desired) = reconcile(&svc, &pods) else {
            return Ok(None);
        };

        match current_ep {
            None => {
                util::create(store, endpoints(), desired.endpoints).await?;
            }
            Some(old) => {
                let mut new = old.clone();
                new["metadata"]["labels"] = desired.endpoints["metadata"]["labels"].clone();
                if new["metadata"]["labels"].is_null() {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove("labels");
                    }
                }
                match desired.endpoints.get("subsets") {
                    Some(s) => new["subsets"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("subsets");
                        }
                    }
                }
                if new != old {
                    util::update(store, endpoints(), &old, new).await?;
                }
            }
        }

        let existing: Vec<Value> = util::list(store, &endpointslices().key_prefix(Some(ns)))
            .await?
            .into_iter()
            .filter(|s| is_managed_slice_of(s, name))
            .collect();
        let (updates, creates, deletes) = plan_slices(&svc, &desired.slices, &existing);
        for (old, new) in updates {
            util::update(store, endpointslices(), &old, new).await?;
        }
        for (ports, eps) in creates {
            util::create(store, endpointslices(), new_slice(&svc, &ports, &eps)).await?;
        }
        for s in deletes {
            util::delete(store, endpointslices(), &s).await?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{eventually, open_store, opts};

    fn svc(ports: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid",
                            "labels": {"app": "web"}},
               "spec": {"selector": {"app": "web"}, "ports": ports}})
    }

    fn pod(name: &str, ip: &str, ready: bool, container_port: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
                            "labels": {"app": "web"}},
               "spec": {"nodeName": "node-1",
                        "containers": [{"name": "c", "image": "nginx", "ports": [
                            {"name": "http", "containerPort": container_port}]}]},
               "status": {"phase": "Running", "podIP": ip,
                          "conditions": [{"type": "Ready",
                                          "status": if ready {"True"} else {"False"}}]}})
    }

    #[test]
    fn endpoints_split_ready_and_not_ready() {
        let s = svc(json!([{"name": "http", "port": 80, "targetPort": "http"}]));
        let mut other = pod("other", "10.42.0.9", true, 8080);
        other["metadata"]["labels"]["app"] = json!("db");
        let no_ip = pod("pending", "", true, 8080);
        let pods = vec![
            pod("b", "10.42.0.5", true, 8080),
            pod("a", "10.42.0.4", false, 8080),
            pod("c", "10.42.0.3", true, 8080),
            other,
            no_ip,
        ];
        let d = reconcile(&s, &pods).unwrap();
        let subsets = d.endpoints["subsets"].as_array().unwrap();
        assert_eq!(subsets.len(), 1);
        let ips = |f: &str| -> Vec<&str> {
            subsets[0][f]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["ip"].as_str().unwrap())
                .collect()
        };
        assert_eq!(ips("addresses"), ["10.42.0.3", "10.42.0.5"]);
        assert_eq!(ips("notReadyAddresses"), ["10.42.0.4"]);
        assert_eq!(
            subsets[0]["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        );
        let a = &subsets[0]["addresses"][0];
        assert_eq!(a["nodeName"], "node-1");
        assert_eq!(a["targetRef"]["name"], "c");
        assert_eq!(a["targetRef"]["uid"], "c-uid");
        assert_eq!(d.slices.len(), 1);
        let eps = d.slices[0].1.as_array().unwrap();
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[1]["conditions"]["ready"], false);
        assert_eq!(eps[0]["conditions"]["ready"], true);
        assert_eq!(eps[0]["targetRef"]["kind"], "Pod");
    }

    #[test]
    fn numeric_and_differing_named_ports() {
        let s = svc(json!([{"name": "http", "port": 80, "targetPort": "http"},
                           {"name": "metrics", "port": 9000, "targetPort": 9100}]));
        let pods = vec![
            pod("a", "10.42.0.4", true, 8080),
            pod("b", "10.42.0.5", true, 8081),
        ];
        let d = reconcile(&s, &pods).unwrap();
        assert_eq!(d.endpoints["subsets"].as_array().unwrap().len(), 2);
        assert_eq!(d.slices.len(), 2);
        assert_eq!(d.slices[0].0[1]["port"], 9100);
        // No targetPort: the port itself.
        assert_eq!(
            resolve_target_port(&json!({"port": 80}), &pods[0]),
            Some(80)
        );
    }

    #[test]
    fn no_pods_and_no_selector() {
        let s = svc(json!([{"port": 80}]));
        let d = reconcile(&s, &[]).unwrap();
        assert!(d.endpoints.get("subsets").is_none());
        assert_eq!(d.slices, vec![(json!([]), json!([]))]);
        let mut manual = s.clone();
        manual["spec"].as_object_mut().unwrap().remove("selector");
        assert!(reconcile(&manual, &[]).is_none());
    }

    #[test]
    fn terminating_pods_only_in_slices() {
        let s = svc(json!([{"port": 80}]));
        let mut p = pod("a", "10.42.0.4", true, 80);
        p["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        let d = reconcile(&s, &[p]).unwrap();
        assert!(d.endpoints.get("subsets").is_none());
        let e = &d.slices[0].1[0];
        assert_eq!(
            e["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
    }

    #[test]
    fn slices_are_matched_by_ports() {
        let s = svc(json!([{"port": 80}]));
        let ports = json!([{"name": "", "port": 80, "protocol": "TCP"}]);
        let existing = new_slice(&s, &ports, &json!([]));
        let wanted = vec![(ports.clone(), json!([{"addresses": ["10.42.0.4"]}]))];
        let (updates, creates, deletes) = plan_slices(&s, &wanted, std::slice::from_ref(&existing));
        assert_eq!(updates.len(), 1);
        assert!(creates.is_empty() && deletes.is_empty());
        assert_eq!(updates[0].1["endpoints"][0]["addresses"][0], "10.42.0.4");
        assert_eq!(existing["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(existing["metadata"]["ownerReferences"][0]["uid"], "svc-uid");
        let (u, c, d) = plan_slices(&s, &wanted, &[]);
        assert_eq!((u.len(), c.len(), d.len()), (0, 1, 0));
        let (u, c, d) = plan_slices(&s, &[], &[existing]);
        assert_eq!((u.len(), c.len(), d.len()), (0, 0, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_pods_on_a_real_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(&dir).await;
        let task = crate::spawn(EndpointsController::default(), store.clone(), opts());
        let s = &*store;
        let (pods_r, svc_r) = (util::pods(), services());
        let svc = util::create(
            s,
            svc_r,
            svc(json!([{"name": "http", "port": 80, "targetPort": "http"}])),
        )
        .await
        .unwrap();
        // A Service without selector and its hand-made Endpoints: left alone.
        let mut manual = self::svc(json!([{"port": 80}]));
        manual["metadata"]["name"] = json!("manual");
        manual["spec"].as_object_mut().unwrap().remove("selector");
        util::create(s, svc_r, manual).await.unwrap();
        let manual_ep = json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "manual", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "192.168.1.1"}], "ports": [{"port": 80}]}]});
        util::create(s, endpoints(), manual_ep).await.unwrap();
        util::create(s, pods_r, pod("a", "10.42.0.4", true, 8080))
            .await
            .unwrap();
        util::create(s, pods_r, pod("b", "10.42.0.5", false, 8080))
            .await
            .unwrap();
        let ep_key = endpoints().key(Some("default"), "web");
        let ep = eventually("endpoints with both pods", || async {
            let ep = util::get(s, &ep_key).await.unwrap()?;
            let sub = &ep["subsets"][0];
            (sub["addresses"][0]["ip"] == "10.42.0.4"
                && sub["notReadyAddresses"][0]["ip"] == "10.42.0.5")
                .then_some(ep)
        })
        .await;
        assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080);
        let slice = eventually("a slice with both pods", || async {
            let slices = util::list(s, &endpointslices().key_prefix(Some("default")))
                .await
                .unwrap();
            (slices.len() == 1 && slices[0]["endpoints"].as_array()?.len() == 2)
                .then(|| slices[0].clone())
        })
        .await;
        assert_eq!(slice["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(slice["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert!(util::is_controlled_by(&slice, &svc));
        assert_eq!(slice["ports"][0]["port"], 8080);

        // b becomes ready, a goes away.
        let b = util::get(s, &pods_r.key(Some("default"), "b"))
            .await
            .unwrap()
            .unwrap();
        let mut ready_b = b.clone();
        ready_b["status"]["conditions"][0]["status"] = json!("True");
        util::update(s, pods_r, &b, ready_b).await.unwrap();
        s.delete(&pods_r.key(Some("default"), "a"), None)
            .await
            .unwrap();
        eventually("endpoints with b ready only", || async {
            let ep = util::get(s, &ep_key).await.unwrap()?;
            let sub = &ep["subsets"][0];
            (sub["addresses"].as_array()?.len() == 1
                && sub["addresses"][0]["ip"] == "10.42.0.5"
                && sub.get("notReadyAddresses").is_none())
            .then_some(())
        })
        .await;

        let manual = util::get(s, &endpoints().key(Some("default"), "manual"))
            .await
            .unwrap()
            .expect("hand-made endpoints kept");
        assert_eq!(manual["subsets"][0]["addresses"][0]["ip"], "192.168.1.1");

        // The Service goes: so do its Endpoints.
        s.delete(&svc_r.key(Some("default"), "web"), None)
            .await
            .unwrap();
        eventually("endpoints removed", || async {
            util::get(s, &ep_key).await.unwrap().is_none().then_some(())
        })
        .await;
        task.abort();
    }
}
