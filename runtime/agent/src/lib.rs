//! The node agent (`cairn agent`, and embedded in `cairn server`): the kubelet, kube-proxy and
//! CoreDNS parts of a Kubernetes node. It registers the node, keeps its Lease, runs the pods the
//! scheduler binds here through containerd's gRPC API, wires their network with the standard
//! CNI plugins, programs Services into nftables, answers cluster DNS, and serves logs and exec
//! to the server over one connection it opens itself (no inbound port on the node).

pub mod attach;
pub mod cni;
pub mod containerd;
mod daemon;
pub mod dns;
pub mod env;
pub mod events;
pub mod images;
pub mod logs;
pub mod node;
pub mod pods;
pub mod podstatus;
pub mod probes;
pub mod proxy;
pub mod routes;
pub mod sources;
pub mod spec;
pub mod tunnel;
pub mod volumes;
pub mod worker;

use anyhow::{Context, Result};
use cairn_wire::client;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the device image keeps container image archives it ships with (read-only root).
pub const BUILTIN_IMAGES_DIR: &str = "/usr/lib/cairn/images";

/// The agent's settings (`cairn agent` flags; the server fills them for its embedded agent).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub server: String,
    pub token: String,
    pub node_name: String,
    pub data_dir: PathBuf,
    pub containerd_address: PathBuf,
    pub containerd_namespace: String,
    pub node_ip: Option<IpAddr>,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub cluster_dns: Ipv4Addr,
    pub cluster_domain: String,
    pub images_dirs: Vec<PathBuf>,
    /// The agent embedded in a server: its node gets the control-plane role label.
    pub control_plane: bool,
}

/// Runs the node agent until the process ends.
pub async fn run(opts: AgentOptions) -> Result<()> {
    daemon::run(opts).await
}

/// What every pod worker shares: the node's identity and its connections.
pub struct NodeContext {
    pub node_name: String,
    pub data_dir: PathBuf,
    pub host_ip: String,
    pub ctr: containerd::Containerd,
    pub net: cni::Network,
    pub client: client::ApiClient,
    pub source: Arc<dyn env::ObjectSource>,
    pub cluster_dns: Ipv4Addr,
    pub cluster_domain: String,
    pub host_facts: spec::HostFacts,
    pub exec_prober: Arc<dyn probes::ExecProber>,
    /// The kubelet's Events about this node's pods.
    pub events: events::Recorder,
}

/// The hostname, lower-cased, as the node's default name.
pub fn default_node_name() -> Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname for the node name (or pass --node-name)")?;
    let h = h.trim().to_ascii_lowercase();
    anyhow::ensure!(!h.is_empty(), "the hostname is empty: pass --node-name");
    Ok(h)
}

/// The join token the server wrote for its nodes (the embedded agent joins with it).
pub async fn wait_for_token_file(path: &Path) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            let t = t.trim().to_string();
            if !t.is_empty() {
                return Ok(t);
            }
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "the server did not write its node token to {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
