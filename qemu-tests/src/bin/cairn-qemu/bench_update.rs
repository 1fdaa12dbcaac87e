//! `cairn-qemu bench-update`: what an A/B update costs on a booted image. The bundle and its
//! root filesystem sit on a read-only ext4 disk attached to the VM, so the install and the
//! baseline (a raw `dd` of the same root to the same slot) read from the same place.

use anyhow::{bail, Context, Result};
use qemu_tests::{parse_ready, BoardImage, Disk, Vm, BOOT_TIMEOUT};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Measured installs and raw writes, alternating.
const ROUNDS: usize = 2;
const SH: Duration = Duration::from_secs(900);

fn find_one(dir: &Path, suffix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("{} (run make update-bundles)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .with_context(|| format!("no *{suffix} in {}", dir.display()))
}

/// An ext4 image holding the bundle and its squashfs, made without mounting anything.
fn payload_disk(dir: &Path, bundle: &Path, squashfs: &Path) -> Result<PathBuf> {
    let content = dir.join("payload");
    let _ = std::fs::remove_dir_all(&content);
    std::fs::create_dir_all(&content)?;
    std::fs::copy(bundle, content.join("update.cairnb"))?;
    std::fs::copy(squashfs, content.join("root.squashfs"))?;
    let size = std::fs::metadata(bundle)?.len() + std::fs::metadata(squashfs)?.len();
    let image = dir.join("payload.ext4");
    let _ = std::fs::remove_file(&image);
    let f = std::fs::File::create(&image)?;
    f.set_len(size + size / 4 + (32 << 20))?;
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image)
        .status()
        .context("mkfs.ext4 (make deps installs e2fsprogs)")?;
    if !status.success() {
        bail!("mkfs.ext4 failed");
    }
    let _ = std::fs::remove_dir_all(&content);
    Ok(image)
}

fn timed(vm: &mut Vm, command: &str) -> Result<f64> {
    vm.sh("sync; echo 3 > /proc/sys/vm/drop_caches", SH)?;
    let start = Instant::now();
    let (code, out) = vm.sh(command, SH)?;
    let secs = start.elapsed().as_secs_f64();
    if code != 0 {
        bail!("{command:?} failed on the node:\n{out}");
    }
    Ok(secs)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(boards: &str, bundles: &Path, out: &str) -> Result<()> {
    let mut results = serde_json::Map::new();
    for name in boards.split_whitespace() {
        let image = BoardImage::load(name)?;
        let dir = bundles.join(name);
        let bundle = find_one(&dir, ".cairnb")?;
        let squashfs = find_one(&dir, ".squashfs")?;
        let disk = Disk::new(&image, "bench-update", 2)?;
        let extra = payload_disk(&disk.dir, &bundle, &squashfs)?;
        eprintln!("cairn-qemu: {name}: booting {}", image.version);
        let mut vm = Vm::boot_with(&image, &disk, "before", std::slice::from_ref(&extra))?;
        vm.wait_for("CAIRN READY", BOOT_TIMEOUT)?;
        vm.sh(
            "mkdir -p /run/payload && mount -o ro /dev/vdb /run/payload",
            SH,
        )?;
        let (_, out) = vm.sh(&qemu_tests::slot_device_shell("b"), SH)?;
        // Service logs share the console: the device is the line that names one.
        let target = out
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("/dev/"))
            .context("no root_b partition on the node")?
            .to_string();
        let (mut install_s, mut raw_s) = (Vec::new(), Vec::new());
        for round in 1..=ROUNDS {
            eprintln!("cairn-qemu: {name}: round {round}/{ROUNDS}: raw dd, then install");
            raw_s.push(timed(
                &mut vm,
                &format!(
                    "dd if=/run/payload/root.squashfs of={target} bs=1M conv=fsync 2>/dev/null"
                ),
            )?);
            install_s.push(timed(
                &mut vm,
                "cairn update install /run/payload/update.cairnb 2>&1",
            )?);
        }
        // The update's reboot, timed from power-on to the commit of the new slot.
        vm.monitor("sendkey ctrl-alt-delete")?;
        vm.wait_exit(Duration::from_secs(120))?;
        drop(vm);
        let start = Instant::now();
        let mut vm = Vm::boot(&image, &disk, "after")?;
        let committed = vm.wait_for("update: slot b committed", BOOT_TIMEOUT)?;
        let reboot_to_commit_ms = start.elapsed().as_millis() as u64;
        let ready = vm.wait_for("CAIRN READY", BOOT_TIMEOUT)?;
        let (slot, boot_ms, version) = parse_ready(&ready).context("READY line")?;
        if slot != "b" {
            bail!("the update did not boot slot b: {committed} / {ready}");
        }
        let payload = std::fs::metadata(&squashfs)?.len();
        let bundle_bytes = std::fs::metadata(&bundle)?.len();
        let image_bytes = std::fs::metadata(&image.image)?.len();
        let (install, raw) = (median(&mut install_s), median(&mut raw_s));
        results.insert(
            name.to_string(),
            serde_json::json!({
                "from_version": image.version,
                "to_version": version,
                "payload_bytes": payload,
                "install_seconds_all": install_s,
                "raw_dd_seconds_all": raw_s,
                "install_mib_per_s": payload as f64 / 1048576.0 / install,
                "raw_dd_mib_per_s": payload as f64 / 1048576.0 / raw,
                "install_to_raw_throughput_ratio": raw / install,
                "bundle_bytes": bundle_bytes,
                "image_bytes": image_bytes,
                "bundle_to_image_ratio": bundle_bytes as f64 / image_bytes as f64,
                "reboot_to_commit_ms": reboot_to_commit_ms,
                "boot_ms_of_new_slot": boot_ms,
                "targets": { "install_to_raw_throughput_ratio": 0.8 }
            }),
        );
        eprintln!(
            "cairn-qemu: {name}: install {install:.1}s vs raw dd {raw:.1}s (ratio {:.2}); reboot to commit {reboot_to_commit_ms} ms",
            raw / install
        );
    }
    if let Some(parent) = Path::new(out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(results))?;
    std::fs::write(out, text + "\n").with_context(|| format!("writing {out}"))?;
    println!("cairn-qemu: wrote {out}");
    Ok(())
}
