//! A pod's container turned into the OCI runtime spec (1.0.2) that containerd hands to runc.
//!
//! The defaults follow what containerd's CRI plugin generates for the kubelet (mounts, masked
//! paths, capability set, device rules), so a workload behaves here as on any Kubernetes node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext};
use serde_json::{json, Value};

use cairn_wire::quantity::parse_quantity;

pub use super::images::ImageConfig;

/// How a [`MountSpec`] is made inside the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// A recursive bind of `source`.
    Bind,
    /// A fresh tmpfs (`source` is ignored).
    Tmpfs,
}

/// One mount the container gets on top of the defaults; one at a default's destination
/// (`/dev/shm`, say) replaces that default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub destination: String,
    pub source: PathBuf,
    pub read_only: bool,
    pub kind: MountKind,
}

/// Facts about the node the spec depends on; [`HostFacts::detect`] reads them from this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Total memory, for the Burstable OOM score.
    pub memory_bytes: u64,
    /// cgroup v2 (unified) hierarchy: containers get their own cgroup namespace.
    pub cgroup_v2: bool,
    /// The node's hostname, which host-network pods see.
    pub hostname: String,
    /// The lowest OOM score adjustment runc may set: -1000 with CAP_SYS_RESOURCE, else our own
    /// (lowering it takes that capability, which some sandboxes withhold).
    pub min_oom_score_adj: i64,
    /// The open-files limit containers get: 1048576, or our own hard limit where we may not
    /// raise it (no CAP_SYS_RESOURCE).
    pub max_nofile: u64,
    /// What "all capabilities" means here (privileged, `add: [ALL]`): the ones the agent holds,
    /// as containerd does; runc cannot grant more.
    pub capabilities: Vec<String>,
}

impl HostFacts {
    pub fn detect() -> HostFacts {
        HostFacts {
            memory_bytes: host_memory_bytes(),
            cgroup_v2: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            min_oom_score_adj: min_oom_score_adj(),
            max_nofile: max_nofile(),
            capabilities: current_capabilities(),
        }
    }
}

const CAP_SYS_RESOURCE: u32 = 24;

const DEFAULT_NOFILE: u64 = 1_048_576;

fn effective_capability_mask() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

fn has_sys_resource() -> bool {
    effective_capability_mask() & (1 << CAP_SYS_RESOURCE) != 0
}

fn current_capabilities() -> Vec<String> {
    let mask = effective_capability_mask();
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, name)| name.to_string())
        .collect()
}

fn max_nofile() -> u64 {
    if has_sys_resource() {
        return DEFAULT_NOFILE;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    DEFAULT_NOFILE.min(limit.rlim_max)
}

fn min_oom_score_adj() -> i64 {
    if has_sys_resource() {
        return -1000;
    }
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn host_memory_bytes() -> u64 {
    // SAFETY: sysinfo only writes into the zeroed struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return 0;
    }
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit))
}

/// Everything [`build`] needs for one container of one pod.
pub struct SpecInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageConfig,
    /// The container's environment, already resolved by `env::resolve`.
    pub env: Vec<(String, String)>,
    /// The pod's network namespace (ignored for hostNetwork pods).
    pub netns: &'a Path,
    /// Volumes plus the pod's /etc/hosts, /etc/resolv.conf, /etc/hostname, termination log.
    pub mounts: Vec<MountSpec>,
    /// e.g. `/cairn/pod<uid>`; the container's cgroup is `<cgroup_parent>/<container_id>`.
    pub cgroup_parent: String,
    pub container_id: &'a str,
    /// The container's mounted rootfs, where user and group names are looked up.
    pub rootfs_image_users: Option<&'a Path>,
    pub host: &'a HostFacts,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command specified")]
    NoCommand,
    #[error("container has runAsNonRoot and image will run as root")]
    RunsAsRoot,
    #[error("container has runAsNonRoot and image has non-numeric user ({0}), cannot verify user is non-root")]
    NonNumericUser(String),
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("invalid {field} quantity {value:?}")]
    InvalidQuantity { field: String, value: String },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The capabilities containerd's CRI plugin grants a container by default.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel knows (up to 5.9's CAP_CHECKPOINT_RESTORE), in number order.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The kubelet's CPU period; quotas are expressed against it.
const CPU_PERIOD: i64 = 100_000;
/// The kubelet never sets a quota below 1ms per period.
const MIN_CPU_QUOTA: i64 = 1_000;
const MIN_CPU_SHARES: i64 = 2;
const MAX_CPU_SHARES: i64 = 262_144;

/// The OCI runtime spec for `input`'s container.
pub fn build(input: &SpecInput) -> Result<Value, SpecError> {
    let pod_spec = input.pod.spec.clone().unwrap_or_default();
    let pod_sc = pod_spec.security_context.clone().unwrap_or_default();
    let sc = input.container.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged.unwrap_or(false);
    let host_network = pod_spec.host_network.unwrap_or(false);

    let hostname = if host_network {
        input.host.hostname.clone()
    } else {
        pod_hostname(input.pod)
    };
    let env = process_env(input.image, &input.env, &hostname);
    let args = process_args(input.container, input.image, &input.env)?;
    let user = resolve_user(input, &pod_sc, &sc)?;
    let caps = capabilities(&sc, &input.host.capabilities);
    let cwd = input
        .container
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| Some(input.image.working_dir.clone()).filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".to_string());

    let process = json!({
        "terminal": input.container.tty.unwrap_or(false),
        "user": user,
        "args": args,
        "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "cwd": cwd,
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": input.host.max_nofile, "soft": input.host.max_nofile}],
        "noNewPrivileges": sc.allow_privilege_escalation == Some(false) && !privileged,
        "oomScoreAdj": oom_score_adj(input.pod, input.container, input.host.memory_bytes)
            .max(input.host.min_oom_score_adj),
    });

    let mut linux = json!({
        "namespaces": namespaces(input, &pod_spec, privileged),
        "cgroupsPath": format!("{}/{}", input.cgroup_parent.trim_end_matches('/'), input.container_id),
        "resources": resources(input.container, privileged)?,
    });
    if privileged {
        linux["devices"] = Value::Array(host_devices());
    } else {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    let sysctls: BTreeMap<String, String> = pod_sc
        .sysctls
        .iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    if !sysctls.is_empty() {
        linux["sysctl"] = json!(sysctls);
    }

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": sc.read_only_root_filesystem.unwrap_or(false)},
        "mounts": mounts(&input.mounts, privileged),
        "linux": linux,
    });
    if !host_network {
        spec["hostname"] = json!(hostname);
    }
    Ok(spec)
}

/// The process containerd's Exec takes for `command` in a container created from `base`: the
/// container's identity, environment and privileges, with new arguments.
pub fn exec_process(base: &Value, command: Vec<String>, tty: bool) -> Value {
    let mut process = base.get("process").cloned().unwrap_or_else(|| json!({}));
    if let Some(p) = process.as_object_mut() {
        p.insert("args".into(), json!(command));
        p.insert("terminal".into(), json!(tty));
        p.remove("consoleSize");
        p.entry("cwd").or_insert_with(|| json!("/"));
        p.entry("user")
            .or_insert_with(|| json!({"uid": 0, "gid": 0}));
    }
    process
}

/// Expands `$(VAR)` in `input` the way Kubernetes expands command, args and env values:
/// `$$` is a literal `$`, references to unknown variables and unterminated `$(` stay as written.
/// `env` is searched from the end, so later definitions win.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    expand_with(input, |name| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

/// [`expand`] over any lookup.
pub fn expand_with(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A trailing `$` is literal.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(other) => {
                out.push('$');
                out.push(other);
                rest = &after[other.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The pod's hostname as the kubelet derives it: `spec.hostname`, else the pod name, cut to 63
/// characters without a trailing `-` or `.`.
pub fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    if name.len() <= 63 {
        return name;
    }
    name[..63].trim_end_matches(['-', '.']).to_string()
}

/// Image env first, then the container's, each overriding by name; `HOSTNAME` and a default
/// `PATH` unless something else set them.
fn process_env(
    image: &ImageConfig,
    container_env: &[(String, String)],
    hostname: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("HOSTNAME".to_string(), hostname.to_string()),
    ];
    let image_env = image.env.iter().map(|kv| match kv.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (kv.clone(), String::new()),
    });
    for (k, v) in image_env.chain(container_env.iter().cloned()) {
        match env.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => env.push((k, v)),
        }
    }
    env
}

/// Kubernetes' rules: `command` replaces the image ENTRYPOINT, `args` replace its CMD (and a
/// `command` without `args` drops the CMD), with `$(VAR)` expanded from the container env.
fn process_args(
    container: &Container,
    image: &ImageConfig,
    env: &[(String, String)],
) -> Result<Vec<String>, SpecError> {
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter().flatten().map(|s| expand(s, env)).collect()
    };
    let mut command = expand_all(&container.command);
    let mut args = expand_all(&container.args);
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone();
        }
        // An entrypoint of [""] is how images clear an inherited ENTRYPOINT.
        if !(image.entrypoint.len() == 1 && image.entrypoint[0].is_empty()) {
            command = image.entrypoint.clone();
        }
    }
    command.extend(args);
    if command.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(command)
}

/// The process user: runAsUser/runAsGroup (container over pod) over the image's `USER`, with
/// the user's groups from the image's /etc/group, supplementalGroups and fsGroup added.
fn resolve_user(
    input: &SpecInput,
    pod_sc: &PodSecurityContext,
    sc: &SecurityContext,
) -> Result<Value, SpecError> {
    let run_as_user = sc.run_as_user.or(pod_sc.run_as_user);
    let run_as_group = sc.run_as_group.or(pod_sc.run_as_group);
    let run_as_non_root = sc
        .run_as_non_root
        .or(pod_sc.run_as_non_root)
        .unwrap_or(false);
    let rootfs = input.rootfs_image_users;

    let (user_part, group_part) = match input.image.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (input.image.user.as_str(), None),
    };
    let (uid, mut gid, username) = match run_as_user {
        Some(uid) => {
            let uid = clamp_id(uid);
            let entry = passwd_entries(rootfs)?.into_iter().find(|e| e.uid == uid);
            let gid = entry.as_ref().map_or(0, |e| e.gid);
            (uid, gid, entry.map(|e| e.name))
        }
        None => {
            if run_as_non_root && !user_part.is_empty() && user_part.parse::<u32>().is_err() {
                return Err(SpecError::NonNumericUser(user_part.to_string()));
            }
            resolve_image_user(user_part, rootfs)?
        }
    };
    if run_as_user.is_none() {
        if let Some(group) = group_part.filter(|g| !g.is_empty()) {
            gid = resolve_group(group, rootfs)?;
        }
    }
    if let Some(g) = run_as_group {
        gid = clamp_id(g);
    }
    if run_as_non_root && uid == 0 {
        return Err(SpecError::RunsAsRoot);
    }

    let mut additional: Vec<u32> = vec![gid];
    if let Some(name) = &username {
        for group in group_entries(rootfs)? {
            if group.members.iter().any(|m| m == name) {
                additional.push(group.gid);
            }
        }
    }
    additional.extend(
        pod_sc
            .supplemental_groups
            .iter()
            .flatten()
            .map(|g| clamp_id(*g)),
    );
    additional.extend(pod_sc.fs_group.map(clamp_id));
    let mut seen = std::collections::HashSet::new();
    additional.retain(|g| seen.insert(*g));
    Ok(json!({"uid": uid, "gid": gid, "additionalGids": additional}))
}

fn clamp_id(id: i64) -> u32 {
    u32::try_from(id.max(0)).unwrap_or(u32::MAX)
}

/// `uid` or a name from the image's passwd, with the user's primary group.
fn resolve_image_user(
    user: &str,
    rootfs: Option<&Path>,
) -> Result<(u32, u32, Option<String>), SpecError> {
    if user.is_empty() {
        return Ok((0, 0, Some("root".to_string())));
    }
    let entries = passwd_entries(rootfs)?;
    if let Ok(uid) = user.parse::<u32>() {
        let entry = entries.into_iter().find(|e| e.uid == uid);
        return Ok((
            uid,
            entry.as_ref().map_or(0, |e| e.gid),
            entry.map(|e| e.name),
        ));
    }
    entries
        .into_iter()
        .find(|e| e.name == user)
        .map(|e| (e.uid, e.gid, Some(e.name)))
        .ok_or_else(|| SpecError::UnknownUser(user.to_string()))
}

fn resolve_group(group: &str, rootfs: Option<&Path>) -> Result<u32, SpecError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    group_entries(rootfs)?
        .into_iter()
        .find(|g| g.name == group)
        .map(|g| g.gid)
        .ok_or_else(|| SpecError::UnknownGroup(group.to_string()))
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Lines of one of the rootfs's /etc files, split on `:`; none when there is no rootfs or file.
fn etc_records(rootfs: Option<&Path>, file: &str) -> Result<Vec<Vec<String>>, SpecError> {
    let Some(root) = rootfs else {
        return Ok(Vec::new());
    };
    let path = root.join("etc").join(file);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(SpecError::Read { path, source }),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect())
}

fn passwd_entries(rootfs: Option<&Path>) -> Result<Vec<PasswdEntry>, SpecError> {
    Ok(etc_records(rootfs, "passwd")?
        .into_iter()
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.clone(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect())
}

fn group_entries(rootfs: Option<&Path>) -> Result<Vec<GroupEntry>, SpecError> {
    Ok(etc_records(rootfs, "group")?
        .into_iter()
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.clone(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect())
}

/// containerd's order: add ALL, drop ALL, then the individual adds, then the individual drops.
fn capabilities(sc: &SecurityContext, all: &[String]) -> Vec<String> {
    if sc.privileged.unwrap_or(false) {
        return all.to_vec();
    }
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    let Some(requested) = &sc.capabilities else {
        return caps;
    };
    let add: Vec<String> = requested
        .add
        .iter()
        .flatten()
        .map(|c| cap_name(c))
        .collect();
    let drop: Vec<String> = requested
        .drop
        .iter()
        .flatten()
        .map(|c| cap_name(c))
        .collect();
    if add.iter().any(|c| c == "CAP_ALL") {
        caps = all.to_vec();
    }
    if drop.iter().any(|c| c == "CAP_ALL") {
        caps.clear();
    }
    for c in add.iter().filter(|c| *c != "CAP_ALL") {
        if !caps.contains(c) {
            caps.push(c.clone());
        }
    }
    caps.retain(|c| !drop.contains(c));
    caps
}

/// The kernel's name for a capability as written in a pod (`net_admin`, `NET_ADMIN`,
/// `CAP_NET_ADMIN`).
fn cap_name(c: &str) -> String {
    let upper = c.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

fn namespaces(
    input: &SpecInput,
    pod_spec: &k8s_openapi::api::core::v1::PodSpec,
    privileged: bool,
) -> Vec<Value> {
    let mut ns = vec![json!({"type": "mount"})];
    if !pod_spec.host_pid.unwrap_or(false) {
        ns.push(json!({"type": "pid"}));
    }
    if !pod_spec.host_ipc.unwrap_or(false) {
        ns.push(json!({"type": "ipc"}));
    }
    if !pod_spec.host_network.unwrap_or(false) {
        ns.push(json!({"type": "uts"}));
        ns.push(json!({"type": "network", "path": input.netns.to_string_lossy()}));
    }
    // As containerd does on cgroup v2: the container sees its own cgroup as the root.
    if input.host.cgroup_v2 && !privileged {
        ns.push(json!({"type": "cgroup"}));
    }
    ns
}

/// Default mounts (containerd's CRI set), with `extra` replacing any at the same destination.
fn mounts(extra: &[MountSpec], privileged: bool) -> Vec<Value> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let defaults = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", sys_mode]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", sys_mode]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
    ];
    let mut out: Vec<Value> = defaults
        .into_iter()
        .filter(|d| {
            !extra
                .iter()
                .any(|m| Some(m.destination.as_str()) == d["destination"].as_str())
        })
        .collect();
    // Parents before children, so a mount inside another volume lands on top of it.
    let mut extra: Vec<&MountSpec> = extra.iter().collect();
    extra.sort_by_key(|m| Path::new(&m.destination).components().count());
    for m in extra {
        let rw = if m.read_only { "ro" } else { "rw" };
        out.push(match m.kind {
            MountKind::Bind => json!({
                "destination": m.destination, "type": "bind",
                "source": m.source.to_string_lossy(),
                "options": ["rbind", "rprivate", rw],
            }),
            MountKind::Tmpfs => json!({
                "destination": m.destination, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", rw],
            }),
        });
    }
    out
}

/// cgroup limits from the container's resources (identical on cgroup v1 and v2: runc converts).
fn resources(container: &Container, privileged: bool) -> Result<Value, SpecError> {
    let devices = if privileged {
        json!([{"allow": true, "access": "rwm"}])
    } else {
        default_device_rules()
    };
    let cpu_request = container_quantity(container, false, "cpu")?;
    let cpu_limit = container_quantity(container, true, "cpu")?;
    let memory_limit = container_quantity(container, true, "memory")?;

    // An unset request takes the limit, as API defaulting would have written it.
    let request_milli = cpu_request.or(cpu_limit).unwrap_or(0);
    let mut cpu = json!({"shares": cpu_shares(request_milli)});
    if let Some(limit) = cpu_limit.filter(|l| *l > 0) {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX / CPU_PERIOD);
        let quota = (limit.saturating_mul(CPU_PERIOD) / 1000).max(MIN_CPU_QUOTA);
        cpu["quota"] = json!(quota);
        cpu["period"] = json!(CPU_PERIOD);
    }
    let mut res = json!({"devices": devices, "cpu": cpu});
    if let Some(mem) = memory_limit.filter(|m| *m > 0) {
        res["memory"] = json!({"limit": milli_to_units(mem)});
    }
    Ok(res)
}

/// kubelet's MilliCPUToShares.
fn cpu_shares(milli: i128) -> i64 {
    let shares = milli.saturating_mul(1024) / 1000;
    i64::try_from(shares)
        .unwrap_or(MAX_CPU_SHARES)
        .clamp(MIN_CPU_SHARES, MAX_CPU_SHARES)
}

fn milli_to_units(milli: i128) -> i64 {
    i64::try_from((milli + 999) / 1000).unwrap_or(i64::MAX)
}

/// A container's request or limit for `resource`, in thousandths of its unit.
fn container_quantity(
    container: &Container,
    limit: bool,
    resource: &str,
) -> Result<Option<i128>, SpecError> {
    let resources = container.resources.as_ref();
    let map = if limit {
        resources.and_then(|r| r.limits.as_ref())
    } else {
        resources.and_then(|r| r.requests.as_ref())
    };
    let Some(q) = map.and_then(|m| m.get(resource)) else {
        return Ok(None);
    };
    parse_quantity(&q.0)
        .map(Some)
        .ok_or_else(|| SpecError::InvalidQuantity {
            field: format!("{}.{resource}", if limit { "limits" } else { "requests" }),
            value: q.0.clone(),
        })
}

/// containerd's rules: deny everything, then the devices every container may use.
fn default_device_rules() -> Value {
    let rule = |kind: &str, major: Option<i64>, minor: Option<i64>, access: &str| json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": access});
    json!([
        {"allow": false, "access": "rwm"},
        rule("c", None, None, "m"),
        rule("b", None, None, "m"),
        rule("c", Some(1), Some(3), "rwm"),   // null
        rule("c", Some(1), Some(5), "rwm"),   // zero
        rule("c", Some(1), Some(7), "rwm"),   // full
        rule("c", Some(1), Some(8), "rwm"),   // random
        rule("c", Some(1), Some(9), "rwm"),   // urandom
        rule("c", Some(5), Some(0), "rwm"),   // tty
        rule("c", Some(5), Some(1), "rwm"),   // console
        rule("c", Some(5), Some(2), "rwm"),   // ptmx
        rule("c", Some(136), None, "rwm"),    // pts/*
        rule("c", Some(10), Some(200), "rwm"), // net/tun
    ])
}

/// Every device node of the host, as containerd gives privileged containers.
fn host_devices() -> Vec<Value> {
    let mut out = Vec::new();
    collect_devices(Path::new("/dev"), &mut out);
    out
}

fn collect_devices(dir: &Path, out: &mut Vec<Value>) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            // The container gets its own of these.
            let name = entry.file_name();
            if !matches!(
                name.to_str(),
                Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
            ) {
                collect_devices(&path, out);
            }
            continue;
        }
        let kind = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else {
            continue;
        };
        if path == Path::new("/dev/console") {
            continue;
        }
        let rdev = meta.rdev();
        out.push(json!({
            "path": path.to_string_lossy(),
            "type": kind,
            "major": libc::major(rdev),
            "minor": libc::minor(rdev),
            "fileMode": meta.mode() & 0o777,
            "uid": meta.uid(),
            "gid": meta.gid(),
        }));
    }
}

/// The pod's QoS class: the one the API server stored in its status when it was created, as
/// the kubelet's `GetPodQOS` reads it; computed by the same rule only for a pod without one.
pub fn qos_class(pod: &Pod) -> &'static str {
    match pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        Some("Guaranteed") => "Guaranteed",
        Some("Burstable") => "Burstable",
        Some("BestEffort") => "BestEffort",
        _ => {
            let spec = serde_json::to_value(&pod.spec).unwrap_or_default();
            cairn_wire::qos::qos_class(&spec)
        }
    }
}

/// kubelet's GetContainerOOMScoreAdjust.
fn oom_score_adj(pod: &Pod, container: &Container, node_memory: u64) -> i64 {
    match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let request = container_quantity(container, false, "memory")
                .ok()
                .flatten()
                .map(milli_to_units)
                .unwrap_or(0);
            if node_memory == 0 {
                return 999;
            }
            let node = i64::try_from(node_memory).unwrap_or(i64::MAX);
            let adj = 1000 - (1000i128 * i128::from(request) / i128::from(node)) as i64;
            // Never as protected as Guaranteed, never as exposed as BestEffort.
            adj.clamp(2, 999)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("test pod")
    }

    fn host() -> HostFacts {
        HostFacts {
            memory_bytes: 8 << 30,
            cgroup_v2: false,
            hostname: "node1".into(),
            min_oom_score_adj: -1000,
            max_nofile: DEFAULT_NOFILE,
            capabilities: ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn busybox() -> ImageConfig {
        ImageConfig {
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin:/sbin".into(), "FOO=image".into()],
            working_dir: String::new(),
            user: String::new(),
            ..Default::default()
        }
    }

    fn spec_of(
        p: &Pod,
        image: &ImageConfig,
        env: Vec<(String, String)>,
    ) -> Result<Value, SpecError> {
        spec_with(p, image, env, None, vec![])
    }

    fn spec_with(
        p: &Pod,
        image: &ImageConfig,
        env: Vec<(String, String)>,
        rootfs: Option<&Path>,
        mounts: Vec<MountSpec>,
    ) -> Result<Value, SpecError> {
        let container = &p.spec.as_ref().expect("spec").containers[0];
        let h = host();
        build(&SpecInput {
            pod: p,
            container,
            image,
            env,
            netns: Path::new("/var/run/netns/cni-1"),
            mounts,
            cgroup_parent: "/cairn/podabc".into(),
            container_id: "c1",
            rootfs_image_users: rootfs,
            host: &h,
        })
    }

    fn simple(container: Value) -> Pod {
        pod(
            json!({"metadata": {"name": "web", "namespace": "default", "uid": "abc"},
                   "spec": {"containers": [container]}}),
        )
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expand_follows_kubernetes_rules() {
        let env = kv(&[("VAR_A", "A"), ("VAR_B", "B"), ("EMPTY", "")]);
        let cases = [
            ("$(VAR_A)", "A"),
            ("___$(VAR_B)___", "___B___"),
            ("$(VAR_A)-$(VAR_B)", "A-B"),
            ("$$(VAR_A)", "$(VAR_A)"),
            ("$$$(VAR_A)", "$A"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$(EMPTY)x", "x"),
            ("$(VAR_A", "$(VAR_A"),
            ("$VAR_A", "$VAR_A"),
            ("tail$", "tail$"),
            ("$", "$"),
            ("$$", "$"),
            ("$()", "$()"),
            ("ünï$(VAR_A)ç$ö", "ünïAç$ö"),
            ("no refs", "no refs"),
            ("$(VAR_A)$(VAR_A", "A$(VAR_A"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &env), want, "expanding {input:?}");
        }
    }

    #[test]
    fn later_definitions_win_in_expansion() {
        let env = kv(&[("X", "first"), ("X", "second")]);
        assert_eq!(expand("$(X)", &env), "second");
    }

    #[test]
    fn command_and_args_follow_kubernetes_semantics() {
        let image = ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default-arg".into()],
            ..Default::default()
        };
        let cases = [
            (json!({}), vec!["/entry", "default-arg"]),
            (json!({"args": ["a"]}), vec!["/entry", "a"]),
            (json!({"command": ["/bin/x"]}), vec!["/bin/x"]),
            (
                json!({"command": ["/bin/x"], "args": ["y"]}),
                vec!["/bin/x", "y"],
            ),
            (
                json!({"command": ["echo", "$(GREETING)", "$$(GREETING)"]}),
                vec!["echo", "hi", "$(GREETING)"],
            ),
        ];
        for (fields, want) in cases {
            let mut c = json!({"name": "c", "image": "x"});
            for (k, v) in fields.as_object().expect("object") {
                c[k] = v.clone();
            }
            let p = simple(c);
            let spec = spec_of(&p, &image, kv(&[("GREETING", "hi")])).expect("spec");
            assert_eq!(spec["process"]["args"], json!(want), "for {fields}");
        }
    }

    #[test]
    fn empty_entrypoint_is_cleared_and_nothing_to_run_is_an_error() {
        let image = ImageConfig {
            entrypoint: vec![String::new()],
            cmd: vec![],
            ..Default::default()
        };
        let p = simple(json!({"name": "c", "image": "x"}));
        assert!(matches!(
            spec_of(&p, &image, vec![]),
            Err(SpecError::NoCommand)
        ));
        let p = simple(json!({"name": "c", "image": "x", "args": ["run"]}));
        assert_eq!(
            spec_of(&p, &image, vec![]).expect("spec")["process"]["args"],
            json!(["run"])
        );
    }

    #[test]
    fn env_is_image_then_container_with_defaults() {
        let p = simple(json!({"name": "c", "image": "x"}));
        let spec = spec_of(&p, &busybox(), kv(&[("FOO", "pod"), ("BAR", "1")])).expect("spec");
        assert_eq!(
            spec["process"]["env"],
            json!(["PATH=/bin:/sbin", "HOSTNAME=web", "FOO=pod", "BAR=1"])
        );
        let bare = ImageConfig {
            cmd: vec!["sh".into()],
            ..Default::default()
        };
        let spec = spec_of(&p, &bare, vec![]).expect("spec");
        assert_eq!(
            spec["process"]["env"][0],
            json!(format!("PATH={DEFAULT_PATH}"))
        );
    }

    #[test]
    fn base_spec_has_defaults_and_pod_namespaces() {
        let p = simple(json!({"name": "c", "image": "x"}));
        let spec = spec_of(&p, &busybox(), vec![]).expect("spec");
        assert_eq!(spec["ociVersion"], "1.0.2");
        assert_eq!(spec["hostname"], "web");
        assert_eq!(spec["root"], json!({"path": "rootfs", "readonly": false}));
        assert_eq!(spec["process"]["cwd"], "/");
        assert_eq!(
            spec["process"]["user"],
            json!({"uid": 0, "gid": 0, "additionalGids": [0]})
        );
        assert_eq!(spec["process"]["noNewPrivileges"], false);
        assert_eq!(spec["process"]["oomScoreAdj"], 1000);
        assert_eq!(
            spec["process"]["capabilities"]["bounding"],
            json!(DEFAULT_CAPABILITIES)
        );
        assert_eq!(spec["linux"]["cgroupsPath"], "/cairn/podabc/c1");
        let ns: Vec<&str> = spec["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert_eq!(ns, ["mount", "pid", "ipc", "uts", "network"]);
        assert_eq!(
            spec["linux"]["namespaces"][4]["path"],
            "/var/run/netns/cni-1"
        );
        assert_eq!(spec["linux"]["maskedPaths"], json!(MASKED_PATHS));
        assert_eq!(spec["linux"]["readonlyPaths"], json!(READONLY_PATHS));
        assert_eq!(
            spec["linux"]["resources"]["devices"][0],
            json!({"allow": false, "access": "rwm"})
        );
        assert_eq!(spec["linux"]["resources"]["cpu"], json!({"shares": 2}));
        assert!(spec["linux"]["resources"].get("memory").is_none());
        let dests: Vec<&str> = spec["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .filter_map(|m| m["destination"].as_str())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/dev/shm"
            ]
        );
    }

    #[test]
    fn host_namespaces_drop_entries_and_hostname() {
        let p = pod(json!({"metadata": {"name": "h", "uid": "u"},
            "spec": {"hostNetwork": true, "hostPID": true, "hostIPC": true,
                     "containers": [{"name": "c", "image": "x"}]}}));
        let spec = spec_of(&p, &busybox(), vec![]).expect("spec");
        assert_eq!(spec["linux"]["namespaces"], json!([{"type": "mount"}]));
        assert!(spec.get("hostname").is_none());
        assert!(spec["process"]["env"]
            .as_array()
            .expect("env")
            .contains(&json!("HOSTNAME=node1")));
    }

    #[test]
    fn cgroup_v2_hosts_get_a_cgroup_namespace() {
        let p = simple(json!({"name": "c", "image": "x"}));
        let container = &p.spec.as_ref().expect("spec").containers[0];
        let h = HostFacts {
            cgroup_v2: true,
            ..host()
        };
        let spec = build(&SpecInput {
            pod: &p,
            container,
            image: &busybox(),
            env: vec![],
            netns: Path::new("/run/netns/x"),
            mounts: vec![],
            cgroup_parent: "/cairn/podabc/".into(),
            container_id: "c2",
            rootfs_image_users: None,
            host: &h,
        })
        .expect("spec");
        assert!(spec["linux"]["namespaces"]
            .as_array()
            .expect("ns")
            .contains(&json!({"type": "cgroup"})));
        assert_eq!(spec["linux"]["cgroupsPath"], "/cairn/podabc/c2");
    }

    #[test]
    fn resources_become_cgroup_limits() {
        let p = simple(json!({"name": "c", "image": "x", "resources": {
            "requests": {"cpu": "250m", "memory": "64Mi"},
            "limits": {"cpu": "1500m", "memory": "128Mi"}}}));
        let spec = spec_of(&p, &busybox(), vec![]).expect("spec");
        let res = &spec["linux"]["resources"];
        assert_eq!(
            res["cpu"],
            json!({"shares": 256, "quota": 150000, "period": 100000})
        );
        assert_eq!(res["memory"], json!({"limit": 134217728}));
        // Burstable: 1000 - 1000*64Mi/8Gi = 993.
        assert_eq!(spec["process"]["oomScoreAdj"], 993);
    }

    #[test]
    fn cpu_limit_alone_sets_shares_and_tiny_limits_get_the_minimum_quota() {
        let p = simple(json!({"name": "c", "image": "x", "resources": {
            "limits": {"cpu": "5m", "memory": "1Gi"}}}));
        let spec = spec_of(&p, &busybox(), vec![]).expect("spec");
        let res = &spec["linux"]["resources"];
        assert_eq!(res["cpu"]["quota"], 1000);
        assert_eq!(res["cpu"]["shares"], 5);
        assert_eq!(spec["process"]["oomScoreAdj"], -997);
        assert_eq!(qos_class(&p), "Guaranteed");
        let p = simple(json!({"name": "c", "image": "x", "resources": {
            "limits": {"cpu": "nonsense"}}}));
        assert!(matches!(
            spec_of(&p, &busybox(), vec![]),
            Err(SpecError::InvalidQuantity { .. })
        ));
    }

    #[test]
    fn cpu_shares_formula() {
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_shares(1), 2);
        assert_eq!(cpu_shares(100), 102);
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(1_000_000), MAX_CPU_SHARES);
    }

    #[test]
    fn qos_classes() {
        let best = simple(json!({"name": "c", "image": "x"}));
        assert_eq!(qos_class(&best), "BestEffort");
        let burst = simple(json!({"name": "c", "image": "x",
            "resources": {"requests": {"memory": "10Mi"}}}));
        assert_eq!(qos_class(&burst), "Burstable");
        let unequal = simple(json!({"name": "c", "image": "x", "resources": {
            "requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}}));
        assert_eq!(qos_class(&unequal), "Burstable");
    }

    #[test]
    fn security_context_users_and_groups() {
        let p = pod(json!({"metadata": {"name": "s", "uid": "u"}, "spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 2000,
                                "supplementalGroups": [3000, 2000], "fsGroup": 4000},
            "containers": [{"name": "c", "image": "x",
                "securityContext": {"runAsUser": 1001}}]}}));
        let spec = spec_of(&p, &busybox(), vec![]).expect("spec");
        assert_eq!(
            spec["process"]["user"],
            json!({"uid": 1001, "gid": 2000, "additionalGids": [2000, 3000, 4000]})
        );
    }

    #[test]
    fn image_user_names_resolve_from_rootfs() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("etc")).expect("etc");
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:33:44:web:/var/www:/bin/false\n",
        )
        .expect("passwd");
        std::fs::write(
            root.path().join("etc/group"),
            "root:x:0:\nwww:x:44:\nstaff:x:50:web,other\nadm:x:4:\n",
        )
        .expect("group");
        let p = simple(json!({"name": "c", "image": "x"}));
        let cases = [
            (
                "web",
                json!({"uid": 33, "gid": 44, "additionalGids": [44, 50]}),
            ),
            (
                "web:adm",
                json!({"uid": 33, "gid": 4, "additionalGids": [4, 50]}),
            ),
            (
                "33",
                json!({"uid": 33, "gid": 44, "additionalGids": [44, 50]}),
            ),
            (
                "1234:77",
                json!({"uid": 1234, "gid": 77, "additionalGids": [77]}),
            ),
        ];
        for (user, want) in cases {
            let image = ImageConfig {
                user: user.into(),
                ..busybox()
            };
            let spec = spec_with(&p, &image, vec![], Some(root.path()), vec![]).expect("spec");
            assert_eq!(spec["process"]["user"], want, "user {user}");
        }
        let image = ImageConfig {
            user: "nobody".into(),
            ..busybox()
        };
        let err = spec_with(&p, &image, vec![], Some(root.path()), vec![]).expect_err("unknown");
        assert!(
            matches!(err, SpecError::UnknownUser(ref u) if u == "nobody"),
            "{err}"
        );
        assert!(matches!(
            spec_with(&p, &image, vec![], None, vec![]),
            Err(SpecError::UnknownUser(_))
        ));
    }

    #[test]
    fn run_as_non_root_is_enforced() {
        let p = pod(json!({"metadata": {"name": "s", "uid": "u"}, "spec": {
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "c", "image": "x"}]}}));
        assert!(matches!(
            spec_of(&p, &busybox(), vec![]),
            Err(SpecError::RunsAsRoot)
        ));
        let named = ImageConfig {
            user: "web".into(),
            ..busybox()
        };
        assert!(matches!(
            spec_of(&p, &named, vec![]),
            Err(SpecError::NonNumericUser(_))
        ));
        let numeric = ImageConfig {
            user: "1000".into(),
            ..busybox()
        };
        assert_eq!(
            spec_of(&p, &numeric, vec![]).expect("spec")["process"]["user"]["uid"],
            1000
        );
    }

    #[test]
    fn capabilities_add_and_drop_like_containerd() {
        let caps_for = |add: Value, drop: Value| -> Vec<String> {
            let p = simple(json!({"name": "c", "image": "x",
                "securityContext": {"capabilities": {"add": add, "drop": drop}}}));
            let spec = spec_of(&p, &busybox(), vec![]).expect("spec");
            serde_json::from_value(spec["process"]["capabilities"]["effective"].clone())
                .expect("caps")
        };
        let caps = caps_for(json!(["NET_ADMIN"]), json!(["net_raw", "CAP_KILL"]));
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        assert!(!caps.contains(&"CAP_KILL".to_string()));
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() - 1);
        assert_eq!(
            caps_for(json!(["NET_BIND_SERVICE"]), json!(["ALL"])),
            ["CAP_NET_BIND_SERVICE"]
        );
        let all_but_chown = caps_for(json!(["ALL"]), json!(["CHOWN"]));
        assert_eq!(all_but_chown.len(), ALL_CAPABILITIES.len() - 1);
        assert!(caps_for(json!([]), json!(["ALL"])).is_empty());
    }

    #[test]
    fn privileged_gets_everything() {
        let p = simple(json!({"name": "c", "image": "x",
            "securityContext": {"privileged": true, "allowPrivilegeEscalation": false}}));
        let spec = spec_of(&p, &busybox(), vec![]).expect("spec");
        assert_eq!(
            spec["process"]["capabilities"]["bounding"],
            json!(ALL_CAPABILITIES)
        );
        assert!(spec["linux"].get("maskedPaths").is_none());
        assert!(spec["linux"].get("readonlyPaths").is_none());
        assert_eq!(
            spec["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
        assert_eq!(spec["process"]["noNewPrivileges"], false);
        let devices = spec["linux"]["devices"].as_array().expect("devices");
        assert!(devices.iter().any(|d| d["path"] == "/dev/null"));
        let sys = spec["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["destination"] == "/sys")
            .expect("sys mount");
        assert!(sys["options"]
            .as_array()
            .expect("opts")
            .contains(&json!("rw")));
    }

    #[test]
    fn read_only_root_no_new_privs_and_sysctls() {
        let p = pod(json!({"metadata": {"name": "s", "uid": "u"}, "spec": {
            "securityContext": {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
            "containers": [{"name": "c", "image": "x", "workingDir": "/work",
                "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false}}]}}));
        let spec = spec_of(&p, &busybox(), vec![]).expect("spec");
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["process"]["cwd"], "/work");
        assert_eq!(
            spec["linux"]["sysctl"],
            json!({"net.ipv4.ip_unprivileged_port_start": "0"})
        );
    }

    #[test]
    fn given_mounts_are_binds_and_replace_defaults() {
        let p = simple(json!({"name": "c", "image": "x"}));
        let mounts = vec![
            MountSpec {
                destination: "/data/sub".into(),
                source: "/var/lib/x/sub".into(),
                read_only: false,
                kind: MountKind::Bind,
            },
            MountSpec {
                destination: "/data".into(),
                source: "/var/lib/x".into(),
                read_only: true,
                kind: MountKind::Bind,
            },
            MountSpec {
                destination: "/dev/shm".into(),
                source: "/run/cairn/pods/abc/shm".into(),
                read_only: false,
                kind: MountKind::Bind,
            },
        ];
        let spec = spec_with(&p, &busybox(), vec![], None, mounts).expect("spec");
        let all = spec["mounts"].as_array().expect("mounts");
        let shm: Vec<&Value> = all
            .iter()
            .filter(|m| m["destination"] == "/dev/shm")
            .collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(shm[0]["type"], "bind");
        let pos = |dest: &str| {
            all.iter()
                .position(|m| m["destination"] == dest)
                .expect(dest)
        };
        assert!(pos("/data") < pos("/data/sub"), "parents mount first");
        assert_eq!(
            all[pos("/data")],
            json!({"destination": "/data", "type": "bind", "source": "/var/lib/x",
                   "options": ["rbind", "rprivate", "ro"]})
        );
        assert_eq!(all[pos("/data/sub")]["options"][2], "rw");
    }

    #[test]
    fn long_pod_names_make_valid_hostnames() {
        let name = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        let p = pod(json!({"metadata": {"name": name}, "spec": {"containers": []}}));
        assert_eq!(pod_hostname(&p), "a".repeat(62));
        let p = pod(
            json!({"metadata": {"name": "x"}, "spec": {"hostname": "custom", "containers": []}}),
        );
        assert_eq!(pod_hostname(&p), "custom");
    }

    #[test]
    fn exec_process_keeps_identity_and_swaps_args() {
        let p = simple(json!({"name": "c", "image": "x", "tty": true,
            "securityContext": {"runAsUser": 5}}));
        let spec = spec_of(&p, &busybox(), kv(&[("A", "1")])).expect("spec");
        let exec = exec_process(&spec, vec!["ls".into(), "-l".into()], false);
        assert_eq!(exec["args"], json!(["ls", "-l"]));
        assert_eq!(exec["terminal"], false);
        assert_eq!(exec["user"], spec["process"]["user"]);
        assert_eq!(exec["env"], spec["process"]["env"]);
        assert_eq!(exec["capabilities"], spec["process"]["capabilities"]);
        assert_eq!(spec["process"]["terminal"], true);
    }

    /// A runc container run from a built spec, torn down (container, netns, cgroups) on drop.
    struct RuncRun {
        id: String,
        netns: String,
        cgroup_parent: String,
    }

    impl Drop for RuncRun {
        fn drop(&mut self) {
            let _ = std::process::Command::new("runc")
                .args(["delete", "-f", &self.id])
                .output();
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &self.netns])
                .output();
            let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
                return;
            };
            let parent = self.cgroup_parent.trim_start_matches('/');
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join(parent));
            }
            let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(parent));
        }
    }

    /// Runs `p`'s first container under runc from the spec [`build`] makes (with a fresh
    /// network namespace and a busybox rootfs) and returns its stdout.
    fn run_in_runc(tag: &str, p: &Pod, image: &ImageConfig, mounts: Vec<MountSpec>) -> String {
        let pid = std::process::id();
        let run = RuncRun {
            id: format!("cairn-spec-{tag}-{pid}"),
            netns: format!("cairn-spec-{tag}-{pid}"),
            cgroup_parent: format!("/cairn-spec-{tag}-{pid}"),
        };
        let added = std::process::Command::new("ip")
            .args(["netns", "add", &run.netns])
            .status()
            .expect("ip netns add");
        assert!(added.success());

        let bundle = tempfile::tempdir().expect("bundle");
        let rootfs = bundle.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("bin");
        std::fs::create_dir_all(rootfs.join("etc")).expect("etc");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox");
        for applet in ["sh", "id", "cat", "hostname", "echo", "grep", "ip", "ls"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet");
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            rootfs.join("etc/group"),
            "root:x:0:\napp:x:1000:\nextra:x:1500:app\n",
        )
        .expect("group");

        let container = &p.spec.as_ref().expect("spec").containers[0];
        let netns_path = PathBuf::from(format!("/var/run/netns/{}", run.netns));
        let spec = build(&SpecInput {
            pod: p,
            container,
            image,
            env: kv(&[("GREETING", "hello $(POD)")]),
            netns: &netns_path,
            mounts,
            cgroup_parent: run.cgroup_parent.clone(),
            container_id: &run.id,
            rootfs_image_users: Some(&rootfs),
            host: &HostFacts::detect(),
        })
        .expect("spec");
        std::fs::write(
            bundle.path().join("config.json"),
            serde_json::to_vec_pretty(&spec).expect("json"),
        )
        .expect("config.json");

        let out = std::process::Command::new("runc")
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(&run.id)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("runc run");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "runc failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The spec is what runc really runs: user, groups, env, args, mounts, read-only root,
    /// memory limit and the pod's network namespace all take effect.
    #[test]
    fn runc_runs_the_built_spec() {
        let data = tempfile::tempdir().expect("data");
        std::fs::write(data.path().join("msg"), "from the volume\n").expect("msg");
        let p = pod(
            json!({"metadata": {"name": "runc-pod", "uid": "u"}, "spec": {"containers": [{
            "name": "c", "image": "busybox",
            "command": ["sh", "-c"],
            "args": ["id -u; id -G; echo \"$GREETING\"; cat /data/msg; hostname; \
                      (echo x > /probe) 2>/dev/null && echo writable || echo readonly; \
                      cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
                      ip -o link | grep -c ': '"],
            "resources": {"limits": {"memory": "96Mi", "cpu": "500m"}},
            "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false}}]}}),
        );
        let image = ImageConfig {
            user: "app".into(),
            ..busybox()
        };
        let mounts = vec![MountSpec {
            destination: "/data".into(),
            source: data.path().to_path_buf(),
            read_only: true,
            kind: MountKind::Bind,
        }];
        let stdout = run_in_runc("plain", &p, &image, mounts);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines,
            [
                "1000",
                "1000 1500",
                "hello $(POD)",
                "from the volume",
                "runc-pod",
                "readonly",
                "100663296",
                "1"
            ]
        );
    }

    /// Capability drops reach the process; privileged containers see the host's devices.
    #[test]
    fn runc_applies_capabilities_and_privilege() {
        let script = "grep CapEff /proc/self/status; ls /dev | grep -c .";
        let dropped = pod(
            json!({"metadata": {"name": "caps", "uid": "u"}, "spec": {"containers": [{
            "name": "c", "image": "busybox", "command": ["sh", "-c", script],
            "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]}}),
        );
        let out = run_in_runc("caps", &dropped, &busybox(), vec![]);
        let mut lines = out.lines();
        assert_eq!(
            lines
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>()),
            Some(vec!["CapEff:", "0000000000000400"]),
            "only CAP_NET_BIND_SERVICE (bit 10): {out}"
        );
        let plain_devices: usize = lines.next().and_then(|l| l.parse().ok()).expect("count");

        let privileged = pod(
            json!({"metadata": {"name": "priv", "uid": "u"}, "spec": {"containers": [{
            "name": "c", "image": "busybox", "command": ["sh", "-c", script],
            "securityContext": {"privileged": true}}]}}),
        );
        let out = run_in_runc("priv", &privileged, &busybox(), vec![]);
        let mut lines = out.lines();
        let cap_eff = lines.next().unwrap_or_default().to_string();
        assert!(!cap_eff.ends_with("0000000000000000"), "{cap_eff}");
        let priv_devices: usize = lines.next().and_then(|l| l.parse().ok()).expect("count");
        assert!(
            priv_devices > plain_devices,
            "privileged sees host devices: {priv_devices} vs {plain_devices}"
        );
    }
}
