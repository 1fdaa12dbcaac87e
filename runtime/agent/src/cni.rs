//! Pod networking with the standard CNI plugins (bridge + host-local IPAM + loopback), run by
//! the CNI spec: the plugin binary is executed with `CNI_*` variables, its config on stdin and
//! its result on stdout. Each node owns one bridge, one podCIDR and one state directory, so two
//! agents on the same host (tests run two nodes on one machine) never share host-global names.
//!
//! Layout of `state_dir`:
//! - `10-cairn.conflist`: the network config, kept for humans and `cnitool`;
//! - `ipam/cairn/<ip>`: host-local's reservations (one file per IP holding the container id);
//! - `netns/<pod uid>`: bind mounts that keep each pod's network namespace alive.

use std::collections::HashSet;
use std::ffi::CString;
use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The CNI network name; it names host-local's directory under `ipam/`.
const NETWORK_NAME: &str = "cairn";
/// The spec version we speak; Debian's plugins (1.1.x) accept 0.4.0 and 1.0.0, and 0.4.0 is
/// also what older plugin builds on devices understand.
const CNI_VERSION: &str = "0.4.0";
/// Interface name of the pod side of the veth pair.
pub const POD_IFNAME: &str = "eth0";
/// Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
/// `statfs` magic of nsfs: a bind-mounted namespace file reports this.
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("invalid CIDR {0:?}")]
    BadCidr(String),
    #[error("invalid network config: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin:?} not found in {searched}")]
    PluginNotFound { plugin: String, searched: String },
    #[error("CNI plugin {plugin} {command}: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("CNI plugin {plugin} returned an unusable result: {reason}")]
    BadResult { plugin: String, reason: String },
    #[error("{tool} failed: {message}")]
    Tool { tool: String, message: String },
    #[error("background task failed: {0}")]
    Join(String),
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CniError {
    let context = context.into();
    move |source| CniError::Io { context, source }
}

/// An IPv4 block such as `10.42.0.0/24`. `addr` is kept as written (so `10.42.0.1/24` can
/// describe an interface address); [`Ipv4Cidr::network`] gives the masked base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self> {
        if prefix > 32 {
            return Err(CniError::BadCidr(format!("{addr}/{prefix}")));
        }
        Ok(Self { addr, prefix })
    }

    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The same block with its base address masked: `10.42.0.7/24` → `10.42.0.0/24`.
    pub fn normalized(&self) -> Self {
        Self {
            addr: self.network(),
            prefix: self.prefix,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Number of addresses in the block, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The `n`th address of the block counting the network address as 0, or `None` past the
    /// end. `nth(1)` is the first host, which is the bridge gateway by convention.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        if u64::from(n) >= self.size() {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.network()) + n))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || CniError::BadCidr(s.to_string());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Self::new(addr, prefix).map_err(|_| bad())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where the standard plugins live: Debian's package, then the upstream tarball's place.
pub fn default_cni_bin_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]
}

/// A bridge name unique per node and short enough for IFNAMSIZ: `cairn` + 8 hex digits of the
/// node name's hash (node names are up to 253 characters, so truncating could collide).
pub fn bridge_name_for(node_name: &str) -> String {
    let digest = Sha256::digest(node_name.as_bytes());
    format!("cairn{}", &hex::encode(digest)[..8])
}

/// Turns packet forwarding on; the bridge's gateway role and Services both need it.
pub fn enable_ip_forwarding() -> Result<()> {
    write_sysctl("net/ipv4/ip_forward", "1")
}

pub(crate) fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(io_err(format!("writing {}", path.display())))
}

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub node_name: String,
    /// Host bridge, at most 15 characters and unique per node on a host.
    pub bridge: String,
    /// This node's `spec.podCIDR`.
    pub pod_cidr: Ipv4Cidr,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Agent-owned directory for the conflist, IPAM reservations and netns bind mounts.
    pub state_dir: PathBuf,
    pub mtu: Option<u32>,
}

impl NetworkConfig {
    pub fn new(node_name: &str, bridge: &str, pod_cidr: Ipv4Cidr, state_dir: PathBuf) -> Self {
        Self {
            node_name: node_name.to_string(),
            bridge: bridge.to_string(),
            pod_cidr,
            cni_bin_dirs: default_cni_bin_dirs(),
            state_dir,
            mtu: None,
        }
    }
}

/// What a pod got from the network: its address on the node's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub ifname: String,
}

/// What [`Network::gc`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub netns_removed: Vec<String>,
    pub ips_released: Vec<Ipv4Addr>,
}

/// One node's pod network.
#[derive(Debug, Clone)]
pub struct Network {
    config: NetworkConfig,
    bridge_conf: Value,
}

impl Network {
    /// Validates the config, creates the state directories and writes the conflist.
    pub fn new(mut config: NetworkConfig) -> Result<Self> {
        validate_ifname(&config.bridge)?;
        if config.pod_cidr.prefix > 30 {
            return Err(CniError::Config(format!(
                "podCIDR {} leaves no room for pods",
                config.pod_cidr
            )));
        }
        config.pod_cidr = config.pod_cidr.normalized();
        for dir in [
            config.state_dir.clone(),
            config.state_dir.join("netns"),
            config.state_dir.join("ipam"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let bridge_conf = bridge_plugin_conf(&config);
        let network = Self {
            config,
            bridge_conf,
        };
        network.write_conflist()?;
        Ok(network)
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The bridge's own address: the first host of the podCIDR.
    pub fn bridge_gateway(&self) -> Ipv4Addr {
        gateway_of(&self.config.pod_cidr)
    }

    /// The conflist the plugins are run with (one plugin: bridge with host-local IPAM).
    pub fn conflist(&self) -> Value {
        let mut plugin = self.bridge_conf.clone();
        if let Some(obj) = plugin.as_object_mut() {
            obj.remove("name");
            obj.remove("cniVersion");
        }
        json!({
            "cniVersion": CNI_VERSION,
            "name": NETWORK_NAME,
            "plugins": [plugin],
        })
    }

    pub fn netns_path(&self, pod_uid: &str) -> PathBuf {
        self.config.state_dir.join("netns").join(pod_uid)
    }

    /// A connection to `port` on the loopback of the pod's network namespace, as the
    /// kubelet's runtime makes one for port-forward: `127.0.0.1`, then `::1`.
    pub async fn connect_in_pod(&self, pod_uid: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let netns = self.netns_path(pod_uid);
        let stream = blocking(move || connect_in_netns(&netns, port)).await?;
        stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
            .map_err(io_err("adopting the forwarded connection".to_string()))
    }

    fn ipam_dir(&self) -> PathBuf {
        self.config.state_dir.join("ipam").join(NETWORK_NAME)
    }

    fn write_conflist(&self) -> Result<()> {
        let path = self.config.state_dir.join("10-cairn.conflist");
        let text = serde_json::to_string_pretty(&self.conflist())
            .map_err(|e| CniError::Config(e.to_string()))?;
        std::fs::write(&path, text + "\n").map_err(io_err(format!("writing {}", path.display())))
    }

    /// Creates the bridge with the gateway address before the first pod exists, so the DNS
    /// server can bind to the gateway at agent start. The bridge plugin later accepts this
    /// bridge because it carries exactly `<gateway>/<prefix>`.
    pub async fn ensure_bridge(&self) -> Result<()> {
        let bridge = self.config.bridge.clone();
        let address = format!("{}/{}", self.bridge_gateway(), self.config.pod_cidr.prefix);
        let mtu = self.config.mtu;
        blocking(move || {
            enable_ip_forwarding()?;
            if !link_exists(&bridge) {
                let mut args = vec!["link", "add", "name", &bridge, "type", "bridge"];
                let mtu_text = mtu.map(|m| m.to_string());
                if let Some(m) = &mtu_text {
                    args.extend(["mtu", m.as_str()]);
                }
                // Another agent thread (or a pod ADD) may create it between our check and now.
                if let Err(e) = run_ip(&args) {
                    if !link_exists(&bridge) {
                        return Err(e);
                    }
                }
            }
            run_ip(&["addr", "replace", &address, "dev", &bridge])?;
            run_ip(&["link", "set", &bridge, "up"])?;
            Ok(())
        })
        .await
    }

    /// Removes the bridge (agent uninstall, tests). Missing bridge is fine.
    pub async fn delete_bridge(&self) -> Result<()> {
        let bridge = self.config.bridge.clone();
        blocking(move || {
            if link_exists(&bridge) {
                run_ip(&["link", "del", &bridge])?;
            }
            Ok(())
        })
        .await
    }

    /// A new network namespace for a pod, kept alive by a bind mount at
    /// `<state_dir>/netns/<pod_uid>`, with `lo` up. Reuses a namespace that is already there,
    /// so a restarted agent does not strand a running pod.
    pub async fn create_netns(&self, pod_uid: &str) -> Result<PathBuf> {
        validate_pod_uid(pod_uid)?;
        let path = self.netns_path(pod_uid);
        let target = path.clone();
        blocking(move || create_netns_at(&target)).await?;
        let loopback = json!({"cniVersion": CNI_VERSION, "name": "cairn-lo", "type": "loopback"});
        let invocation = Invocation {
            command: "ADD",
            container_id: pod_uid.to_string(),
            netns: path.to_string_lossy().into_owned(),
            ifname: "lo".to_string(),
            cni_args: String::new(),
        };
        if let Err(e) = self.run_plugin(loopback, invocation).await {
            // Leave nothing half-made behind: the caller will retry from scratch.
            let target = path.clone();
            let _ = blocking(move || remove_netns_at(&target)).await;
            return Err(e);
        }
        Ok(path)
    }

    /// CNI ADD: a veth from the pod's netns to the bridge and an address from host-local.
    pub async fn add(
        &self,
        pod_uid: &str,
        namespace: &str,
        name: &str,
        netns: &Path,
    ) -> Result<PodNetwork> {
        validate_pod_uid(pod_uid)?;
        let invocation = Invocation {
            command: "ADD",
            container_id: pod_uid.to_string(),
            netns: netns.to_string_lossy().into_owned(),
            ifname: POD_IFNAME.to_string(),
            cni_args: k8s_cni_args(namespace, name),
        };
        let result = self
            .run_plugin(self.bridge_conf.clone(), invocation)
            .await?
            .ok_or_else(|| CniError::BadResult {
                plugin: "bridge".into(),
                reason: "empty output".into(),
            })?;
        let network = parse_add_result(&result, self.bridge_gateway())?;
        tracing::debug!(pod_uid, namespace, name, ip = %network.ip, "pod network added");
        Ok(network)
    }

    /// CNI DEL, then the netns bind mount goes. Idempotent: with the netns already gone the
    /// plugin still releases the pod's address, and a second call finds nothing to do.
    pub async fn del(
        &self,
        pod_uid: &str,
        namespace: &str,
        name: &str,
        netns: &Path,
    ) -> Result<()> {
        validate_pod_uid(pod_uid)?;
        let netns_arg = if is_nsfs_mount(netns) {
            netns.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let invocation = Invocation {
            command: "DEL",
            container_id: pod_uid.to_string(),
            netns: netns_arg,
            ifname: POD_IFNAME.to_string(),
            cni_args: k8s_cni_args(namespace, name),
        };
        self.run_plugin(self.bridge_conf.clone(), invocation)
            .await?;
        let target = netns.to_path_buf();
        blocking(move || remove_netns_at(&target)).await?;
        tracing::debug!(pod_uid, namespace, name, "pod network deleted");
        Ok(())
    }

    /// Removes what pods that no longer exist left behind after a crash: netns bind mounts and
    /// host-local reservations. `live_pod_uids` must include pods being set up right now.
    pub async fn gc(&self, live_pod_uids: &HashSet<String>) -> Result<GcReport> {
        let mut report = GcReport::default();
        let netns_dir = self.config.state_dir.join("netns");
        let mut dead: Vec<String> = list_dir_names(&netns_dir)?
            .into_iter()
            .filter(|uid| !live_pod_uids.contains(uid))
            .collect();
        let reservations = self.reservations()?;
        for (_, owner) in &reservations {
            if !live_pod_uids.contains(owner) && !dead.contains(owner) {
                dead.push(owner.clone());
            }
        }
        for uid in dead {
            if validate_pod_uid(&uid).is_err() {
                continue;
            }
            let netns = self.netns_path(&uid);
            let had_netns = netns.exists();
            if let Err(e) = self.del(&uid, "", "", &netns).await {
                tracing::warn!(pod_uid = %uid, error = %e, "CNI DEL during gc failed; removing leftovers directly");
                let target = netns.clone();
                blocking(move || remove_netns_at(&target)).await?;
            }
            if had_netns {
                report.netns_removed.push(uid.clone());
            }
        }
        // Whatever DEL did not release (plugin failure, foreign files) is removed by hand.
        for (ip, owner) in self.reservations()? {
            if !live_pod_uids.contains(&owner) {
                let path = self.ipam_dir().join(ip.to_string());
                std::fs::remove_file(&path)
                    .map_err(io_err(format!("removing {}", path.display())))?;
            }
        }
        let after: HashSet<Ipv4Addr> = self.reservations()?.into_iter().map(|(ip, _)| ip).collect();
        report.ips_released = reservations
            .into_iter()
            .map(|(ip, _)| ip)
            .filter(|ip| !after.contains(ip))
            .collect();
        Ok(report)
    }

    /// host-local's reservations: one file per IP whose first line is the container id.
    pub fn reservations(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let dir = self.ipam_dir();
        let mut out = Vec::new();
        for name in list_dir_names(&dir)? {
            let Ok(ip) = name.parse::<Ipv4Addr>() else {
                continue; // lock, last_reserved_ip.0
            };
            let path = dir.join(&name);
            let text = std::fs::read_to_string(&path)
                .map_err(io_err(format!("reading {}", path.display())))?;
            let owner = text.lines().next().unwrap_or("").trim().to_string();
            out.push((ip, owner));
        }
        Ok(out)
    }

    async fn run_plugin(&self, conf: Value, invocation: Invocation) -> Result<Option<Value>> {
        let dirs = self.config.cni_bin_dirs.clone();
        blocking(move || invoke_plugin(&dirs, &conf, &invocation)).await
    }
}

fn gateway_of(cidr: &Ipv4Cidr) -> Ipv4Addr {
    // prefix ≤ 30 is checked in Network::new, so the first host always exists.
    cidr.nth(1).unwrap_or(cidr.network())
}

fn bridge_plugin_conf(config: &NetworkConfig) -> Value {
    let cidr = config.pod_cidr.normalized();
    let mut conf = json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "type": "bridge",
        "bridge": config.bridge,
        "isGateway": true,
        // Masquerading is done by proxy.rs in our own nftables table: the plugin's ipMasq needs
        // the iptables binary, which the device images do not ship.
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": cidr.to_string(), "gateway": gateway_of(&cidr).to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": config.state_dir.join("ipam").to_string_lossy(),
        },
    });
    if let (Some(mtu), Some(obj)) = (config.mtu, conf.as_object_mut()) {
        obj.insert("mtu".into(), json!(mtu));
    }
    conf
}

fn k8s_cni_args(namespace: &str, name: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}")
}

fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(CniError::Config(format!("bad interface name {name:?}")))
    }
}

/// Pod UIDs become CNI container ids and file names; refuse anything that could escape the
/// state directory or that the plugins' container-id rule rejects.
fn validate_pod_uid(uid: &str) -> Result<()> {
    let ok = uid
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(CniError::Config(format!("bad pod uid {uid:?}")))
    }
}

fn parse_add_result(result: &Value, default_gateway: Ipv4Addr) -> Result<PodNetwork> {
    let bad = |reason: &str| CniError::BadResult {
        plugin: "bridge".into(),
        reason: reason.to_string(),
    };
    let ips = result
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no ips"))?;
    let entry = ips
        .iter()
        .find(|ip| {
            ip.get("address")
                .and_then(Value::as_str)
                .and_then(|a| a.parse::<Ipv4Cidr>().ok())
                .is_some()
        })
        .ok_or_else(|| bad("no IPv4 address"))?;
    let address: Ipv4Cidr = entry
        .get("address")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no address"))?
        .parse()
        .map_err(|_| bad("bad address"))?;
    let gateway = entry
        .get("gateway")
        .and_then(Value::as_str)
        .and_then(|g| g.parse().ok())
        .unwrap_or(default_gateway);
    Ok(PodNetwork {
        ip: address.addr,
        gateway,
        ifname: POD_IFNAME.to_string(),
    })
}

struct Invocation {
    command: &'static str,
    container_id: String,
    netns: String,
    ifname: String,
    cni_args: String,
}

fn find_plugin(dirs: &[PathBuf], plugin: &str) -> Result<PathBuf> {
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::PluginNotFound {
            plugin: plugin.to_string(),
            searched: join_paths(dirs),
        })
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs one plugin by the CNI spec and returns its parsed stdout (DEL prints nothing).
fn invoke_plugin(dirs: &[PathBuf], conf: &Value, inv: &Invocation) -> Result<Option<Value>> {
    let plugin = conf
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| CniError::Config("plugin config without type".into()))?
        .to_string();
    let binary = find_plugin(dirs, &plugin)?;
    let stdin = serde_json::to_vec(conf).map_err(|e| CniError::Config(e.to_string()))?;
    let mut child = Command::new(&binary)
        .env("CNI_COMMAND", inv.command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_PATH", join_paths(dirs))
        .env("CNI_ARGS", &inv.cni_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting {}", binary.display())))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(&stdin)
            .map_err(io_err(format!("writing config to {plugin}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(io_err(format!("waiting for {plugin}")))?;
    if !output.status.success() {
        return Err(CniError::Plugin {
            plugin,
            command: inv.command,
            message: plugin_error_message(&output.stdout, &output.stderr),
        });
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&output.stdout)
        .map(Some)
        .map_err(|e| CniError::BadResult {
            plugin,
            reason: e.to_string(),
        })
}

/// A failed plugin prints `{"code":N,"msg":"..","details":".."}`; make it one readable line.
fn plugin_error_message(stdout: &[u8], stderr: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        let code = v.get("code").and_then(Value::as_u64).unwrap_or(0);
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or("");
        let details = v.get("details").and_then(Value::as_str).unwrap_or("");
        let mut line = format!("code {code}: {msg}");
        if !details.is_empty() {
            line.push_str(": ");
            line.push_str(details);
        }
        return line.replace('\n', " ");
    }
    let text = String::from_utf8_lossy(if stdout.is_empty() { stderr } else { stdout });
    text.trim().replace('\n', " ")
}

/// Connects from inside `netns` on a thread of its own: entering a namespace changes the
/// calling thread, which then ends instead of going back to a pool. The socket keeps the
/// namespace it was made in.
fn connect_in_netns(netns: &Path, port: u16) -> Result<std::net::TcpStream> {
    let netns = netns.to_path_buf();
    let what = format!("localhost:{port} inside {}", netns.display());
    std::thread::Builder::new()
        .name("cairn-portfwd".into())
        .spawn(move || -> std::io::Result<std::net::TcpStream> {
            let ns = std::fs::File::open(&netns)?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            let timeout = std::time::Duration::from_secs(10);
            let v4 = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v4, timeout).or_else(|e| {
                let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| e)
            })
        })
        .map_err(io_err("starting a thread".to_string()))?
        .join()
        .map_err(|_| CniError::Join(format!("connecting to {what} panicked")))?
        .map_err(io_err(format!("failed to connect to {what}")))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CniError::Join(e.to_string()))?
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn run_ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(io_err("running ip"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(CniError::Tool {
            tool: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn list_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| CniError::Config(format!("path with NUL: {}", path.display())))
}

fn is_nsfs_mount(path: &Path) -> bool {
    let Ok(cpath) = c_path(path) else {
        return false;
    };
    // SAFETY: statfs only writes into the zeroed struct we own.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(cpath.as_ptr(), &mut buf) };
    #[allow(clippy::unnecessary_cast)]
    let magic = buf.f_type as i64;
    rc == 0 && magic == NSFS_MAGIC
}

/// Makes a namespace in a throwaway thread and pins it with a bind mount: unsharing one of the
/// runtime's own threads would move every task scheduled there into the pod's network.
fn create_netns_at(path: &Path) -> Result<()> {
    if is_nsfs_mount(path) {
        return Ok(());
    }
    std::fs::File::create(path).map_err(io_err(format!("creating {}", path.display())))?;
    let target = c_path(path)?;
    let outcome = std::thread::Builder::new()
        .name("cairn-netns".into())
        .spawn(move || -> std::io::Result<()> {
            // SAFETY: affects only this thread, which exits right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let source = c"/proc/thread-self/ns/net";
            // SAFETY: both paths are valid NUL-terminated strings for the call's duration.
            let rc = unsafe {
                libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
        .map_err(io_err("spawning netns thread"))?
        .join()
        .map_err(|_| CniError::Join("netns thread panicked".into()))?;
    if let Err(e) = outcome {
        let _ = std::fs::remove_file(path);
        return Err(io_err(format!(
            "creating network namespace at {}",
            path.display()
        ))(e));
    }
    Ok(())
}

fn remove_netns_at(path: &Path) -> Result<()> {
    if is_nsfs_mount(path) {
        let cpath = c_path(path)?;
        // SAFETY: valid NUL-terminated path. MNT_DETACH so a racing reader cannot make it fail.
        if unsafe { libc::umount2(cpath.as_ptr(), libc::MNT_DETACH) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(io_err(format!("unmounting {}", path.display()))(err));
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing {}", path.display()))(e)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn cidr_parse_display_and_arithmetic() {
        let c: Ipv4Cidr = "10.42.3.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.42.3.7/24");
        assert_eq!(c.network(), Ipv4Addr::new(10, 42, 3, 0));
        assert_eq!(c.normalized().to_string(), "10.42.3.0/24");
        assert!(c.contains(Ipv4Addr::new(10, 42, 3, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 42, 4, 0)));
        assert_eq!(c.nth(1), Some(Ipv4Addr::new(10, 42, 3, 1)));
        assert_eq!(c.nth(255), Some(Ipv4Addr::new(10, 42, 3, 255)));
        assert_eq!(c.nth(256), None);
        assert_eq!(c.size(), 256);
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        assert_eq!(all.size(), 1 << 32);
        let host: Ipv4Cidr = "1.2.3.4/32".parse().unwrap();
        assert_eq!(host.nth(0), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(host.nth(1), None);
        for bad in [
            "10.42.0.0",
            "10.42.0.0/33",
            "10.42.0/24",
            "x/8",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn bridge_names_fit_ifnamsiz_and_differ_per_node() {
        let a = bridge_name_for("node-a");
        let b = bridge_name_for("node-b");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_IFNAME);
        assert!(validate_ifname(&bridge_name_for(&"x".repeat(253))).is_ok());
    }

    #[test]
    fn conflist_describes_bridge_with_host_local_on_the_pod_cidr() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NetworkConfig::new(
            "n1",
            "cairntest0",
            "10.42.7.0/24".parse().unwrap(),
            dir.path().to_path_buf(),
        );
        let net = Network::new(cfg).unwrap();
        let conf = net.conflist();
        assert_eq!(conf["cniVersion"], CNI_VERSION);
        let plugin = &conf["plugins"][0];
        assert_eq!(plugin["type"], "bridge");
        assert_eq!(plugin["bridge"], "cairntest0");
        assert_eq!(plugin["isGateway"], true);
        assert_eq!(plugin["hairpinMode"], true);
        assert_eq!(plugin["ipam"]["type"], "host-local");
        assert_eq!(plugin["ipam"]["ranges"][0][0]["subnet"], "10.42.7.0/24");
        assert_eq!(plugin["ipam"]["ranges"][0][0]["gateway"], "10.42.7.1");
        assert_eq!(net.bridge_gateway(), Ipv4Addr::new(10, 42, 7, 1));
        let on_disk = std::fs::read_to_string(dir.path().join("10-cairn.conflist")).unwrap();
        let parsed: Value = serde_json::from_str(&on_disk).unwrap();
        assert_eq!(parsed, conf);
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: Ipv4Cidr = "10.42.0.0/24".parse().unwrap();
        let long = NetworkConfig::new("n", "a-very-long-bridge-name", cidr, dir.path().into());
        assert!(matches!(Network::new(long), Err(CniError::Config(_))));
        let tiny = NetworkConfig::new(
            "n",
            "br",
            "10.42.0.0/31".parse().unwrap(),
            dir.path().into(),
        );
        assert!(Network::new(tiny).is_err());
        for uid in ["", "../etc", "a/b", ".hidden"] {
            assert!(validate_pod_uid(uid).is_err(), "{uid}");
        }
        assert!(validate_pod_uid("0b1c7e6e-1f0a-4c1e-9a59-3d9c1c2c4a10").is_ok());
    }

    #[test]
    fn plugin_errors_become_one_line() {
        let out = br#"{"code":11,"msg":"failed to allocate","details":"range\nfull"}"#;
        assert_eq!(
            plugin_error_message(out, b""),
            "code 11: failed to allocate: range full"
        );
        assert_eq!(plugin_error_message(b"", b"boom\n"), "boom");
    }

    #[test]
    fn add_result_gives_ipv4_and_gateway() {
        let result = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"version": "4", "interface": 0, "address": "10.42.0.5/24", "gateway": "10.42.0.1"}],
        });
        let net = parse_add_result(&result, Ipv4Addr::new(10, 42, 0, 254)).unwrap();
        assert_eq!(net.ip, Ipv4Addr::new(10, 42, 0, 5));
        assert_eq!(net.gateway, Ipv4Addr::new(10, 42, 0, 1));
        assert_eq!(net.ifname, "eth0");
        assert!(parse_add_result(&json!({"ips": []}), Ipv4Addr::LOCALHOST).is_err());
    }

    /// Test-only helpers shared with proxy.rs's root test: a network on its own bridge and
    /// podCIDR, removed again (pods, bridge, state) when dropped, even after a failed assert.
    pub(crate) struct TestNetwork {
        pub net: Network,
        pub pods: Vec<(String, PathBuf)>,
        _dir: tempfile::TempDir,
    }

    impl TestNetwork {
        pub(crate) fn new(tag: &str, third_octet: u8) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let bridge = format!("cnt{}{}", tag, std::process::id() % 100_000);
            let cidr: Ipv4Cidr = format!("10.249.{third_octet}.0/24").parse().unwrap();
            let cfg = NetworkConfig::new("test", &bridge, cidr, dir.path().to_path_buf());
            let net = Network::new(cfg).unwrap();
            Self {
                net,
                pods: Vec::new(),
                _dir: dir,
            }
        }

        pub(crate) async fn add_pod(&mut self, uid: &str) -> PodNetwork {
            let netns = self.net.create_netns(uid).await.unwrap();
            self.pods.push((uid.to_string(), netns.clone()));
            self.net.add(uid, "default", uid, &netns).await.unwrap()
        }
    }

    impl Drop for TestNetwork {
        fn drop(&mut self) {
            let bridge = self.net.config.bridge.clone();
            for (uid, netns) in &self.pods {
                let inv = Invocation {
                    command: "DEL",
                    container_id: uid.clone(),
                    netns: String::new(),
                    ifname: POD_IFNAME.into(),
                    cni_args: String::new(),
                };
                let _ = invoke_plugin(&self.net.config.cni_bin_dirs, &self.net.bridge_conf, &inv);
                let _ = remove_netns_at(netns);
            }
            if link_exists(&bridge) {
                let _ = run_ip(&["link", "del", &bridge]);
            }
        }
    }

    pub(crate) fn in_netns(netns: &Path, cmd: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .args(cmd)
            .output()
            .unwrap()
    }

    fn veths_on(bridge: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", bridge])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[tokio::test]
    async fn two_pods_ping_then_leave_nothing_behind() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let mut t = TestNetwork::new("c", 11);
        t.net.ensure_bridge().await.unwrap();
        let bridge = t.net.config.bridge.clone();
        let a = t.add_pod("pod-a").await;
        let b = t.add_pod("pod-b").await;
        assert_ne!(a.ip, b.ip);
        assert!(t.net.config.pod_cidr.contains(a.ip));
        assert_eq!(a.gateway, Ipv4Addr::new(10, 249, 11, 1));
        assert_eq!(veths_on(&bridge).len(), 2);

        let netns_a = t.net.netns_path("pod-a");
        let ping = in_netns(
            &netns_a,
            &["busybox", "ping", "-c", "1", "-W", "2", &b.ip.to_string()],
        );
        assert!(ping.status.success(), "ping failed: {ping:?}");
        // lo is up thanks to the loopback plugin.
        let lo = in_netns(
            &netns_a,
            &["busybox", "ping", "-c", "1", "-W", "2", "127.0.0.1"],
        );
        assert!(lo.status.success(), "lo ping failed: {lo:?}");

        // Normal delete for a; b "crashes": its netns and IP are left for gc to find.
        t.net
            .del("pod-a", "default", "pod-a", &netns_a)
            .await
            .unwrap();
        t.net
            .del("pod-a", "default", "pod-a", &netns_a)
            .await
            .unwrap(); // idempotent
        assert!(!netns_a.exists());
        let owners: Vec<String> = t
            .net
            .reservations()
            .unwrap()
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert_eq!(owners, vec!["pod-b".to_string()]);

        let live: HashSet<String> = HashSet::new();
        let report = t.net.gc(&live).await.unwrap();
        assert_eq!(report.netns_removed, vec!["pod-b".to_string()]);
        assert_eq!(report.ips_released, vec![b.ip]);
        assert!(t.net.reservations().unwrap().is_empty());
        assert!(list_dir_names(&t.net.config.state_dir.join("netns"))
            .unwrap()
            .is_empty());
        // The veth's host end goes with the namespace; the kernel may take a moment.
        for _ in 0..50 {
            if veths_on(&bridge).is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(veths_on(&bridge), Vec::<String>::new());
        t.pods.clear();
        t.net.delete_bridge().await.unwrap();
        assert!(!link_exists(&bridge));
    }
}
