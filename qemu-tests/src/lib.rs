//! Boots real cairn images under QEMU (software emulation; KVM is never required) and drives
//! them from outside: serial console, QEMU monitor, forwarded API port, hard power cuts.

use anyhow::{bail, Context, Result};
use cairn_image::board::{Board, Qemu};
use serde::Deserialize;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod fileserver;
pub use fileserver::FileServer;

/// The repository root (qemu-tests/..).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[derive(Debug, Deserialize)]
struct ManifestArtifact {
    file: String,
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub version: String,
    pub root_squashfs_bytes: u64,
    pub image_bytes: u64,
    pub init_bytes: u64,
    artifacts: Vec<ManifestArtifact>,
}

/// A built board: its QEMU settings and the artifacts under out/<board>/.
#[derive(Debug, Clone)]
pub struct BoardImage {
    pub name: String,
    pub qemu: Qemu,
    pub out_dir: PathBuf,
    pub image: PathBuf,
    pub version: String,
}

impl BoardImage {
    pub fn load(name: &str) -> Result<BoardImage> {
        let root = repo_root();
        let out = std::env::var_os("CAIRN_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("out"));
        let board_path = root.join("boards").join(format!("{name}.toml"));
        let board = Board::load(&board_path)?;
        let qemu = board
            .qemu
            .with_context(|| format!("{}: no [qemu] section", board_path.display()))?;
        let out_dir = out.join(name);
        let manifest = Self::manifest_in(&out_dir)?;
        let image = manifest
            .artifacts
            .iter()
            .find(|a| a.file.ends_with(".img"))
            .map(|a| out_dir.join(&a.file))
            .context("manifest lists no .img")?;
        Ok(BoardImage {
            name: name.to_string(),
            qemu,
            out_dir,
            image,
            version: manifest.version,
        })
    }

    pub fn manifest(&self) -> Result<Manifest> {
        Self::manifest_in(&self.out_dir)
    }

    fn manifest_in(out_dir: &Path) -> Result<Manifest> {
        let path = out_dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is missing: build the image first (make image BOARD=...)",
                path.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    fn firmware(&self, file: &str) -> PathBuf {
        self.out_dir.join("firmware").join(file)
    }
}

/// A disk for one test: a copy-on-write overlay over the built image, bigger than the
/// image so first boot grows the data partition.
pub struct Disk {
    pub dir: PathBuf,
    pub path: PathBuf,
    pub vars: Option<PathBuf>,
}

impl Disk {
    pub fn new(board: &BoardImage, test: &str, size_gib: u32) -> Result<Disk> {
        let dir = repo_root()
            .join("target/qemu-tests")
            .join(format!("{}-{test}", board.name));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("disk.qcow2");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&board.image)
            .arg(&path)
            .arg(format!("{size_gib}G"))
            .status()
            .context("running qemu-img (make deps installs it)")?;
        if !status.success() {
            bail!("qemu-img could not create {}", path.display());
        }
        let vars = match &board.qemu.pflash_vars {
            Some(v) => {
                let copy = dir.join("efivars.fd");
                std::fs::copy(board.firmware(v), &copy)?;
                Some(copy)
            }
            None => None,
        };
        Ok(Disk { dir, path, vars })
    }
}

/// Free TCP port on the loopback interface for forwarding the API.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The QEMU command line for a board and disk: the one place it is built, for tests,
/// benchmarks and `make run`.
///
/// `kubeconfig_out` receives what the node writes to its `io.cairn.kubeconfig` virtio serial
/// port: the admin kubeconfig, once the server is ready.
pub fn qemu_command(
    board: &BoardImage,
    disk: &Path,
    vars: Option<&Path>,
    api_port: u16,
    kubeconfig_out: &Path,
) -> Command {
    let q = &board.qemu;
    let mut cmd = Command::new(&q.binary);
    cmd.args(&q.machine)
        .args(["-m", &q.memory_mib.to_string(), "-smp", &q.cpus.to_string()])
        .args(["-accel", "tcg"]);
    if let Some(bios) = &q.bios {
        cmd.arg("-bios").arg(board.firmware(bios));
    }
    if let Some(code) = &q.pflash_code {
        let mut arg = std::ffi::OsString::from("if=pflash,format=raw,unit=0,readonly=on,file=");
        arg.push(board.firmware(code));
        cmd.arg("-drive").arg(arg);
        if let Some(v) = vars {
            let mut arg = std::ffi::OsString::from("if=pflash,format=raw,unit=1,file=");
            arg.push(v);
            cmd.arg("-drive").arg(arg);
        }
    }
    let mut drive = std::ffi::OsString::from("if=none,id=disk0,format=qcow2,file=");
    drive.push(disk);
    cmd.arg("-drive")
        .arg(drive)
        .args(["-device", "virtio-blk-pci,drive=disk0"])
        .arg("-netdev")
        .arg(format!(
            "user,id=net0,hostfwd=tcp:127.0.0.1:{api_port}-:6443"
        ))
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .arg("-chardev")
        .arg(format!(
            "file,id=kubeconfig,path={}",
            kubeconfig_out.display()
        ))
        .args(["-device", "virtio-serial-pci,id=vserial0"])
        .args([
            "-device",
            "virtserialport,bus=vserial0.0,chardev=kubeconfig,name=io.cairn.kubeconfig",
        ])
        .args(["-display", "none", "-no-reboot"]);
    cmd
}

/// Turns what the node published into a kubeconfig for this host: the API is reached
/// through the forwarded port on 127.0.0.1 (a name the serving certificate carries).
/// None until the node has written a whole kubeconfig.
pub fn host_kubeconfig(published: &str, api_port: u16) -> Option<String> {
    if !published.contains("current-context") || !published.contains("client-key-data") {
        return None;
    }
    Some(
        published
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("server:") {
                    format!("    server: https://127.0.0.1:{api_port}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect(),
    )
}

/// A running VM with its serial console captured.
pub struct Vm {
    child: Child,
    stdin: ChildStdin,
    serial: Arc<Mutex<String>>,
    /// Set once QEMU's output has ended and every byte of it is in `serial`.
    serial_ended: Arc<AtomicBool>,
    cursor: usize,
    monitor: PathBuf,
    pub api_port: u16,
    commands: u32,
    published: PathBuf,
}

impl Vm {
    pub fn boot(board: &BoardImage, disk: &Disk, log_name: &str) -> Result<Vm> {
        Self::boot_with(board, disk, log_name, &[])
    }

    /// Boots with more read-only raw disks attached after the system disk (`/dev/vdb`, …).
    pub fn boot_with(
        board: &BoardImage,
        disk: &Disk,
        log_name: &str,
        extra_disks: &[PathBuf],
    ) -> Result<Vm> {
        let api_port = free_port()?;
        let monitor = disk.dir.join(format!("{log_name}.monitor"));
        let _ = std::fs::remove_file(&monitor);
        let log_path = disk.dir.join(format!("{log_name}.serial.log"));
        let published = disk.dir.join(format!("{log_name}.kubeconfig.raw"));
        let mut cmd = qemu_command(
            board,
            &disk.path,
            disk.vars.as_deref(),
            api_port,
            &published,
        );
        for (i, extra) in extra_disks.iter().enumerate() {
            let mut drive = std::ffi::OsString::from(format!(
                "if=none,id=extra{i},format=raw,readonly=on,file="
            ));
            drive.push(extra);
            cmd.arg("-drive")
                .arg(drive)
                .args(["-device", &format!("virtio-blk-pci,drive=extra{i}")]);
        }
        cmd.arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .args(["-serial", "stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} (make deps installs it)", board.qemu.binary))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let mut stdout = child.stdout.take().context("no stdout")?;
        let serial = Arc::new(Mutex::new(String::new()));
        let sink = serial.clone();
        let serial_ended = Arc::new(AtomicBool::new(false));
        let ended = serial_ended.clone();
        let mut log = std::fs::File::create(&log_path)?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = log.write_all(&buf[..n]);
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
                }
            }
            ended.store(true, Ordering::Release);
        });
        Ok(Vm {
            child,
            stdin,
            serial,
            serial_ended,
            cursor: 0,
            monitor,
            api_port,
            commands: 0,
            published,
        })
    }

    /// Everything the serial console printed so far.
    pub fn serial(&self) -> String {
        self.serial.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `pattern` appears after the last match; returns the whole line it is on.
    ///
    /// The match counts only once its line has ended: the serial port delivers a line in
    /// pieces, and a caller parsing `CAIRN READY slot=… version=…` must not see half of it.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            // Checked before the serial text is read: once QEMU's output has ended the text
            // is final, and an unterminated last line is as complete as it will get.
            let ended = self.serial_ended.load(Ordering::Acquire);
            let text = self.serial();
            if let Some(pos) = text[self.cursor.min(text.len())..].find(pattern) {
                let at = self.cursor + pos;
                let end = text[at..].find('\n').map(|p| at + p);
                if let Some(end) = end.or(ended.then_some(text.len())) {
                    let line_start = text[..at].rfind('\n').map_or(0, |p| p + 1);
                    self.cursor = at + pattern.len();
                    return Ok(text[line_start..end].to_string());
                }
            }
            if ended {
                let status = match self.child.wait() {
                    Ok(status) => status.to_string(),
                    Err(e) => e.to_string(),
                };
                bail!(
                    "QEMU exited ({status}) before {pattern:?} appeared; serial tail:\n{}",
                    tail(&text[self.cursor.min(text.len())..])
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{pattern:?} did not appear within {timeout:?}; serial tail:\n{}",
                    tail(&text[self.cursor.min(text.len())..])
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a shell command on the serial console; returns (exit status, output).
    ///
    /// The markers around the output are assembled by the shell (`printf '%s_%s'`), so the
    /// terminal's echo of the typed line (possibly wrapped) can never be mistaken for them.
    pub fn sh(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        self.commands += 1;
        let n = self.commands;
        let begin = format!("__CAIRN_BEGIN_{n}\n");
        let end = format!("__CAIRN_END_{n}_");
        let line = format!(
            "printf '%s_%s\\n' __CAIRN_BEGIN {n}; {command}; printf '%s_%s_%s\\n' __CAIRN_END {n} $?\n"
        );
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.flush()?;
        let start_cursor = self.cursor;
        let start = Instant::now();
        loop {
            let text = self.serial();
            let region = &text[start_cursor.min(text.len())..];
            if let Some(b) = region.find(&begin) {
                let out_start = b + begin.len();
                if let Some(e) = region[out_start..].find(&end) {
                    let status_at = out_start + e + end.len();
                    let digits: String = region[status_at..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect();
                    if region[status_at + digits.len()..].starts_with('\n') {
                        let output = region[out_start..out_start + e].to_string();
                        self.cursor = start_cursor + status_at + digits.len();
                        return Ok((digits.parse().unwrap_or(-1), output));
                    }
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "{command:?} did not finish within {timeout:?}; serial tail:\n{}",
                    tail(region)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types a line on the serial console without waiting for anything (a command that
    /// reboots the machine, or one to be interrupted).
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes())?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Waits for the node's admin kubeconfig and writes a host copy beside the disk.
    pub fn kubeconfig(&self, timeout: Duration) -> Result<PathBuf> {
        let start = Instant::now();
        loop {
            let raw = std::fs::read_to_string(&self.published).unwrap_or_default();
            if let Some(k) = host_kubeconfig(&raw, self.api_port) {
                let path = self.published.with_extension("yaml");
                std::fs::write(&path, k)?;
                return Ok(path);
            }
            if start.elapsed() > timeout {
                bail!("the node published no kubeconfig within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends a command to the QEMU monitor (e.g. `sendkey ctrl-alt-delete`).
    pub fn monitor(&self, command: &str) -> Result<()> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.monitor)
            .with_context(|| format!("connecting to the monitor at {}", self.monitor.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = std::io::BufReader::new(s.try_clone()?);
        let mut banner = String::new();
        reader.read_line(&mut banner)?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut echo = String::new();
        let _ = reader.read_line(&mut echo);
        Ok(())
    }

    /// Waits for QEMU to exit by itself (the guest rebooted or powered off; -no-reboot).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "QEMU still running after {timeout:?}; serial tail:\n{}",
            tail(&self.serial())
        )
    }

    /// Pulls the power: no shutdown, no flush.
    pub fn power_cut(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.power_cut();
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Parses `CAIRN READY slot=a boot_ms=1234 version=v` into (slot, boot_ms, version).
pub fn parse_ready(line: &str) -> Option<(String, u64, String)> {
    let rest = &line[line.find("CAIRN READY")? + "CAIRN READY".len()..];
    let mut slot = None;
    let mut ms = None;
    let mut version = None;
    for kv in rest.split_whitespace() {
        match kv.split_once('=') {
            Some(("slot", v)) => slot = Some(v.to_string()),
            Some(("boot_ms", v)) => ms = v.parse().ok(),
            Some(("version", v)) => version = Some(v.to_string()),
            _ => {}
        }
    }
    Some((slot?, ms?, version?))
}

/// A shell line for the node's console that prints the device of a slot's root partition
/// (`/dev/vda3` for slot b), found by its GPT name as init finds it.
pub fn slot_device_shell(slot: &str) -> String {
    format!(
        "for d in /sys/class/block/*; do grep -q PARTNAME=root_{slot}$ $d/uevent && echo /dev/${{d##*/}}; done; true"
    )
}

/// Boot timeout under software emulation, generous for a loaded CI machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_kubeconfig_points_at_the_forwarded_port() {
        let published = "apiVersion: v1\nclusters:\n- cluster:\n    server: https://127.0.0.1:6443\ncurrent-context: cairn\nusers:\n- user:\n    client-key-data: x\n";
        let k = host_kubeconfig(published, 40000).unwrap();
        assert!(k.contains("server: https://127.0.0.1:40000"));
        assert!(host_kubeconfig("apiVersion: v1\n", 1).is_none());
    }

    #[test]
    fn ready_line_parses() {
        let got = parse_ready("junk CAIRN READY slot=b boot_ms=4321 version=0.1.0").unwrap();
        assert_eq!(got, ("b".into(), 4321, "0.1.0".into()));
        assert!(parse_ready("CAIRN READY slot=a").is_none());
    }
}
