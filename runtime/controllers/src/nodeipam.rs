//! Node IPAM: gives every Node without `spec.podCIDR` the lowest free /24 of the cluster CIDR
//! (10.42.0.0/16, as K3s), in `spec.podCIDR` and `spec.podCIDRs`. What is used is derived
//! from the existing nodes on every sync, so allocation survives restarts without state of its
//! own, and compare-and-swap on the node keeps two nodes from getting the same range.

use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_store::{Event, Store};
use cairn_wire::value::str_at;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

/// The cluster CIDR the node ranges come from: 10.42.0.0/16.
pub const CLUSTER_CIDR_BASE: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 0);

/// The third octet of a node range inside the cluster CIDR, if it is one.
fn index_of(cidr: &str) -> Option<u8> {
    let (addr, len) = cidr.split_once('/')?;
    if len != "24" {
        return None;
    }
    let ip: Ipv4Addr = addr.parse().ok()?;
    let o = ip.octets();
    let base = CLUSTER_CIDR_BASE.octets();
    (o[0] == base[0] && o[1] == base[1] && o[3] == 0).then_some(o[2])
}

fn cidr_of(index: u8) -> String {
    let b = CLUSTER_CIDR_BASE.octets();
    format!("{}.{}.{index}.0/24", b[0], b[1])
}

/// The ranges the nodes already hold.
pub fn used(nodes: &[Value]) -> HashSet<u8> {
    nodes
        .iter()
        .flat_map(|n| {
            let mut v: Vec<&str> = n["spec"]["podCIDRs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            v.push(str_at(n, "/spec/podCIDR"));
            v
        })
        .filter_map(index_of)
        .collect()
}

/// The node with a range, if it has none and one is free.
pub fn allocate(node: &Value, used: &HashSet<u8>) -> Option<Value> {
    if !str_at(node, "/spec/podCIDR").is_empty() {
        return None;
    }
    let free = (0..=u8::MAX).find(|i| !used.contains(i))?;
    let mut new = node.clone();
    new["spec"]["podCIDR"] = json!(cidr_of(free));
    new["spec"]["podCIDRs"] = json!([cidr_of(free)]);
    Some(new)
}

pub struct NodeIpamController;

#[async_trait]
impl Controller for NodeIpamController {
    fn name(&self) -> &'static str {
        "nodeipam"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![util::nodes().key_prefix(None)]
    }

    async fn items_for(&self, _store: &dyn Store, ev: &Event) -> Vec<String> {
        vec![ev.record.key.clone()]
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let r = util::nodes();
        Ok(util::list(store, &r.key_prefix(None))
            .await?
            .iter()
            .filter(|n| str_at(n, "/spec/podCIDR").is_empty())
            .map(|n| util::key_of(r, n))
            .collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let r = util::nodes();
        let Some(node) = util::get(store, key).await? else {
            return Ok(None);
        };
        if !str_at(&node, "/spec/podCIDR").is_empty() || util::is_deleting(&node) {
            return Ok(None);
        }
        let all = util::list(store, &r.key_prefix(None)).await?;
        match allocate(&node, &used(&all)) {
            Some(new) => {
                let cidr = str_at(&new, "/spec/podCIDR").to_string();
                util::update(store, r, &node, new).await?;
                tracing::info!(node = %util::name(&node), %cidr, "assigned pod CIDR");
                Ok(None)
            }
            None => {
                tracing::warn!(node = %util::name(&node), "cluster CIDR 10.42.0.0/16 is exhausted");
                Ok(Some(Duration::from_secs(30)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{eventually, open_store, opts};

    fn node(name: &str, cidr: Option<&str>) -> Value {
        let mut n = json!({"apiVersion": "v1", "kind": "Node",
                           "metadata": {"name": name, "resourceVersion": "1"}, "spec": {}});
        if let Some(c) = cidr {
            n["spec"]["podCIDR"] = json!(c);
        }
        n
    }

    #[test]
    fn lowest_free_range() {
        let nodes = vec![
            node("a", Some("10.42.0.0/24")),
            node("b", Some("10.42.2.0/24")),
            node("c", None),
            node("d", Some("192.168.0.0/24")),
        ];
        let u = used(&nodes);
        assert_eq!(u, HashSet::from([0, 2]));
        let c = allocate(&nodes[2], &u).expect("allocated");
        assert_eq!(c["spec"]["podCIDR"], "10.42.1.0/24");
        assert_eq!(c["spec"]["podCIDRs"], json!(["10.42.1.0/24"]));
        assert!(allocate(&nodes[0], &u).is_none(), "already has one");
        let full: HashSet<u8> = (0..=u8::MAX).collect();
        assert!(allocate(&nodes[2], &full).is_none(), "exhausted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_node_gets_its_own_range_and_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(&dir).await;
        let s = &*store;
        let r = util::nodes();
        util::create(s, r, node("taken", Some("10.42.0.0/24")))
            .await
            .expect("create");
        for name in ["n1", "n2", "n3"] {
            util::create(s, r, node(name, None)).await.expect("create");
        }
        let task = crate::spawn(NodeIpamController, store.clone(), opts());
        let cidrs = eventually("pod CIDRs", || async move {
            let mut out = Vec::new();
            for name in ["n1", "n2", "n3"] {
                let n = util::get(s, &r.key(None, name)).await.ok()??;
                let c = str_at(&n, "/spec/podCIDR").to_string();
                if c.is_empty() {
                    return None;
                }
                out.push(c);
            }
            Some(out)
        })
        .await;
        let mut sorted = cidrs.clone();
        sorted.sort();
        assert_eq!(sorted, ["10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24"]);
        task.abort();
        // A restarted controller derives the used ranges from the nodes: n4 gets the next one
        // and nobody is renumbered.
        util::create(s, r, node("n4", None)).await.expect("create");
        let task = crate::spawn(NodeIpamController, store.clone(), opts());
        let n4 = eventually("n4's range", || async move {
            let n = util::get(s, &r.key(None, "n4")).await.ok()??;
            let c = str_at(&n, "/spec/podCIDR").to_string();
            (!c.is_empty()).then_some(c)
        })
        .await;
        assert_eq!(n4, "10.42.4.0/24");
        for (name, cidr) in ["n1", "n2", "n3"].iter().zip(&cidrs) {
            let n = util::get(s, &r.key(None, name))
                .await
                .expect("get")
                .expect("node");
            assert_eq!(str_at(&n, "/spec/podCIDR"), cidr);
        }
        task.abort();
    }
}
