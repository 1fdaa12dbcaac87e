//! Services in nftables (kube-proxy's job). The whole node's Service state is one table of our
//! own, `ip cairn-<node>`, rendered from Services and EndpointSlices as text and applied with
//! `nft -f -` in a single transaction (`table` + `delete table` + the full table), so packets
//! never see half a ruleset and nothing else on the host (firewalld, Docker, a second node's
//! agent on the same machine) is touched.
//!
//! Traffic paths:
//! - `prerouting` (pods, outside) and `output` (host processes) jump to `services`, which
//!   matches ClusterIP:port, and NodePort on any local address (`fib daddr type local`,
//!   127.0.0.1 included thanks to `route_localnet`), then picks a ready endpoint at random
//!   (`numgen random mod N`) and DNATs to it, marking the packet.
//! - `postrouting` masquerades marked packets, so replies come back through the host even
//!   when client and backend pods share the bridge (no reliance on br_netfilter), and
//!   masquerades pod traffic leaving the cluster network.
//! - Services without ready endpoints are rejected in filter hooks (TCP reset, ICMP port
//!   unreachable otherwise), like kube-proxy, instead of timing out.
//! - The cluster DNS Service IP on port 53, arriving from this node's bridge (or from the host
//!   itself), goes to this node's own DNS server on the bridge gateway.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde_json::Value;

use super::cni::Ipv4Cidr;

/// Packet mark bit for "DNATed by us, masquerade on the way out" (kube-proxy's choice too).
const MASQ_MARK: u32 = 0x4000;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft rejected the ruleset: {0}")]
    Nft(String),
    #[error("setting {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Join(String),
}

pub type Result<T, E = ProxyError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    fn nft(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    fn reject(self) -> &'static str {
        match self {
            Self::Tcp => "reject with tcp reset",
            Self::Udp | Self::Sctp => "reject",
        }
    }
}

/// What the proxy needs to know about its own node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Addresses LoadBalancer Services are exposed on (K3s's ServiceLB behaviour).
    pub node_ips: Vec<Ipv4Addr>,
    pub pod_cidr: Ipv4Cidr,
    pub bridge: String,
}

impl NodeInfo {
    pub fn new(node_ips: Vec<Ipv4Addr>, pod_cidr: Ipv4Cidr, bridge: &str) -> Self {
        Self {
            node_ips,
            pod_cidr,
            bridge: bridge.to_string(),
        }
    }
}

/// K3s's default cluster CIDR, 10.42.0.0/16.
pub const DEFAULT_CLUSTER_CIDR: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::new(10, 42, 0, 0),
    prefix: 16,
};

/// One port of one Service with the endpoints that serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The Service port's name, empty when unnamed.
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ip: Option<Ipv4Addr>,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Exposed on the node's own addresses at `port` (type LoadBalancer).
    pub load_balancer: bool,
    /// Ready endpoints, sorted and deduplicated.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

impl ServicePort {
    /// A chain-name fragment; `/` cannot appear in Kubernetes names, so it keeps them apart.
    fn key(&self) -> String {
        let port = if self.port_name.is_empty() {
            self.port.to_string()
        } else {
            self.port_name.clone()
        };
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            port,
            self.protocol.nft()
        )
    }
}

/// Everything the rules are made from. Build it with [`ServiceView::from_objects`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub node: NodeInfo,
    pub ports: Vec<ServicePort>,
    /// The cluster DNS Service IP and the local address answering it.
    pub dns: Option<(Ipv4Addr, SocketAddr)>,
    /// All pods of the cluster: traffic between pods is never masqueraded.
    pub cluster_cidr: Ipv4Cidr,
}

impl ServiceView {
    /// Reads raw `v1/Service` and `discovery.k8s.io/v1/EndpointSlice` objects. Headless and
    /// ExternalName Services have no rules; IPv6 addresses are ignored.
    pub fn from_objects(services: &[Value], endpoint_slices: &[Value], node: NodeInfo) -> Self {
        let slices = slices_by_service(endpoint_slices);
        let mut ports = Vec::new();
        for svc in services {
            ports.extend(service_ports(svc, &slices));
        }
        ports.sort_by_key(ServicePort::key);
        Self {
            node,
            ports,
            dns: None,
            cluster_cidr: DEFAULT_CLUSTER_CIDR,
        }
    }

    pub fn with_dns(mut self, service_ip: Ipv4Addr, local: SocketAddr) -> Self {
        self.dns = Some((service_ip, local));
        self
    }
}

/// The string at `path` (object keys) in an API object.
pub(crate) fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, key| v.get(key))?.as_str()
}

/// EndpointSlices grouped by the (namespace, Service) they belong to.
pub(crate) fn slices_by_service(slices: &[Value]) -> HashMap<(String, String), Vec<&Value>> {
    let mut out: HashMap<(String, String), Vec<&Value>> = HashMap::new();
    for slice in slices {
        let (Some(ns), Some(svc)) = (
            str_at(slice, &["metadata", "namespace"]),
            str_at(slice, &["metadata", "labels", "kubernetes.io/service-name"]),
        ) else {
            continue;
        };
        out.entry((ns.to_string(), svc.to_string()))
            .or_default()
            .push(slice);
    }
    out
}

fn service_ports(svc: &Value, slices: &HashMap<(String, String), Vec<&Value>>) -> Vec<ServicePort> {
    let (Some(name), Some(namespace)) = (
        str_at(svc, &["metadata", "name"]),
        str_at(svc, &["metadata", "namespace"]),
    ) else {
        return Vec::new();
    };
    let spec = &svc["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return Vec::new();
    }
    // Headless (None) and IPv6-only Services get no virtual IP; NodePort needs one too.
    let Some(cluster_ip) = spec["clusterIP"].as_str().and_then(|ip| ip.parse().ok()) else {
        return Vec::new();
    };
    let affinity_timeout = (spec["sessionAffinity"].as_str() == Some("ClientIP")).then(|| {
        spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
            .as_u64()
            .map_or(10_800, |t| t.clamp(1, 86_400) as u32)
    });
    let service_slices = slices
        .get(&(namespace.to_string(), name.to_string()))
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut out = Vec::new();
    for port in spec["ports"].as_array().into_iter().flatten() {
        let Some(protocol) = Protocol::parse(port["protocol"].as_str()) else {
            continue;
        };
        let Some(number) = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        let port_name = port["name"].as_str().unwrap_or("").to_string();
        let node_port = match kind {
            "NodePort" | "LoadBalancer" => port["nodePort"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok()),
            _ => None,
        };
        let endpoints = ready_endpoints(service_slices, &port_name, protocol, &port["targetPort"]);
        out.push(ServicePort {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port_name,
            protocol,
            cluster_ip: Some(cluster_ip),
            port: number,
            node_port,
            load_balancer: kind == "LoadBalancer",
            endpoints,
            affinity_timeout,
        });
    }
    out
}

/// Ready endpoint addresses with the target port the slice resolved for this Service port
/// (a named targetPort can differ per pod, which is why slices carry the number).
fn ready_endpoints(
    slices: &[&Value],
    port_name: &str,
    protocol: Protocol,
    target_port: &Value,
) -> Vec<(Ipv4Addr, u16)> {
    let mut out = Vec::new();
    for slice in slices {
        if slice["addressType"].as_str().is_some_and(|t| t != "IPv4") {
            continue;
        }
        let slice_port = slice["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| {
                p["name"].as_str().unwrap_or("") == port_name
                    && Protocol::parse(p["protocol"].as_str()) == Some(protocol)
            })
            .and_then(|p| p["port"].as_u64());
        let port = slice_port.or_else(|| target_port.as_u64());
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            // The API says a missing `ready` means ready.
            if !endpoint["conditions"]["ready"].as_bool().unwrap_or(true) {
                continue;
            }
            for ip in endpoint["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str()?.parse::<Ipv4Addr>().ok())
            {
                out.push((ip, port));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// kube-proxy for one node.
pub struct Proxy {
    table: String,
    /// The last script nft accepted, to skip identical syncs.
    applied: Mutex<Option<String>>,
}

/// `cairn-<node>`, keeping only characters nft identifiers allow.
pub fn table_name_for(node_name: &str) -> String {
    let clean: String = node_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    format!("cairn-{clean}")
}

impl Proxy {
    pub fn new(node_name: &str) -> Self {
        Self::with_table(table_name_for(node_name))
    }

    pub fn with_table(table: String) -> Self {
        Self {
            table,
            applied: Mutex::new(None),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The full nft script for `view`: recreates our table in one transaction.
    pub fn render(&self, view: &ServiceView) -> String {
        let mut chains = Chains::default();
        let t = &self.table;
        let has_endpoints = |p: &&ServicePort| !p.endpoints.is_empty();

        for p in view.ports.iter().filter(has_endpoints) {
            render_service_chains(&mut chains, p);
        }
        // Dispatch: ClusterIPs, LoadBalancer on node IPs, then NodePorts on local addresses.
        let services = chains.get("services");
        for p in view.ports.iter().filter(has_endpoints) {
            let proto = p.protocol.nft();
            if let Some(ip) = p.cluster_ip {
                services.push(format!(
                    "ip daddr {ip} {proto} dport {} goto svc-{}",
                    p.port,
                    p.key()
                ));
            }
            if p.load_balancer && !view.node.node_ips.is_empty() {
                services.push(format!(
                    "ip daddr {} {proto} dport {} goto svc-{}",
                    ip_set(&view.node.node_ips),
                    p.port,
                    p.key()
                ));
            }
        }
        let node_port_rules: Vec<String> = view
            .ports
            .iter()
            .filter(has_endpoints)
            .filter_map(|p| {
                let np = p.node_port?;
                Some(format!(
                    "{} dport {np} goto svc-{}",
                    p.protocol.nft(),
                    p.key()
                ))
            })
            .collect();
        if !node_port_rules.is_empty() {
            chains
                .get("services")
                .push("fib daddr type local jump nodeports".into());
            chains.get("nodeports").extend(node_port_rules);
        }

        // Services with nothing behind them are refused at once, as kube-proxy does.
        for p in view.ports.iter().filter(|p| p.endpoints.is_empty()) {
            let proto = p.protocol.nft();
            if let Some(ip) = p.cluster_ip {
                chains.get("reject-services").push(format!(
                    "ip daddr {ip} {proto} dport {} {}",
                    p.port,
                    p.protocol.reject()
                ));
            }
            if let Some(np) = p.node_port {
                chains
                    .get("reject-nodeports")
                    .push(format!("{proto} dport {np} {}", p.protocol.reject()));
            }
        }

        let mut prerouting = vec![];
        let mut output = vec![];
        if let Some((service_ip, local)) = view.dns {
            let target = match local {
                SocketAddr::V4(v4) => Some(v4),
                SocketAddr::V6(_) => None,
            };
            for proto in ["udp", "tcp"] {
                if let Some(v4) = target {
                    let dnat = format!(
                        "ip daddr {service_ip} {proto} dport 53 dnat to {}:{}",
                        v4.ip(),
                        v4.port()
                    );
                    prerouting.push(format!("iifname \"{}\" {dnat}", view.node.bridge));
                    output.push(dnat);
                }
            }
        }
        prerouting.push("jump services".into());
        output.push("jump services".into());

        let mark = format!("0x{MASQ_MARK:x}");
        let postrouting = vec![
            // Clear the bit so a packet that loops back through the host is not marked twice.
            format!(
                "meta mark & {mark} == {mark} meta mark set meta mark & 0x{:x} masquerade",
                !MASQ_MARK
            ),
            format!(
                "ip saddr {} ip daddr != {} oifname != \"{}\" masquerade",
                view.node.pod_cidr.normalized(),
                view.cluster_cidr.normalized(),
                view.node.bridge
            ),
        ];

        let mut s = String::new();
        let _ = writeln!(s, "table ip {t} {{}}");
        let _ = writeln!(s, "delete table ip {t}");
        let _ = writeln!(s, "table ip {t} {{");
        for (name, set) in &chains.sets {
            let _ = writeln!(s, "\tset {name} {{\n\t\t{set}\n\t}}");
        }
        for (name, rules) in &chains.regular {
            write_chain(&mut s, name, None, rules);
        }
        let base = [
            (
                "prerouting",
                "type nat hook prerouting priority -100; policy accept;",
                prerouting,
            ),
            (
                "output",
                "type nat hook output priority -100; policy accept;",
                output,
            ),
            (
                "postrouting",
                "type nat hook postrouting priority 100; policy accept;",
                postrouting,
            ),
            (
                "filter-forward",
                "type filter hook forward priority -10; policy accept;",
                vec!["ct state new jump reject-services".into()],
            ),
            (
                "filter-output",
                "type filter hook output priority -10; policy accept;",
                vec![
                    "ct state new jump reject-services".into(),
                    "ct state new fib daddr type local jump reject-nodeports".into(),
                ],
            ),
            (
                "filter-input",
                "type filter hook input priority -10; policy accept;",
                vec!["ct state new jump reject-nodeports".into()],
            ),
        ];
        for (name, hook, rules) in &base {
            write_chain(&mut s, name, Some(hook), rules);
        }
        s.push_str("}\n");
        s
    }

    /// Applies `view` if it differs from what was last applied, or if our table went missing
    /// (someone ran `nft flush ruleset`), so periodic syncs also repair.
    pub async fn sync(&self, view: &ServiceView) -> Result<()> {
        let script = self.render(view);
        if self.last_applied().as_deref() == Some(script.as_str()) {
            let t = self.table.clone();
            if run_blocking_value(move || Ok(table_present(&t))).await? {
                return Ok(());
            }
            tracing::warn!(table = %self.table, "service table vanished; rewriting it");
        }
        let to_apply = script.clone();
        run_blocking(move || {
            enable_sysctls()?;
            nft_apply(&to_apply)
        })
        .await?;
        tracing::debug!(table = %self.table, services = view.ports.len(), "service rules applied");
        self.set_last_applied(Some(script));
        Ok(())
    }

    /// Forgets what was applied, so the next sync rewrites the table (after someone flushed
    /// the ruleset, for instance).
    pub fn invalidate(&self) {
        self.set_last_applied(None);
    }

    /// Removes the table. Missing table is fine.
    pub async fn cleanup(&self) -> Result<()> {
        let t = self.table.clone();
        run_blocking(move || nft_apply(&format!("table ip {t} {{}}\ndelete table ip {t}\n")))
            .await?;
        self.set_last_applied(None);
        Ok(())
    }

    fn last_applied(&self) -> Option<String> {
        match self.applied.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_last_applied(&self, v: Option<String>) {
        match self.applied.lock() {
            Ok(mut g) => *g = v,
            Err(p) => *p.into_inner() = v,
        }
    }
}

/// Chains and sets in a stable order, created on first use (every regular chain a base chain
/// jumps to must exist, even when empty).
struct Chains {
    regular: BTreeMap<String, Vec<String>>,
    sets: BTreeMap<String, String>,
}

impl Default for Chains {
    fn default() -> Self {
        let mut regular = BTreeMap::new();
        for name in [
            "services",
            "nodeports",
            "reject-services",
            "reject-nodeports",
        ] {
            regular.insert(name.to_string(), Vec::new());
        }
        Self {
            regular,
            sets: BTreeMap::new(),
        }
    }
}

impl Chains {
    fn get(&mut self, name: &str) -> &mut Vec<String> {
        self.regular.entry(name.to_string()).or_default()
    }
}

fn render_service_chains(chains: &mut Chains, p: &ServicePort) {
    let key = p.key();
    let mark = format!("0x{MASQ_MARK:x}");
    let mut svc_rules = Vec::new();
    for (i, (ip, port)) in p.endpoints.iter().enumerate() {
        let ep = format!("ep-{key}/{i}");
        let mut rules = Vec::new();
        if let Some(timeout) = p.affinity_timeout {
            let set = format!("aff-{key}/{i}");
            chains.sets.insert(
                set.clone(),
                format!("type ipv4_addr; flags dynamic,timeout; timeout {timeout}s;"),
            );
            // Clients seen recently go straight back to the endpoint they had.
            svc_rules.push(format!("ip saddr @{set} goto {ep}"));
            rules.push(format!("update @{set} {{ ip saddr }}"));
        }
        rules.push(format!("meta mark set meta mark | {mark}"));
        // nft wants the protocol known before a port can be rewritten.
        rules.push(format!(
            "meta l4proto {} dnat to {ip}:{port}",
            p.protocol.nft()
        ));
        chains.regular.insert(ep, rules);
    }
    let n = p.endpoints.len();
    if n == 1 {
        svc_rules.push(format!("goto ep-{key}/0"));
    } else {
        let arms: Vec<String> = (0..n).map(|i| format!("{i} : goto ep-{key}/{i}")).collect();
        svc_rules.push(format!(
            "numgen random mod {n} vmap {{ {} }}",
            arms.join(", ")
        ));
    }
    chains.regular.insert(format!("svc-{key}"), svc_rules);
}

fn ip_set(ips: &[Ipv4Addr]) -> String {
    let list: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
    format!("{{ {} }}", list.join(", "))
}

fn write_chain(s: &mut String, name: &str, hook: Option<&str>, rules: &[String]) {
    let _ = writeln!(s, "\tchain {name} {{");
    if let Some(hook) = hook {
        let _ = writeln!(s, "\t\t{hook}");
    }
    for rule in rules {
        let _ = writeln!(s, "\t\t{rule}");
    }
    let _ = writeln!(s, "\t}}");
}

/// ip_forward for routing to pods; route_localnet so NodePorts answer on 127.0.0.1.
fn enable_sysctls() -> Result<()> {
    for key in ["net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet"] {
        let path = format!("/proc/sys/{key}");
        std::fs::write(&path, "1").map_err(|source| ProxyError::Sysctl {
            key: key.replace('/', "."),
            source,
        })?;
    }
    Ok(())
}

fn nft_apply(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ProxyError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(ProxyError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(ProxyError::Spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ProxyError::Nft(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

/// Whether our table exists; listing one small base chain keeps the check cheap.
fn table_present(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "chain", "ip", table, "postrouting"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn run_blocking(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    run_blocking_value(f).await
}

async fn run_blocking_value<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProxyError::Join(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NodeInfo {
        NodeInfo::new(
            vec![Ipv4Addr::new(192, 0, 2, 2)],
            "10.42.0.0/24".parse().unwrap(),
            "cairn0",
        )
    }

    fn svc(name: &str, ip: &str, kind: &str, ports: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"},
               "spec": {"type": kind, "clusterIP": ip, "ports": ports}})
    }

    fn slice(svc: &str, ports: Value, endpoints: Value) -> Value {
        json!({"metadata": {"name": format!("{svc}-x"), "namespace": "default",
                            "labels": {"kubernetes.io/service-name": svc}},
               "addressType": "IPv4", "ports": ports, "endpoints": endpoints})
    }

    fn sample_view() -> ServiceView {
        let services = vec![
            svc(
                "web",
                "10.43.0.20",
                "NodePort",
                json!([{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080, "protocol": "TCP"}]),
            ),
            svc(
                "dns",
                "10.43.0.30",
                "ClusterIP",
                json!([{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]),
            ),
            svc(
                "empty",
                "10.43.0.40",
                "NodePort",
                json!([{"port": 8080, "nodePort": 30081}]),
            ),
            svc("headless", "None", "ClusterIP", json!([{"port": 80}])),
            json!({"metadata": {"name": "ext", "namespace": "default"},
                   "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        ];
        let slices = vec![
            slice(
                "web",
                json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
                json!([
                    {"addresses": ["10.42.0.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.42.1.6"]},
                    {"addresses": ["10.42.0.9"], "conditions": {"ready": false}},
                ]),
            ),
            slice(
                "dns",
                json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]),
                json!([
                    {"addresses": ["10.42.0.7"], "conditions": {"ready": true}},
                ]),
            ),
            slice(
                "empty",
                json!([{"name": "", "port": 8080, "protocol": "TCP"}]),
                json!([]),
            ),
        ];
        ServiceView::from_objects(&services, &slices, node()).with_dns(
            Ipv4Addr::new(10, 43, 0, 10),
            "10.42.0.1:53".parse().unwrap(),
        )
    }

    #[test]
    fn view_reads_services_and_ready_endpoints() {
        let view = sample_view();
        let names: Vec<&str> = view.ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["dns", "empty", "web"],
            "headless and ExternalName are skipped"
        );
        let web = &view.ports[2];
        assert_eq!(web.node_port, Some(30080));
        assert_eq!(web.port_name, "http");
        // Named targetPort resolved through the slice; not-ready endpoint left out; missing
        // `ready` counts as ready.
        assert_eq!(
            web.endpoints,
            vec![
                (Ipv4Addr::new(10, 42, 0, 5), 8080),
                (Ipv4Addr::new(10, 42, 1, 6), 8080)
            ]
        );
        assert_eq!(view.ports[0].protocol, Protocol::Udp);
        assert!(view.ports[1].endpoints.is_empty());
    }

    #[test]
    fn render_dnats_cluster_ips_with_random_balancing() {
        let script = Proxy::new("node-1").render(&sample_view());
        assert!(script.starts_with(
            "table ip cairn-node-1 {}\ndelete table ip cairn-node-1\ntable ip cairn-node-1 {\n"
        ));
        assert!(script.contains("ip daddr 10.43.0.20 tcp dport 80 goto svc-default/web/http/tcp"));
        assert!(script.contains(
            "numgen random mod 2 vmap { 0 : goto ep-default/web/http/tcp/0, 1 : goto ep-default/web/http/tcp/1 }"
        ));
        assert!(script.contains("dnat to 10.42.0.5:8080"));
        assert!(script.contains("dnat to 10.42.1.6:8080"));
        assert!(
            !script.contains("10.42.0.9"),
            "not-ready endpoint must not be used"
        );
        // One endpoint: no numgen.
        assert!(script.contains("ip daddr 10.43.0.30 udp dport 53 goto svc-default/dns/dns/udp"));
        assert!(script.contains("goto ep-default/dns/dns/udp/0"));
        assert!(script.contains("dnat to 10.42.0.7:5353"));
        // DNATed packets are marked and masqueraded.
        assert!(script.contains("meta mark set meta mark | 0x4000"));
        assert!(script.contains(
            "meta mark & 0x4000 == 0x4000 meta mark set meta mark & 0xffffbfff masquerade"
        ));
        assert!(script.contains(
            "ip saddr 10.42.0.0/24 ip daddr != 10.42.0.0/16 oifname != \"cairn0\" masquerade"
        ));
        assert_eq!(script.matches("type nat hook prerouting").count(), 1);
        assert_eq!(script.matches("type nat hook output").count(), 1);
        assert_eq!(script.matches("type nat hook postrouting").count(), 1);
    }

    #[test]
    fn render_node_ports_and_rejects() {
        let script = Proxy::new("n").render(&sample_view());
        assert!(script.contains("fib daddr type local jump nodeports"));
        assert!(script.contains("tcp dport 30080 goto svc-default/web/http/tcp"));
        // The endpoint-less Service is refused on both its ClusterIP and its NodePort.
        assert!(script.contains("ip daddr 10.43.0.40 tcp dport 8080 reject with tcp reset"));
        assert!(script.contains("tcp dport 30081 reject with tcp reset"));
        assert!(!script.contains("goto svc-default/empty"));
        assert!(script.contains("type filter hook forward"));
        assert!(script.contains("type filter hook input"));
        assert!(script.contains("type filter hook output"));
    }

    #[test]
    fn render_sends_cluster_dns_to_the_local_server() {
        let script = Proxy::new("n").render(&sample_view());
        for proto in ["udp", "tcp"] {
            assert!(script.contains(&format!(
                "iifname \"cairn0\" ip daddr 10.43.0.10 {proto} dport 53 dnat to 10.42.0.1:53"
            )));
        }
        // Before the generic service dispatch in prerouting.
        let pre = script.find("type nat hook prerouting").unwrap();
        let dns = script[pre..].find("dport 53 dnat to 10.42.0.1:53").unwrap();
        let jump = script[pre..].find("jump services").unwrap();
        assert!(dns < jump);
        let without = ServiceView {
            dns: None,
            ..sample_view()
        };
        assert!(!Proxy::new("n").render(&without).contains("10.43.0.10"));
    }

    #[test]
    fn render_session_affinity_and_load_balancer() {
        let services = vec![json!({"metadata": {"name": "sticky", "namespace": "ns"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.43.1.1", "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                     "ports": [{"port": 443, "targetPort": 8443, "nodePort": 31443}]}})];
        let slices = vec![
            json!({"metadata": {"namespace": "ns", "labels": {"kubernetes.io/service-name": "sticky"}},
            "ports": [{"port": 8443}],
            "endpoints": [{"addresses": ["10.42.0.2"]}, {"addresses": ["10.42.0.3"]}]}),
        ];
        let view = ServiceView::from_objects(&services, &slices, node());
        let script = Proxy::new("n").render(&view);
        assert!(script.contains("set aff-ns/sticky/443/tcp/0 {"));
        assert!(script.contains("flags dynamic,timeout; timeout 60s;"));
        assert!(script.contains("ip saddr @aff-ns/sticky/443/tcp/1 goto ep-ns/sticky/443/tcp/1"));
        assert!(script.contains("update @aff-ns/sticky/443/tcp/0 { ip saddr }"));
        assert!(script.contains("ip daddr { 192.0.2.2 } tcp dport 443 goto svc-ns/sticky/443/tcp"));
        assert!(script.contains("tcp dport 31443 goto svc-ns/sticky/443/tcp"));
    }

    #[test]
    fn render_is_deterministic_and_table_names_are_safe() {
        let a = Proxy::new("n").render(&sample_view());
        let b = Proxy::new("n").render(&sample_view());
        assert_eq!(a, b);
        assert_eq!(table_name_for("node-1.example"), "cairn-node-1.example");
        assert_eq!(table_name_for("we ird$"), "cairn-we_ird_");
    }

    // ------------------------------------------------------------------------------------------
    // Root test with real netns, CNI plugins, nft and busybox servers.

    use crate::cni::tests::{in_netns, TestNetwork};
    use std::process::Child;

    /// Kills the busybox servers and removes the nft table even when an assert fails.
    struct Cleanup {
        children: Vec<Child>,
        table: String,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            for child in &mut self.children {
                let _ = child.kill();
                let _ = child.wait();
            }
            let script = format!("table ip {t} {{}}\ndelete table ip {t}\n", t = self.table);
            let _ = nft_apply(&script);
        }
    }

    fn table_exists(table: &str) -> bool {
        Command::new("nft")
            .args(["list", "table", "ip", table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// A plain HTTP GET from inside `netns` (or the host), in a throwaway thread that joins the
    /// namespace. Empty string when nothing answered.
    fn http_get(netns: Option<&std::path::Path>, addr: &str) -> String {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let addr: SocketAddr = addr.parse().unwrap();
        let ns = netns.map(std::path::Path::to_path_buf);
        std::thread::spawn(move || {
            if let Some(ns) = ns {
                let file = std::fs::File::open(&ns).unwrap();
                // SAFETY: only this short-lived thread changes its network namespace.
                assert_eq!(
                    unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
            }
            let timeout = std::time::Duration::from_secs(3);
            let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
                return String::new();
            };
            let _ = stream.set_read_timeout(Some(timeout));
            let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut reply = String::new();
            let _ = stream.read_to_string(&mut reply);
            reply
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.trim().to_string())
                .unwrap_or_default()
        })
        .join()
        .unwrap()
    }

    // Multi-threaded: the DNS server must keep answering while the test blocks on nslookup.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_ip_node_port_and_dns_reach_real_pods() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let mut net = TestNetwork::new("p", 12);
        net.net.ensure_bridge().await.unwrap();
        let table = format!("cairn-test-{}", std::process::id());
        let mut cleanup = Cleanup {
            children: Vec::new(),
            table: table.clone(),
        };
        let client = net.add_pod("client").await;
        let mut backends = Vec::new();
        let www = tempfile::tempdir().unwrap();
        for name in ["be-1", "be-2"] {
            let pod = net.add_pod(name).await;
            let dir = www.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("index.html"), format!("{name}\n")).unwrap();
            let child = Command::new("nsenter")
                .arg(format!("--net={}", net.net.netns_path(name).display()))
                .args(["--", "busybox", "httpd", "-f", "-p", "8080", "-h"])
                .arg(&dir)
                .spawn()
                .unwrap();
            cleanup.children.push(child);
            backends.push(pod.ip);
        }
        let _ = client;
        let gateway = net.net.bridge_gateway();

        let dns = crate::dns::DnsServer::start(
            vec![SocketAddr::new(gateway.into(), 53)],
            "cluster.local",
            vec![],
        )
        .await
        .unwrap();
        let services = vec![
            json!({"metadata": {"name": "web", "namespace": "default"},
                   "spec": {"type": "NodePort", "clusterIP": "10.43.250.10",
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30999}]}}),
            json!({"metadata": {"name": "nothing", "namespace": "default"},
                   "spec": {"type": "ClusterIP", "clusterIP": "10.43.250.11", "ports": [{"port": 80}]}}),
        ];
        let endpoints: Vec<Value> = backends
            .iter()
            .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
            .collect();
        let slices = vec![
            json!({"metadata": {"namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}),
        ];
        dns.update(&services, &slices, &[]);
        let cfg = net.net.config();
        let view = ServiceView::from_objects(
            &services,
            &slices,
            NodeInfo::new(vec![], cfg.pod_cidr, &cfg.bridge),
        )
        .with_dns(
            Ipv4Addr::new(10, 43, 250, 53),
            SocketAddr::new(gateway.into(), 53),
        );
        let proxy = Proxy::with_table(table.clone());
        proxy.sync(&view).await.unwrap();
        proxy.sync(&view).await.unwrap(); // unchanged: no second apply needed
        assert!(table_exists(&table));
        // Someone flushes our table behind our back: the next (unchanged) sync restores it.
        nft_apply(&format!("delete table ip {table}\n")).unwrap();
        proxy.sync(&view).await.unwrap();
        assert!(table_exists(&table));

        // httpd needs a moment to listen.
        let client_ns = net.net.netns_path("client");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            let body = http_get(Some(&client_ns), "10.43.250.10:80");
            if !body.is_empty() {
                seen.insert(body);
            }
            if seen.len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(seen.len(), 2, "ClusterIP from a pod reached {seen:?}");

        // From the host: ClusterIP (output hook), NodePort on 127.0.0.1 and on the gateway.
        assert!(http_get(None, "10.43.250.10:80").starts_with("be-"));
        assert!(http_get(None, "127.0.0.1:30999").starts_with("be-"));
        assert!(http_get(None, &format!("{gateway}:30999")).starts_with("be-"));
        // NodePort from a pod, to the node's address.
        assert!(http_get(Some(&client_ns), &format!("{gateway}:30999")).starts_with("be-"));

        // No endpoints: refused at once, not a timeout.
        let started = std::time::Instant::now();
        let refused = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            tokio::net::TcpStream::connect("10.43.250.11:80"),
        )
        .await
        .expect("connect to an endpoint-less Service timed out");
        assert_eq!(
            refused.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));

        // Cluster DNS from the pod through the DNS Service IP.
        let lookup = in_netns(
            &client_ns,
            &[
                "busybox",
                "nslookup",
                "web.default.svc.cluster.local",
                "10.43.250.53",
            ],
        );
        let text = String::from_utf8_lossy(&lookup.stdout);
        assert!(
            text.contains("10.43.250.10"),
            "nslookup said: {text} {}",
            String::from_utf8_lossy(&lookup.stderr)
        );

        proxy.cleanup().await.unwrap();
        assert!(!table_exists(&table));
        proxy.cleanup().await.unwrap(); // idempotent
        drop(dns);
    }
}
