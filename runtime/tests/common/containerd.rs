//! A private containerd for agent tests: its own root, state and socket in a short temporary
//! directory, started from the host's /usr/bin/containerd and torn down with everything it
//! left behind (shims, container processes, mounts).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const BUSYBOX: &str = "/bin/busybox";
/// Where the runc shim keeps runc's state unless told otherwise.
const RUNC_ROOT: &str = "/run/containerd/runc";
pub const BUSYBOX_REF: &str = "docker.io/library/busybox:latest";

pub struct TestContainerd {
    pub socket: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
}

impl TestContainerd {
    /// Starts containerd and waits until its socket accepts connections.
    pub fn start() -> Self {
        assert!(
            Path::new(CONTAINERD).exists(),
            "{CONTAINERD} is missing: run 'make deps' (containerd, runc)"
        );
        // Unix socket paths are limited to 108 bytes: keep the directory short.
        let dir = tempfile::Builder::new()
            .prefix("ctd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let d = dir.path();
        let socket = d.join("c.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
        );
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let ctd = TestContainerd { socket, dir, child };
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&ctd.socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "containerd did not open {}: {}",
                ctd.socket.display(),
                ctd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ctd
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("containerd.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// This containerd's shims: pid, namespace and container id from their command line,
    /// which names our socket.
    fn shims(&self) -> Vec<(i32, String, String)> {
        let needle = self.socket.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == self.child.id() as i32 {
                continue;
            }
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = String::from_utf8_lossy(&cmdline)
                .split('\0')
                .map(str::to_string)
                .collect();
            let flag = |name: &str| {
                args.iter()
                    .position(|a| a == name)
                    .and_then(|i| args.get(i + 1))
                    .cloned()
                    .unwrap_or_default()
            };
            if args[0].contains("containerd-shim") && flag("-address") == needle {
                pids.push((pid, flag("-namespace"), flag("-id")));
            }
        }
        pids
    }

    /// Kills `pid` and all its descendants (a shim's containers), children first.
    fn kill_tree(pid: i32) {
        for child in children_of(pid) {
            Self::kill_tree(child);
        }
        // SAFETY: plain kill(2) on a pid this test's containerd started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }

    fn unmount_leftovers(&self) {
        let root = self.dir.path().to_string_lossy().into_owned();
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut points: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&root))
            .map(str::to_string)
            .collect();
        // Deepest first, so nested mounts go before their parents.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            if let Ok(c) = std::ffi::CString::new(p) {
                // SAFETY: valid C string; MNT_DETACH never blocks on busy mounts.
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return kids;
    };
    for e in entries.flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The fields after the parenthesised command: state, then ppid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            kids.push(child);
        }
    }
    kids
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        let shims = self.shims();
        // SAFETY: SIGTERM to the containerd this helper spawned.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (pid, namespace, id) in shims {
            Self::kill_tree(pid);
            // runc keeps its state (and the cgroup) under the shared default root: remove it
            // so a later run can reuse the container id.
            let _ = Command::new("runc")
                .arg("--root")
                .arg(Path::new(RUNC_ROOT).join(&namespace))
                .args(["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.unmount_leftovers();
    }
}

/// The host architecture in OCI terms.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// Builds `docker.io/library/busybox:latest` as an OCI archive from the host's static busybox,
/// in `dir`, and returns its path.
pub fn busybox_archive(dir: &Path) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: run 'make deps' (busybox-static)"
    );
    let rootfs = dir.join("busybox-rootfs");
    cairn_image::oci::busybox_rootfs(Path::new(BUSYBOX), &rootfs).expect("busybox rootfs");
    let out = dir.join("busybox.tar");
    cairn_image::oci::write_archive(
        &rootfs,
        BUSYBOX_REF,
        oci_arch(),
        &cairn_image::oci::ImageConfig::busybox(),
        &out,
    )
    .expect("busybox archive");
    out
}
