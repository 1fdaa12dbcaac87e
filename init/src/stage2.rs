//! Stage 2, on the read-only root: writable places, data partition, configuration,
//! hostname, network, services, the READY line, and a clean end.

use crate::config::{self, Config};
use crate::supervisor::{Output, ServiceSpec, Shutdown, Supervisor};
use crate::trial::TrialGate;
use crate::{data, info, log, modules, net, sys};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const CONTAINERD_SOCK: &str = "/run/containerd/containerd.sock";
const PERSISTED_CONFIG: &str = "/var/lib/cairn/cairn.toml";
const BOOT_CONFIG: &str = "/boot/cairn.toml";
/// Modules stage 2 loads from the root (the board's `root.modules`).
const LATE_MODULES: &str = "/etc/cairn/modules";
const SERVER_DATA_DIR: &str = "/var/lib/cairn/server";
const SERVER_HEALTH_SOCK: &str = "/var/lib/cairn/server/health.sock";
const SERVER_KUBECONFIG: &str = "/etc/cairn/cairn.yaml";
const KUBECONFIG_PORT: &str = "io.cairn.kubeconfig";
const DEFAULT_HOSTNAME: &str = "cairn";
/// Written by `cairn update` (runtime/src/update): what `reboot(2)` is told.
const REBOOT_ARGUMENT_FILE: &str = "/run/cairn/reboot-argument";

pub fn run(stage1_marks: &str) -> ! {
    let start_ms = log::pid1_start_ms(stage1_marks);
    let stage2_ms = log::boot_ms();
    sys::ctrl_alt_del_to_signal();
    let mut mounted: Vec<PathBuf> = Vec::new();
    if let Err(e) = early_mounts(&mut mounted) {
        info!("{e}");
    }
    let mut sup = match Supervisor::new(PathBuf::from("/var/log/cairn")) {
        Ok(s) => s,
        Err(e) => {
            info!("cannot set up signal handling: {e}; rebooting");
            emergency_reboot();
        }
    };
    match data::mount(Path::new("/var")) {
        Ok(()) => mounted.push("/var".into()),
        Err(e) => {
            info!("data partition: {e}; /var is in memory this boot and nothing persists");
            match sys::mount(
                "tmpfs",
                Path::new("/var"),
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV,
                Some("mode=0755"),
            ) {
                Ok(()) => mounted.push("/var".into()),
                Err(e) => info!("{e}"),
            }
        }
    }
    let data_ms = log::boot_ms();
    prepare_var();
    match overlay_etc() {
        Ok(()) => mounted.push("/etc".into()),
        Err(e) => info!("{e}; /etc stays read-only"),
    }
    let containerd_ms = log::boot_ms();
    sup.add(ServiceSpec {
        name: "containerd".into(),
        program: "/usr/bin/containerd".into(),
        args: vec!["--config".into(), "/etc/containerd/config.toml".into()],
        output: Output::Logged,
    });
    info!(
        "timing: {} stage2_start_ms={stage2_ms} data_mounted_ms={data_ms} containerd_spawn_ms={containerd_ms} init_work_ms={}",
        if stage1_marks.is_empty() { format!("pid1_start_ms={start_ms}") } else { stage1_marks.to_string() },
        containerd_ms.saturating_sub(start_ms)
    );

    // Drivers the root does not need, the boot partition, configuration and DHCP can take
    // seconds under emulation: they run beside containerd's start-up.
    let (node_tx, node_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = node_tx.send(bring_up_node());
    });

    let mut role: Option<Role> = None;
    let mut gate: Option<TrialGate> = None;
    let mut ready = false;
    let shutdown = loop {
        if let Some(req) = sup.tick(Duration::from_millis(if ready { 1000 } else { 50 })) {
            break req;
        }
        if role.is_none() {
            if let Ok(node) = node_rx.try_recv() {
                if node.boot_mounted {
                    mounted.push("/boot".into());
                }
                start_node_services(&mut sup, &node.config);
                role = Some(Role::of(&node.config));
                gate = TrialGate::start(booted_slot(), health_timeout(&node.config));
            }
        }
        if let Some(role) = &role {
            if !ready && is_ready(&sup, role) {
                ready = true;
                if let Some(g) = gate.as_mut() {
                    g.healthy();
                }
                announce_ready();
                if matches!(role, Role::Server { .. }) {
                    publish_kubeconfig();
                }
            }
            if !ready && gate.as_mut().is_some_and(TrialGate::expired) {
                break Shutdown::Reboot;
            }
        }
    };
    finish(&mut sup, &mounted, shutdown)
}

/// What the background bring-up learned.
struct Node {
    config: Config,
    boot_mounted: bool,
}

/// What this machine runs, and so what "ready" means for it.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    None,
    Agent,
    /// `cairn server`; `node` is the name its embedded agent registers, unless it runs
    /// with `--disable-agent`.
    Server {
        node: Option<String>,
    },
}

impl Role {
    fn of(cfg: &Config) -> Role {
        match cfg.runtime.role.as_str() {
            "none" => Role::None,
            "server" => {
                let args = &cfg.runtime.args;
                let node = if args.iter().any(|a| a == "--disable-agent") {
                    None
                } else {
                    Some(node_name(args, cfg.hostname.as_deref()))
                };
                Role::Server { node }
            }
            _ => Role::Agent,
        }
    }
}

/// The name the embedded agent registers: `--node-name` if given, else the hostname (in
/// lower case, as Kubernetes node names are).
fn node_name(args: &[String], hostname: Option<&str>) -> String {
    let mut given = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--node-name" {
            given = it.next().cloned();
        } else if let Some(v) = a.strip_prefix("--node-name=") {
            given = Some(v.to_string());
        }
    }
    given
        .unwrap_or_else(|| hostname.unwrap_or(DEFAULT_HOSTNAME).to_string())
        .to_ascii_lowercase()
}

/// The request line PID 1 sends to the server's health socket.
fn readiness_request(node: Option<&str>) -> String {
    match node {
        Some(n) => format!("GET /readyz?node={n} HTTP/1.0\r\n\r\n"),
        None => "GET /readyz HTTP/1.0\r\n\r\n".to_string(),
    }
}

/// Turns on the cgroup v2 controllers pods are limited with, for the cgroups below the root
/// (containerd's and the pods'). Each is written alone: one the kernel lacks must not keep
/// the others off.
fn enable_cgroup_controllers() {
    let root = Path::new("/sys/fs/cgroup");
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let mut enabled = Vec::new();
    for c in ["cpuset", "cpu", "io", "memory", "pids"] {
        if !available.split_whitespace().any(|a| a == c) {
            continue;
        }
        match std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}")) {
            Ok(()) => enabled.push(c),
            Err(e) => info!("cgroup controller {c}: {e}"),
        }
    }
    info!("cgroup controllers for pods: {}", enabled.join(" "));
}

/// Late drivers, boot partition, configuration, hostname and network.
fn bring_up_node() -> Node {
    enable_cgroup_controllers();
    let late = modules::read_list(Path::new(LATE_MODULES));
    let started = log::boot_ms();
    let n = modules::load(&modules::module_dir(Path::new("/")), &late, c"");
    info!(
        "loaded {n} more kernel modules in {} ms",
        log::boot_ms().saturating_sub(started)
    );
    let boot_mounted = mount_boot_partition();
    let config = load_config();
    let hostname = config
        .hostname
        .clone()
        .unwrap_or_else(|| DEFAULT_HOSTNAME.into());
    if let Err(e) = sys::sethostname(&hostname) {
        info!("{e}");
    }
    let _ = std::fs::write("/etc/hostname", format!("{hostname}\n"));
    let summary = bring_up_network(
        network_config(&config),
        config.network.interface.clone(),
        &hostname,
    );
    info!("{summary}");
    Node {
        config,
        boot_mounted,
    }
}

/// The console shell and the runtime, once configuration and network are known.
fn start_node_services(sup: &mut Supervisor, cfg: &Config) {
    if cfg.console.shell {
        if let Some(tty) = console_device() {
            sup.add(ServiceSpec {
                name: "console-shell".into(),
                program: "/bin/sh".into(),
                args: vec!["-l".into()],
                output: Output::Terminal(tty),
            });
        }
    }
    let role = cfg.runtime.role.as_str();
    if role == "none" {
        return;
    }
    let mut args = vec![role.to_string()];
    if role == "server" {
        args.extend(["--data-dir".into(), SERVER_DATA_DIR.into()]);
    }
    args.extend(cfg.runtime.args.iter().cloned());
    sup.add(ServiceSpec {
        name: "cairn".into(),
        program: "/usr/bin/cairn".into(),
        args,
        output: Output::Logged,
    });
}

/// The slot the bootloader started (`cairn.slot=` on the kernel command line).
fn booted_slot() -> cairn_update::Slot {
    cairn_update::Slot::from_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
        .and_then(Result::ok)
        .unwrap_or(cairn_update::Slot::A)
}

fn health_timeout(cfg: &Config) -> Duration {
    crate::trial::parse_duration(&cfg.update.health_timeout).unwrap_or_else(|| {
        info!(
            "update.health_timeout {:?}: use seconds or a number with s, m or h; using 5m",
            cfg.update.health_timeout
        );
        Duration::from_secs(300)
    })
}

fn announce_ready() {
    let slot = booted_slot();
    let version = std::fs::read_to_string("/etc/cairn/version").unwrap_or_default();
    info!("init rss_kib={}", rss_kib());
    println!(
        "CAIRN READY slot={slot} boot_ms={} version={}",
        log::boot_ms(),
        version.trim()
    );
    let _ = std::io::stdout().flush();
}

fn early_mounts(mounted: &mut Vec<PathBuf>) -> Result<(), sys::SysError> {
    sys::mount_kernel_filesystems(Path::new("/"))?;
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV;
    let _ = std::fs::create_dir_all("/dev/pts");
    let _ = std::fs::create_dir_all("/dev/shm");
    for (src, dir, fs, flags, data) in [
        ("tmpfs", "/run", "tmpfs", nosuid, Some("mode=0755")),
        ("tmpfs", "/tmp", "tmpfs", nosuid, Some("mode=1777")),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("gid=5,mode=620,ptmxmode=000"),
        ),
        ("tmpfs", "/dev/shm", "tmpfs", nosuid, Some("mode=1777")),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid | libc::MS_NOEXEC,
            Some("nsdelegate"),
        ),
    ] {
        let target = Path::new(dir);
        if sys::is_mountpoint(target) {
            continue;
        }
        sys::mount(src, target, fs, flags, data)?;
        mounted.push(target.to_path_buf());
    }
    Ok(())
}

/// The directories services expect on the (possibly fresh) data partition.
fn prepare_var() {
    for d in [
        "/var/lib/cairn",
        "/var/lib/containerd",
        "/var/log/cairn",
        "/var/lib/cairn/etc/upper",
        "/var/lib/cairn/etc/work",
        "/var/tmp",
        "/run/containerd",
    ] {
        if let Err(e) = std::fs::create_dir_all(d) {
            info!("create {d}: {e}");
        }
    }
}

/// /etc stays the image's, with local changes in an overlay kept on the data partition.
fn overlay_etc() -> Result<(), sys::SysError> {
    sys::mount(
        "overlay",
        Path::new("/etc"),
        "overlay",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("lowerdir=/etc,upperdir=/var/lib/cairn/etc/upper,workdir=/var/lib/cairn/etc/work"),
    )
}

fn mount_boot_partition() -> bool {
    let Some(part) = cairn_update::blockdev::find_by_label(Path::new("/sys"), "boot") else {
        info!("no boot partition found: using the persisted configuration");
        return false;
    };
    repair_boot_partition(&part.dev());
    match sys::mount(
        &part.dev().to_string_lossy(),
        Path::new("/boot"),
        "vfat",
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("umask=0077"),
    ) {
        Ok(()) => true,
        Err(e) => {
            info!("{e}");
            false
        }
    }
}

/// FAT has no journal: power lost while an update wrote the boot partition can leave lost
/// cluster chains, which Linux answers by making the filesystem read-only. fsck.fat repairs
/// them before the mount (what systemd-fsck does for an ESP). The active slot's files were
/// never being written, so the repair cannot cost what boots this machine.
fn repair_boot_partition(dev: &Path) {
    const FSCK: &str = "/usr/sbin/fsck.fat";
    if !Path::new(FSCK).exists() {
        return;
    }
    // PID 1's reaper may collect the exit status first, so the output tells what happened.
    let child = std::process::Command::new(FSCK)
        .arg("-a")
        .arg("-w")
        .arg(dev)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return info!("{FSCK}: {e}"),
    };
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    let _ = child.wait();
    // A clean check prints only the version banner and the summary line.
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("fsck.fat ") && !l.contains(" files, "))
        .collect();
    if !said.is_empty() {
        info!(
            "boot partition {}: fsck.fat: {}",
            dev.display(),
            said.join(" | ")
        );
    }
}

/// Boot-partition config merged over the persisted one; the result is persisted again so
/// the node keeps its settings when the boot partition copy is removed.
fn load_config() -> Config {
    let mut table = toml::Table::new();
    let persisted = std::fs::read_to_string(PERSISTED_CONFIG).ok();
    if let Some(text) = &persisted {
        match config::parse_table(text, PERSISTED_CONFIG) {
            Ok(t) => table = t,
            Err(e) => info!("ignoring {e}"),
        }
    }
    if let Ok(text) = std::fs::read_to_string(BOOT_CONFIG) {
        match config::parse_table(&text, BOOT_CONFIG) {
            Ok(t) => config::merge(&mut table, t),
            Err(e) => info!("ignoring {e}"),
        }
    }
    // Saved only when it changed, and whole or not at all: a power cut while a boot wrote
    // it in place left a truncated file, which the next boot ignored with everything in it.
    let merged = toml::to_string(&table).unwrap_or_default();
    if persisted.as_deref().unwrap_or_default() != merged {
        if let Err(e) =
            cairn_update::fsutil::replace_file(Path::new(PERSISTED_CONFIG), merged.as_bytes())
        {
            info!("saving {PERSISTED_CONFIG}: {e}");
        }
    }
    match config::from_table(table) {
        Ok(c) => c,
        Err(e) => {
            info!("cairn.toml: {e}; using defaults");
            Config::default()
        }
    }
}

/// The last `console=` on the kernel command line, as a device path.
fn console_device() -> Option<PathBuf> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("console="))
        .next_back()
        .map(|c| Path::new("/dev").join(c.split(',').next().unwrap_or(c)))
}

fn network_config(cfg: &Config) -> net::NetworkConfig {
    match cfg.network.mode.as_str() {
        "off" => net::NetworkConfig::Off,
        "static" => {
            let parsed = cfg.network.address.as_deref().and_then(|a| {
                let (ip, prefix) = a.split_once('/')?;
                Some((ip.parse().ok()?, prefix.parse().ok()?))
            });
            match parsed {
                Some((address, prefix_len)) => net::NetworkConfig::Static(net::StaticConfig {
                    address,
                    prefix_len,
                    gateway: cfg.network.gateway,
                    dns: cfg.network.dns.clone(),
                }),
                None => {
                    info!(
                        "network.address must be like 192.168.1.50/24 in static mode; using DHCP"
                    );
                    net::NetworkConfig::Dhcp
                }
            }
        }
        _ => net::NetworkConfig::Dhcp,
    }
}

fn bring_up_network(cfg: net::NetworkConfig, iface: Option<String>, hostname: &str) -> String {
    if let Err(e) = net::bring_up_loopback() {
        return format!("loopback: {e}");
    }
    if matches!(cfg, net::NetworkConfig::Off) {
        return "network: off".into();
    }
    let iface = match iface
        .map(Ok)
        .unwrap_or_else(|| net::first_ethernet_interface().map(|o| o.unwrap_or_default()))
    {
        Ok(i) if !i.is_empty() => i,
        Ok(_) => return "network: no Ethernet interface".into(),
        Err(e) => return format!("network: {e}"),
    };
    match net::configure(&iface, &cfg, hostname, Duration::from_secs(30)) {
        Ok(Some(lease)) => {
            if let Err(e) = net::write_resolv_conf(Path::new("/run/resolv.conf"), &lease.dns, &[]) {
                info!("resolv.conf: {e}");
            }
            format!(
                "network: {iface} {}/{} gateway {} (DHCP from {})",
                lease.address,
                lease.prefix_len,
                lease
                    .gateway
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "none".into()),
                lease.server
            )
        }
        Ok(None) => {
            if let net::NetworkConfig::Static(s) = &cfg {
                let _ = net::write_resolv_conf(Path::new("/run/resolv.conf"), &s.dns, &[]);
            }
            format!("network: {iface} configured")
        }
        Err(e) => format!("network: {e}"),
    }
}

fn is_ready(sup: &Supervisor, role: &Role) -> bool {
    if !containerd_answers() {
        return false;
    }
    match role {
        Role::None => true,
        Role::Server { node } => server_ready(node.as_deref()),
        Role::Agent => sup
            .uptime_of("cairn")
            .is_some_and(|t| t >= Duration::from_millis(500)),
    }
}

/// `cairn server` answers `/readyz` on a Unix socket in its data directory (plain HTTP:
/// PID 1 has no TLS client and needs no credentials there). With `node`, it answers 200 only
/// once that Node is registered and reports Ready.
fn server_ready(node: Option<&str>) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(SERVER_HEALTH_SOCK) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(readiness_request(node).as_bytes()).is_err() {
        return false;
    }
    let mut status = [0u8; 12];
    s.read_exact(&mut status).is_ok() && is_ok_status(&status)
}

/// Whether an HTTP status line starts with a 200 (`HTTP/1.1 200`).
fn is_ok_status(head: &[u8; 12]) -> bool {
    head.starts_with(b"HTTP/") && head.ends_with(b" 200")
}

/// Hands the admin kubeconfig to the host when it asked for it with a virtio serial port
/// named `io.cairn.kubeconfig` (what `make run` and the QEMU tests do).
fn publish_kubeconfig() {
    let Ok(ports) = std::fs::read_dir("/sys/class/virtio-ports") else {
        return;
    };
    for port in ports.flatten() {
        let name = std::fs::read_to_string(port.path().join("name")).unwrap_or_default();
        if name.trim() != KUBECONFIG_PORT {
            continue;
        }
        let dev = Path::new("/dev").join(port.file_name());
        match std::fs::read(SERVER_KUBECONFIG) {
            Ok(k) => {
                if let Err(e) = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&dev)
                    .and_then(|mut f| f.write_all(&k))
                {
                    info!("{}: {e}", dev.display());
                }
            }
            Err(e) => info!("{SERVER_KUBECONFIG}: {e}"),
        }
    }
}

/// containerd's socket answers when it completes an HTTP/2 handshake (its gRPC server
/// sends SETTINGS), which only happens once its services are registered.
fn containerd_answers() -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(CONTAINERD_SOCK) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS frame
    if s.write_all(&hello).is_err() {
        return false;
    }
    let mut header = [0u8; 9];
    s.read_exact(&mut header).is_ok() && header[3] == 4
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn finish(sup: &mut Supervisor, mounted: &[PathBuf], how: Shutdown) -> ! {
    info!("shutting down ({how:?})");
    // `cairn update` leaves the firmware's argument for a trial boot (Raspberry Pi tryboot);
    // read before /run goes away.
    let reboot_argument = std::fs::read_to_string(REBOOT_ARGUMENT_FILE).ok();
    sup.stop_all(Duration::from_secs(10));
    sys::sync();
    for target in mounted.iter().rev() {
        if let Err(e) = sys::umount(target, 0) {
            // Still busy: make it read-only so nothing is left half-written.
            info!("{e}; remounting read-only");
            let _ = sys::mount("", target, "", libc::MS_REMOUNT | libc::MS_RDONLY, None);
        } else if target == Path::new("/var") {
            info!("data filesystem unmounted cleanly");
        }
    }
    sys::sync();
    if let Some(arg) = reboot_argument.filter(|_| how == Shutdown::Reboot) {
        info!("{}", sys::reboot_with_argument(arg.trim()));
    }
    let cmd = match how {
        Shutdown::Reboot => libc::LINUX_REBOOT_CMD_RESTART,
        Shutdown::Poweroff => libc::LINUX_REBOOT_CMD_POWER_OFF,
        Shutdown::Halt => libc::LINUX_REBOOT_CMD_HALT,
    };
    info!("{}", sys::reboot(cmd));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn emergency_reboot() -> ! {
    let e = sys::reboot(libc::LINUX_REBOOT_CMD_RESTART);
    info!("{e}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        config::from_table(config::parse_table(text, "test").expect("toml")).expect("config")
    }

    #[test]
    fn a_server_waits_for_its_own_node_named_after_the_hostname() {
        assert_eq!(
            Role::of(&cfg("")),
            Role::Server {
                node: Some("cairn".into())
            }
        );
        assert_eq!(
            Role::of(&cfg("hostname = \"Edge-7\"\n")),
            Role::Server {
                node: Some("edge-7".into())
            }
        );
    }

    #[test]
    fn node_name_flag_wins_over_the_hostname() {
        let spaced = "hostname = \"h\"\n[runtime]\nargs = [\"--node-name\", \"n1\"]\n";
        assert_eq!(
            Role::of(&cfg(spaced)),
            Role::Server {
                node: Some("n1".into())
            }
        );
        let joined = "[runtime]\nargs = [\"--node-name=n2\"]\n";
        assert_eq!(
            Role::of(&cfg(joined)),
            Role::Server {
                node: Some("n2".into())
            }
        );
    }

    #[test]
    fn without_an_agent_only_the_server_is_asked() {
        let text = "[runtime]\nargs = [\"--disable-agent\"]\n";
        let role = Role::of(&cfg(text));
        assert_eq!(role, Role::Server { node: None });
        assert_eq!(readiness_request(None), "GET /readyz HTTP/1.0\r\n\r\n");
        assert_eq!(Role::of(&cfg("[runtime]\nrole = \"none\"\n")), Role::None);
        assert_eq!(Role::of(&cfg("[runtime]\nrole = \"agent\"\n")), Role::Agent);
    }

    #[test]
    fn the_request_names_the_node() {
        assert_eq!(
            readiness_request(Some("edge-1")),
            "GET /readyz?node=edge-1 HTTP/1.0\r\n\r\n"
        );
    }

    #[test]
    fn only_a_200_status_is_ready() {
        assert!(is_ok_status(b"HTTP/1.1 200"));
        assert!(is_ok_status(b"HTTP/1.0 200"));
        assert!(!is_ok_status(b"HTTP/1.1 503"));
        assert!(!is_ok_status(b"HTTP/1.1 400"));
        assert!(!is_ok_status(b"xxxxxxxx 200"));
    }
}
