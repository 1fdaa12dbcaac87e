//! The Service allocator: gives Services their cluster IP (from the service CIDR 10.43.0.0/16,
//! K3s's default) and NodePort services their node ports (30000–32767), as kube-apiserver's
//! allocators do at create time; and keeps the `kubernetes` Service in `default`.
//!
//! Addresses and ports are never handed out twice: each sync scans every Service. Dynamic
//! allocation prefers the upper band of each range, leaving the lower band (10.43.0.0/24,
//! 30000–30085) to Services that ask for a fixed address or port (CoreDNS's 10.43.0.10).
//! Headless Services (`clusterIP: None`) and ExternalName Services are left alone.

use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_api::resources::{self, Resource};
use cairn_store::{Event, Store, StoreError};
use cairn_wire::value::str_at;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

/// The service CIDR's network address and prefix length.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 43, 0, 0), 16);
/// The address of the `kubernetes` Service (the first of the CIDR).
pub const KUBERNETES_IP: &str = "10.43.0.1";
/// The port the API server listens on, the `kubernetes` Service's targetPort.
pub const API_SERVER_PORT: i64 = 6443;
pub const NODE_PORT_RANGE: (i64, i64) = (30000, 32767);

pub(crate) fn services() -> &'static Resource {
    resources::find("", "v1", "services").expect("services missing from the resource table")
}

/// Whether a Service gets a cluster IP.
fn wants_cluster_ip(svc: &Value) -> bool {
    let t = str_at(svc, "/spec/type");
    matches!(t, "" | "ClusterIP" | "NodePort" | "LoadBalancer") && !is_headless(svc)
}

pub fn is_headless(svc: &Value) -> bool {
    str_at(svc, "/spec/clusterIP") == "None"
}

fn wants_node_ports(svc: &Value) -> bool {
    match str_at(svc, "/spec/type") {
        "NodePort" => true,
        "LoadBalancer" => svc["spec"]["allocateLoadBalancerNodePorts"].as_bool() != Some(false),
        _ => false,
    }
}

/// The cluster IPs and node ports the Services use.
pub fn used(services: &[Value]) -> (HashSet<u32>, HashSet<i64>) {
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for s in services {
        let mut add = |ip: &str| {
            if let Ok(a) = ip.parse::<Ipv4Addr>() {
                ips.insert(u32::from(a));
            }
        };
        add(str_at(s, "/spec/clusterIP"));
        for ip in s["spec"]["clusterIPs"].as_array().into_iter().flatten() {
            add(ip.as_str().unwrap_or(""));
        }
        for p in s["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(n) = p["nodePort"].as_i64() {
                ports.insert(n);
            }
        }
    }
    ips.insert(u32::from(KUBERNETES_IP.parse::<Ipv4Addr>().expect("valid")));
    (ips, ports)
}

/// A free address of the CIDR: the upper band first, then the lower (static) one.
fn free_ip(used: &HashSet<u32>) -> Option<Ipv4Addr> {
    let (net, len) = SERVICE_CIDR;
    let base = u32::from(net);
    let size = 1u32 << (32 - len);
    // kube's static band: min(max(16, size/16), 256) addresses at the start.
    let static_band = (size / 16).clamp(16, 256);
    let candidates = (static_band..size - 1).chain(2..static_band);
    candidates
        .map(|o| base + o)
        .find(|a| !used.contains(a))
        .map(Ipv4Addr::from)
}

fn free_port(used: &HashSet<i64>) -> Option<i64> {
    let (lo, hi) = NODE_PORT_RANGE;
    let size = hi - lo + 1;
    let static_band = (size / 32).clamp(16, 128);
    (lo + static_band..=hi)
        .chain(lo..lo + static_band)
        .find(|p| !used.contains(p))
}

/// The Service with what it lacks allocated, or `None` when it needs nothing. `used` holds the
/// addresses and ports taken (this Service's own included) and is updated with the new ones.
pub fn allocate(
    svc: &Value,
    used_ips: &mut HashSet<u32>,
    used_ports: &mut HashSet<i64>,
) -> Option<Value> {
    if util::is_deleting(svc) || !wants_cluster_ip(svc) {
        return None;
    }
    let mut new = svc.clone();
    let mut ip = str_at(svc, "/spec/clusterIP").to_string();
    if ip.is_empty() {
        let a = free_ip(used_ips)?;
        used_ips.insert(u32::from(a));
        ip = a.to_string();
        new["spec"]["clusterIP"] = json!(ip);
    }
    let ips_missing = svc["spec"]["clusterIPs"]
        .as_array()
        .is_none_or(|a| a.is_empty() || a[0].as_str() == Some(""));
    if ips_missing {
        new["spec"]["clusterIPs"] = json!([ip]);
    }
    if svc["spec"]["ipFamilies"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        new["spec"]["ipFamilies"] = json!(["IPv4"]);
    }
    if str_at(svc, "/spec/ipFamilyPolicy").is_empty() {
        new["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    }
    if wants_node_ports(svc) {
        if let Some(ports) = new["spec"]["ports"].as_array_mut() {
            for p in ports {
                if p["nodePort"].as_i64().unwrap_or(0) == 0 {
                    let n = free_port(used_ports)?;
                    used_ports.insert(n);
                    p["nodePort"] = json!(n);
                }
            }
        }
    }
    (new != *svc).then_some(new)
}

/// The `kubernetes` Service as it must be: `existing` with its spec fixed, or a new one;
/// `None` when `existing` is right.
pub fn kubernetes_service(existing: Option<&Value>) -> Option<Value> {
    let ports = json!([{"name": "https", "port": 443, "protocol": "TCP",
                        "targetPort": API_SERVER_PORT}]);
    match existing {
        None => Some(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"},
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": KUBERNETES_IP,
                "clusterIPs": [KUBERNETES_IP],
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "ports": ports,
                "sessionAffinity": "None",
                "internalTrafficPolicy": "Cluster",
            },
            "status": {"loadBalancer": {}},
        })),
        Some(svc) => {
            let mut new = svc.clone();
            new["spec"]["ports"] = ports;
            new["spec"]["type"] = json!("ClusterIP");
            if str_at(svc, "/spec/clusterIP") != KUBERNETES_IP {
                new["spec"]["clusterIP"] = json!(KUBERNETES_IP);
                new["spec"]["clusterIPs"] = json!([KUBERNETES_IP]);
            }
            (new != *svc).then_some(new)
        }
    }
}

/// Runs [`allocate`] and [`kubernetes_service`] against the store.
pub struct ServiceController;

fn kubernetes_key() -> String {
    services().key(Some("default"), "kubernetes")
}

#[async_trait]
impl Controller for ServiceController {
    fn name(&self) -> &'static str {
        "service"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![services().key_prefix(None)]
    }

    async fn items_for(&self, _store: &dyn Store, ev: &Event) -> Vec<String> {
        vec![ev.record.key.clone()]
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let r = services();
        let mut keys: Vec<String> = util::list(store, &r.key_prefix(None))
            .await?
            .iter()
            .map(|o| util::key_of(r, o))
            .collect();
        if !keys.contains(&kubernetes_key()) {
            keys.push(kubernetes_key());
        }
        Ok(keys)
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let r = services();
        let current = util::get(store, key).await?;
        if key == kubernetes_key() {
            match (kubernetes_service(current.as_ref()), &current) {
                (Some(new), None) => match util::create(store, r, new).await {
                    Err(e) if util::is_store_error(&e, |s| *s == StoreError::AlreadyExists) => {
                        anyhow::bail!("kubernetes service created meanwhile")
                    }
                    other => other.map(|_| ())?,
                },
                (Some(new), Some(old)) => {
                    util::update(store, r, old, new).await?;
                }
                (None, _) => {}
            }
            return Ok(None);
        }
        let Some(svc) = current else {
            return Ok(None);
        };
        let all = util::list(store, &r.key_prefix(None)).await?;
        let (mut ips, mut ports) = used(&all);
        if let Some(new) = allocate(&svc, &mut ips, &mut ports) {
            util::update(store, r, &svc, new).await?;
        } else if wants_cluster_ip(&svc) && str_at(&svc, "/spec/clusterIP").is_empty() {
            tracing::warn!(service = %key, "service CIDR or node port range exhausted");
            return Ok(Some(Duration::from_secs(30)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{eventually, open_store, opts};

    fn svc(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
               "spec": spec})
    }

    #[test]
    fn allocates_unique_ips_and_node_ports() {
        let existing = vec![
            svc(
                "dns",
                json!({"clusterIP": "10.43.0.10", "ports": [{"port": 53}]}),
            ),
            svc(
                "taken",
                json!({"clusterIP": "10.43.1.0", "type": "NodePort",
                                "ports": [{"port": 80, "nodePort": 30086}]}),
            ),
        ];
        let (mut ips, mut ports) = used(&existing);
        let a = allocate(
            &svc("a", json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 31000}]})),
            &mut ips,
            &mut ports,
        )
        .expect("allocated");
        assert_eq!(a["spec"]["clusterIP"], "10.43.1.1");
        assert_eq!(a["spec"]["clusterIPs"], json!(["10.43.1.1"]));
        assert_eq!(a["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(a["spec"]["ipFamilyPolicy"], "SingleStack");
        assert_eq!(a["spec"]["ports"][0]["nodePort"], 30087);
        assert_eq!(a["spec"]["ports"][1]["nodePort"], 31000);
        let b = allocate(
            &svc("b", json!({"clusterIP": "", "ports": [{"port": 80}]})),
            &mut ips,
            &mut ports,
        )
        .expect("allocated");
        assert_eq!(b["spec"]["clusterIP"], "10.43.1.2");
        assert!(b["spec"]["ports"][0].get("nodePort").is_none());
        // Done already, headless, ExternalName: nothing to do.
        assert!(allocate(&a, &mut ips, &mut ports).is_none());
        assert!(allocate(
            &svc("h", json!({"clusterIP": "None"})),
            &mut ips,
            &mut ports
        )
        .is_none());
        assert!(allocate(
            &svc(
                "x",
                json!({"type": "ExternalName", "externalName": "example.com"})
            ),
            &mut ips,
            &mut ports
        )
        .is_none());
    }

    #[test]
    fn falls_back_to_the_static_band_and_never_reuses() {
        let mut ips: HashSet<u32> = (256..65535u32)
            .map(|o| u32::from(SERVICE_CIDR.0) + o)
            .collect();
        ips.insert(u32::from(Ipv4Addr::new(10, 43, 0, 2)));
        let mut ports = HashSet::new();
        let ip = |v: Option<Value>| v.unwrap()["spec"]["clusterIP"].clone();
        let s = svc("s", json!({"ports": []}));
        assert_eq!(ip(allocate(&s, &mut ips, &mut ports)), "10.43.0.3");
        assert_eq!(ip(allocate(&s, &mut ips, &mut ports)), "10.43.0.4");
        ips.extend((0..256u32).map(|o| u32::from(SERVICE_CIDR.0) + o));
        assert!(allocate(&s, &mut ips, &mut ports).is_none());
    }

    #[test]
    fn kubernetes_service_is_created_and_repaired() {
        let k = kubernetes_service(None).unwrap();
        assert_eq!(k["spec"]["clusterIP"], KUBERNETES_IP);
        assert_eq!(k["spec"]["ports"][0]["port"], 443);
        assert_eq!(k["spec"]["ports"][0]["targetPort"], 6443);
        assert!(kubernetes_service(Some(&k)).is_none());
        let mut broken = k.clone();
        broken["spec"]["ports"] = json!([]);
        assert_eq!(
            kubernetes_service(Some(&broken)).unwrap()["spec"],
            k["spec"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn allocates_on_a_real_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(&dir).await;
        let task = crate::spawn(ServiceController, store.clone(), opts());
        let s = &*store;
        let r = services();
        for (name, spec) in [
            ("a", json!({"ports": [{"port": 80}]})),
            (
                "b",
                json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}),
            ),
            ("h", json!({"clusterIP": "None", "ports": [{"port": 80}]})),
        ] {
            util::create(s, r, svc(name, spec)).await.expect("create");
        }
        let get = |name: &'static str| async move {
            util::get(s, &r.key(Some("default"), name)).await.unwrap()
        };
        let (a, b) = eventually("addresses", || async move {
            let a = get("a").await?;
            let b = get("b").await?;
            let done = !str_at(&a, "/spec/clusterIP").is_empty()
                && b["spec"]["ports"][1]["nodePort"].is_i64()
                && get("kubernetes").await.is_some();
            done.then_some((a, b))
        })
        .await;
        assert_ne!(a["spec"]["clusterIP"], b["spec"]["clusterIP"]);
        assert_ne!(a["spec"]["clusterIP"], KUBERNETES_IP);
        assert_ne!(
            b["spec"]["ports"][0]["nodePort"],
            b["spec"]["ports"][1]["nodePort"]
        );
        assert_eq!(get("h").await.unwrap()["spec"]["clusterIP"], "None");
        let k = get("kubernetes").await.unwrap();
        assert_eq!(k["spec"]["clusterIP"], KUBERNETES_IP);
        assert_eq!(k["spec"]["ports"][0]["targetPort"], API_SERVER_PORT);
        task.abort();
    }
}
