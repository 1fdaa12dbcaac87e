//! The Node object and its heartbeat: registration with labels and nodeInfo, status with
//! capacity, addresses and the four kubelet conditions, and the Lease renewed every 10 s
//! (what the node lifecycle controller reads to tell a live node from a dead one).

use cairn_wire::client::{ApiClient, ClientError};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

pub const LEASE_DURATION_SECONDS: u64 = 40;
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// Node status is posted when it changes, and at least this often.
pub const STATUS_REPORT_INTERVAL: Duration = Duration::from_secs(60);
pub const MAX_PODS: u32 = 110;

/// What the node is, sampled from the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    pub storage_bytes: u64,
    pub storage_available_bytes: u64,
    pub pids: u64,
    pub pid_max: u64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
    pub runtime_version: String,
}

/// How the node is doing, besides the machine: is the runtime answering, is the network set up.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub runtime_ok: bool,
    pub network_ok: bool,
    pub problem: Option<String>,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let rest = l.strip_prefix(key)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        })
        .unwrap_or(0)
        * 1024
}

fn statvfs(path: &Path) -> (u64, u64) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return (0, 0);
    };
    // SAFETY: statvfs fills the struct we own from a valid NUL-terminated path.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return (0, 0);
        }
        let frsize = s.f_frsize as u64;
        (s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize)
    }
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".to_string())
}

impl Machine {
    pub fn sample(data_dir: &Path, runtime_version: &str) -> Machine {
        let (storage, storage_avail) = statvfs(data_dir);
        let machine_id = {
            let m = read_trim("/etc/machine-id");
            if m.is_empty() {
                read_trim("/proc/sys/kernel/random/boot_id").replace('-', "")
            } else {
                m
            }
        };
        let uuid = read_trim("/sys/class/dmi/id/product_uuid");
        let pids = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes: meminfo("MemTotal"),
            memory_available_bytes: meminfo("MemAvailable"),
            storage_bytes: storage,
            storage_available_bytes: storage_avail,
            pids,
            pid_max: read_trim("/proc/sys/kernel/pid_max")
                .parse()
                .unwrap_or(32768),
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            os_image: os_image(),
            system_uuid: if uuid.is_empty() {
                machine_id.clone()
            } else {
                uuid
            },
            machine_id,
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            runtime_version: runtime_version.to_string(),
        }
    }
}

pub fn k8s_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// The Lease's renewTime is a MicroTime: RFC 3339 with microseconds.
pub fn now_micro() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let base = cairn_wire::time::rfc3339(secs);
    format!("{}.{:06}Z", base.trim_end_matches('Z'), now.subsec_micros())
}

/// The labels a node carries, as kubelet sets them.
pub fn labels(node_name: &str, control_plane: bool) -> Value {
    let mut l = json!({
        "kubernetes.io/hostname": node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": k8s_arch(),
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": k8s_arch(),
        "node.kubernetes.io/instance-type": "cairn",
    });
    if control_plane {
        l["node-role.kubernetes.io/control-plane"] = json!("true");
    }
    l
}

/// A condition, keeping its lastTransitionTime when the status did not change.
fn condition(
    previous: Option<&Value>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let transition = previous
        .and_then(|conds| conds.as_array())
        .and_then(|a| a.iter().find(|c| c["type"] == kind))
        .filter(|c| c["status"] == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "lastHeartbeatTime": now, "lastTransitionTime": transition})
}

/// The node's `status`, from the machine sample, health, and addresses. `previous` is the
/// current conditions list, so transition times only move when a status flips.
pub fn status(
    m: &Machine,
    health: &Health,
    addresses: &[(String, String)],
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let mem_ki = format!("{}Ki", m.memory_bytes / 1024);
    let storage_ki = format!("{}Ki", m.storage_bytes / 1024);
    let capacity = json!({
        "cpu": m.cpus.to_string(),
        "memory": mem_ki,
        "pods": MAX_PODS.to_string(),
        "ephemeral-storage": storage_ki,
    });
    let memory_pressure = m.memory_available_bytes > 0 && m.memory_available_bytes < 100 << 20;
    let disk_pressure = m.storage_bytes > 0 && m.storage_available_bytes * 10 < m.storage_bytes;
    let pid_pressure = m.pid_max > 0 && m.pids * 10 > m.pid_max * 9;
    let ready = health.runtime_ok && health.network_ok;
    let ready_message = match (&health.problem, ready) {
        (_, true) => "kubelet is posting ready status".to_string(),
        (Some(p), false) => p.clone(),
        (None, false) => "container runtime or network is not ready".to_string(),
    };
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition(previous, "MemoryPressure", memory_pressure,
                if memory_pressure { "KubeletHasInsufficientMemory" } else { "KubeletHasSufficientMemory" },
                if memory_pressure { "kubelet has insufficient memory available" } else { "kubelet has sufficient memory available" }, now),
            condition(previous, "DiskPressure", disk_pressure,
                if disk_pressure { "KubeletHasDiskPressure" } else { "KubeletHasNoDiskPressure" },
                if disk_pressure { "kubelet has disk pressure" } else { "kubelet has no disk pressure" }, now),
            condition(previous, "PIDPressure", pid_pressure,
                if pid_pressure { "KubeletHasInsufficientPID" } else { "KubeletHasSufficientPID" },
                if pid_pressure { "kubelet has insufficient PID available" } else { "kubelet has sufficient PID available" }, now),
            condition(previous, "Ready", ready,
                if ready { "KubeletReady" } else { "KubeletNotReady" }, &ready_message, now),
        ],
        "addresses": addresses.iter().map(|(t, a)| json!({"type": t, "address": a})).collect::<Vec<_>>(),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": m.machine_id,
            "systemUUID": m.system_uuid,
            "bootID": m.boot_id,
            "kernelVersion": m.kernel,
            "osImage": m.os_image,
            "containerRuntimeVersion": m.runtime_version,
            "kubeletVersion": format!("v1.32.0+cairn.{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": format!("v1.32.0+cairn.{}", env!("CARGO_PKG_VERSION")),
            "operatingSystem": "linux",
            "architecture": k8s_arch(),
        },
    })
}

/// Status without the fields that move on every sample, to tell a real change from a tick.
pub fn fingerprint(status: &Value) -> String {
    let mut s = status.clone();
    if let Some(conds) = s.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
            }
        }
    }
    s.to_string()
}

/// The address this machine uses to reach `server_host`, or its first non-loopback IPv4.
pub fn node_ip(server_host: Option<&str>) -> IpAddr {
    let via_route = |target: &str| -> Option<IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        s.connect((target, 53)).ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    };
    server_host
        .and_then(via_route)
        .or_else(|| {
            cairn_wire::net::local_addresses()
                .into_iter()
                .find(|a| !a.is_loopback())
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn nodes_path(name: &str) -> String {
    format!("/api/v1/nodes/{name}")
}

/// Creates the Node (or takes over the existing object of this name, which the join's
/// per-node secret has already proven is ours) and returns it.
pub async fn register(
    client: &ApiClient,
    name: &str,
    control_plane: bool,
    initial_status: &Value,
) -> Result<Value, ClientError> {
    let obj = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels(name, control_plane),
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {},
        "status": initial_status,
    });
    match client.create("/api/v1/nodes", &obj).await {
        Ok(v) => Ok(v),
        Err(e) if e.is_conflict() || matches!(e, ClientError::Status { code: 409, .. }) => {
            client
                .merge_patch(
                    &nodes_path(name),
                    &json!({"metadata": {"labels": labels(name, control_plane)}}),
                )
                .await
        }
        Err(e) => Err(e),
    }
}

pub async fn post_status(
    client: &ApiClient,
    name: &str,
    status: &Value,
) -> Result<Value, ClientError> {
    client
        .merge_patch(
            &format!("{}/status", nodes_path(name)),
            &json!({ "status": status }),
        )
        .await
}

/// Renews (or creates) `kube-node-lease/<name>`.
pub async fn renew_lease(
    client: &ApiClient,
    name: &str,
    node_uid: &str,
) -> Result<(), ClientError> {
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}");
    let spec = json!({"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                      "renewTime": now_micro()});
    match client.merge_patch(&path, &json!({ "spec": spec })).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => {
            let mut meta = json!({"name": name, "namespace": "kube-node-lease"});
            if !node_uid.is_empty() {
                meta["ownerReferences"] =
                    json!([{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}]);
            }
            client
                .create(
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                    &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                            "metadata": meta, "spec": spec}),
                )
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            cpus: 2,
            memory_bytes: 1 << 30,
            memory_available_bytes: 512 << 20,
            storage_bytes: 10 << 30,
            storage_available_bytes: 5 << 30,
            pids: 100,
            pid_max: 32768,
            kernel: "6.12.0".into(),
            os_image: "cairn".into(),
            machine_id: "abc".into(),
            system_uuid: "abc".into(),
            boot_id: "b".into(),
            runtime_version: "containerd://1.7.24".into(),
        }
    }

    fn healthy() -> Health {
        Health {
            runtime_ok: true,
            network_ok: true,
            problem: None,
        }
    }

    #[test]
    fn status_has_capacity_info_and_conditions() {
        let s = status(
            &machine(),
            &healthy(),
            &[
                ("InternalIP".into(), "10.0.0.5".into()),
                ("Hostname".into(), "n1".into()),
            ],
            None,
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(s["capacity"]["cpu"], "2");
        assert_eq!(s["capacity"]["memory"], "1048576Ki");
        assert_eq!(s["allocatable"]["pods"], "110");
        assert!(s["capacity"]["ephemeral-storage"]
            .as_str()
            .unwrap()
            .ends_with("Ki"));
        // The Python client's V1NodeSystemInfo rejects a missing required field.
        for f in [
            "machineID",
            "systemUUID",
            "bootID",
            "kernelVersion",
            "osImage",
            "containerRuntimeVersion",
            "kubeletVersion",
            "kubeProxyVersion",
            "operatingSystem",
            "architecture",
        ] {
            assert!(s["nodeInfo"][f].is_string(), "{f}");
        }
        let kinds: Vec<_> = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].clone())
            .collect();
        assert_eq!(
            kinds,
            vec!["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
        );
        assert_eq!(s["conditions"][3]["status"], "True");
        assert_eq!(s["addresses"][0]["address"], "10.0.0.5");
    }

    #[test]
    fn transitions_only_move_on_a_flip() {
        let first = status(&machine(), &healthy(), &[], None, "T1");
        let same = status(
            &machine(),
            &healthy(),
            &[],
            Some(&first["conditions"]),
            "T2",
        );
        assert_eq!(same["conditions"][3]["lastTransitionTime"], "T1");
        assert_eq!(same["conditions"][3]["lastHeartbeatTime"], "T2");
        assert_eq!(fingerprint(&first), fingerprint(&same));
        let sick = Health {
            runtime_ok: false,
            network_ok: true,
            problem: Some("containerd is not answering".into()),
        };
        let down = status(&machine(), &sick, &[], Some(&same["conditions"]), "T3");
        assert_eq!(down["conditions"][3]["status"], "False");
        assert_eq!(down["conditions"][3]["lastTransitionTime"], "T3");
        assert_eq!(
            down["conditions"][3]["message"],
            "containerd is not answering"
        );
        assert_ne!(fingerprint(&down), fingerprint(&same));
    }

    #[test]
    fn pressure_conditions() {
        let mut m = machine();
        m.memory_available_bytes = 10 << 20;
        m.storage_available_bytes = 100 << 20;
        let s = status(&m, &healthy(), &[], None, "T");
        assert_eq!(s["conditions"][0]["status"], "True");
        assert_eq!(s["conditions"][1]["status"], "True");
        assert_eq!(s["conditions"][2]["status"], "False");
    }

    #[test]
    fn micro_time_has_six_decimals() {
        let t = now_micro();
        assert!(t.ends_with('Z'));
        let frac = t.rsplit('.').next().unwrap();
        assert_eq!(frac.len(), 7, "{t}");
    }

    #[test]
    fn sample_reads_this_machine() {
        let m = Machine::sample(Path::new("/"), "containerd://x");
        assert!(m.cpus >= 1);
        assert!(m.memory_bytes > 0);
        assert!(!m.kernel.is_empty());
    }
}
