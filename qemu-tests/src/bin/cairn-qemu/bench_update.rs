//! `cairn-qemu bench-update`: what an A/B update costs on a booted image. The bundle and
//! what it carries sit on a read-only ext4 disk attached to the VM, so the install and the
//! baseline read from the same place. The baseline is a raw write of the same bytes to the
//! same slot: `dd` of the root filesystem to the slot's partition, then `cp` of the kernel
//! and initramfs into the slot's directory on the boot partition, each flushed; it checks
//! nothing. The root-only part is reported too, and so is a second baseline whose `dd`
//! bypasses the page cache (`oflag=direct`) as the installer does: the fastest raw write
//! there is, for telling how much of the margin comes from that alone. Each ratio is the
//! median of the rounds' own ratios (see `paired_ratio`).

use anyhow::{bail, Context, Result};
use cairn_update::install::SLOT_DIR_MARKER;
use qemu_tests::{parse_ready, BoardImage, Disk, Vm, BOOT_TIMEOUT};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Measured installs and raw writes, alternating.
const ROUNDS: usize = 9;
const SH: Duration = Duration::from_secs(900);

fn find_one(dir: &Path, suffix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("{} (run make update-bundles)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .with_context(|| format!("no *{suffix} in {}", dir.display()))
}

/// The boot files a build puts in its bundle, as the build also leaves them beside it.
const BOOT_FILES: [&str; 2] = ["vmlinuz", "initrd.img"];

/// An ext4 image holding the bundle, its squashfs and its boot files (under `boot/`), made
/// without mounting anything.
fn payload_disk(dir: &Path, bundle_dir: &Path, bundle: &Path, squashfs: &Path) -> Result<PathBuf> {
    let content = dir.join("payload");
    let _ = std::fs::remove_dir_all(&content);
    std::fs::create_dir_all(content.join("boot"))?;
    std::fs::copy(bundle, content.join("update.cairnb"))?;
    std::fs::copy(squashfs, content.join("root.squashfs"))?;
    for name in BOOT_FILES {
        std::fs::copy(bundle_dir.join(name), content.join("boot").join(name))
            .with_context(|| format!("{} of {}", name, bundle_dir.display()))?;
    }
    let size = 2 * std::fs::metadata(bundle)?.len();
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

/// Runs `command` on the node from a cold page cache; its wall time and output.
///
/// The time is taken on the node (busybox `time`, 10 ms steps) with the output going to a
/// file: timed from here, through the serial console, it would include typing the command
/// and printing its output at 115200 baud and the console's polling, which differ between
/// a quiet `dd` and a chatty installer and have nothing to do with either's speed.
fn timed(vm: &mut Vm, command: &str) -> Result<(f64, String)> {
    if command.contains('\'') {
        bail!("timed commands are quoted with ': {command:?} must not contain one");
    }
    vm.sh("sync; echo 3 > /proc/sys/vm/drop_caches", SH)?;
    let (code, out) = vm.sh(
        &format!(
            "time -p -o /run/bench.time sh -c '{command}' > /run/bench.out 2>&1; rc=$?; \
             cat /run/bench.out; sed -n 's/^real /__REAL /p' /run/bench.time; test $rc = 0"
        ),
        SH,
    )?;
    if code != 0 {
        bail!("{command:?} failed on the node:\n{out}");
    }
    let secs = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("__REAL "))
        .and_then(|t| t.trim().parse::<f64>().ok())
        .with_context(|| format!("no time for {command:?} in:\n{out}"))?;
    Ok((secs, out))
}

fn median(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// The median over rounds of `raw[i] / install[i]`. A round's raw write and install run
/// back to back, under the same load on the host; this host's speed drifted by up to 1.5x
/// between runs and within one, which moves a ratio of two medians taken across the whole
/// run but not the ratio within each round.
fn paired_ratio(raw: &[f64], install: &[f64]) -> (f64, Vec<f64>) {
    let ratios: Vec<f64> = raw.iter().zip(install).map(|(r, i)| r / i).collect();
    (median(&ratios), ratios)
}

pub fn run(boards: &str, bundles: &Path, out: &str) -> Result<()> {
    let mut results = serde_json::Map::new();
    for name in boards.split_whitespace() {
        let image = BoardImage::load(name)?;
        let dir = bundles.join(name);
        let bundle = find_one(&dir, ".cairnb")?;
        let squashfs = find_one(&dir, ".squashfs")?;
        let disk = Disk::new(&image, "bench-update", 2)?;
        let extra = payload_disk(&disk.dir, &dir, &bundle, &squashfs)?;
        eprintln!("cairn-qemu: {name}: booting {}", image.version);
        let mut vm = Vm::boot_with(&image, &disk, "before", std::slice::from_ref(&extra))?;
        vm.wait_for("CAIRN READY", BOOT_TIMEOUT)?;
        // The kernel names the two virtio disks in either order: the payload disk is the
        // one with a filesystem on the whole device.
        let (code, _) = vm.sh(
            "mkdir -p /run/payload && for d in /dev/vd?; do \
             mount -o ro -t ext4 $d /run/payload 2>/dev/null && break; done; \
             [ -e /run/payload/update.cairnb ]",
            SH,
        )?;
        if code != 0 {
            bail!("the payload disk did not mount on the node");
        }
        let (_, out) = vm.sh(&qemu_tests::slot_device_shell("b"), SH)?;
        // Service logs share the console: the device is the line that names one.
        let target = out
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("/dev/"))
            .context("no root_b partition on the node")?
            .to_string();
        let (mut install_s, mut raw_s, mut raw_root_s) = (Vec::new(), Vec::new(), Vec::new());
        let mut raw_direct_s = Vec::new();
        let mut install_phases = Vec::new();
        for round in 1..=ROUNDS {
            eprintln!("cairn-qemu: {name}: round {round}/{ROUNDS}: raw write, then install");
            // The slot's directory emptied as the installer empties it, outside the timing.
            vm.sh(
                &format!(
                    "mount -o remount,rw /boot && for f in /boot/b/*; do \
                     [ \"${{f##*/}}\" = {SLOT_DIR_MARKER} ] || rm -f \"$f\"; done && sync"
                ),
                SH,
            )?;
            let (root, _) = timed(
                &mut vm,
                &format!("dd if=/run/payload/root.squashfs of={target} bs=1M conv=fsync 2>&1"),
            )?;
            let (direct, _) = timed(
                &mut vm,
                &format!(
                    "dd if=/run/payload/root.squashfs of={target} bs=1M oflag=direct conv=fsync 2>&1"
                ),
            )?;
            let (boot, _) = timed(&mut vm, "cp /run/payload/boot/* /boot/b/ && sync")?;
            vm.sh("mount -o remount,ro /boot", SH)?;
            raw_root_s.push(root);
            raw_s.push(root + boot);
            raw_direct_s.push(direct + boot);
            let (install, said) = timed(
                &mut vm,
                "cairn update install /run/payload/update.cairnb 2>&1",
            )?;
            install_s.push(install);
            // The installer's own split of its time, for telling where a slow install goes.
            if let Some(line) = said.lines().find(|l| l.contains(" s in all (")) {
                eprintln!("cairn-qemu: {name}: {}", line.trim());
                install_phases.push(line.trim().to_string());
            }
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
        let root_bytes = std::fs::metadata(&squashfs)?.len();
        let mut payload = root_bytes;
        for f in BOOT_FILES {
            payload += std::fs::metadata(dir.join(f))?.len();
        }
        let bundle_bytes = std::fs::metadata(&bundle)?.len();
        let image_bytes = std::fs::metadata(&image.image)?.len();
        let (ratio, ratios_all) = paired_ratio(&raw_s, &install_s);
        let (root_ratio, _) = paired_ratio(&raw_root_s, &install_s);
        let (direct_ratio, _) = paired_ratio(&raw_direct_s, &install_s);
        let (install, raw) = (median(&install_s), median(&raw_s));
        let of_medians = raw / install;
        results.insert(
            name.to_string(),
            serde_json::json!({
                "from_version": image.version,
                "to_version": version,
                "payload_bytes": payload,
                "root_bytes": root_bytes,
                "install_seconds_all": install_s,
                "install_phases_all": install_phases,
                "raw_write_seconds_all": raw_s,
                "raw_root_dd_seconds_all": raw_root_s,
                "raw_direct_write_seconds_all": raw_direct_s,
                "install_mib_per_s": payload as f64 / 1048576.0 / install,
                "raw_write_mib_per_s": payload as f64 / 1048576.0 / raw,
                "install_to_raw_throughput_ratio": ratio,
                "install_to_raw_throughput_ratios_by_round": ratios_all,
                "install_to_raw_ratio_of_medians": of_medians,
                "install_to_raw_root_dd_time_ratio": root_ratio,
                "install_to_raw_direct_throughput_ratio": direct_ratio,
                "bundle_bytes": bundle_bytes,
                "image_bytes": image_bytes,
                "bundle_to_image_ratio": bundle_bytes as f64 / image_bytes as f64,
                "reboot_to_commit_ms": reboot_to_commit_ms,
                "boot_ms_of_new_slot": boot_ms,
                "targets": { "install_to_raw_throughput_ratio": 0.8 }
            }),
        );
        eprintln!(
            "cairn-qemu: {name}: install {install:.2}s vs raw write {raw:.2}s (ratio {ratio:.2} by round, {of_medians:.2} of the medians; {direct_ratio:.2} against a direct-I/O raw write); reboot to commit {reboot_to_commit_ms} ms",
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
