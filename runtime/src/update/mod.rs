//! `cairn update …`: the device side of A/B updates (see ARCHITECTURE.md, Update design).
//! The bundle format, the installer and the boot-control backends live in `cairn-update`;
//! this is the command line over them on a running node.

pub mod source;

use anyhow::{anyhow, bail, Context, Result};
use cairn_update::bootctl::{self, BootControl, BootStatus, SlotState};
use cairn_update::fsutil::Writable;
use cairn_update::install::{self, Phase, Target};
use cairn_update::state::{DeviceState, IMAGE_FLOOR_FILE, STATE_FILE};
use cairn_update::{keys, Slot};
use std::io::{IsTerminal, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

const BOOT_DIR: &str = "/boot";
const ETC: &str = "/etc/cairn";
pub const KEYS_DIR: &str = "/etc/cairn/update-keys";
const LOCK: &str = "/run/cairn-update.lock";
/// Read by cairn-init when it reboots: the argument for `reboot(2)` (Raspberry Pi tryboot).
pub const REBOOT_ARGUMENT_FILE: &str = "/run/cairn/reboot-argument";

fn etc(name: &str) -> Result<String> {
    let path = Path::new(ETC).join(name);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("{}: is this a cairn device?", path.display()))?
        .trim()
        .to_string())
}

fn booted() -> Result<Slot> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("/proc/cmdline")?;
    Slot::from_cmdline(&cmdline).transpose()?.ok_or_else(|| {
        anyhow!("no cairn.slot= on the kernel command line: not booted by cairn's bootloader setup")
    })
}

fn backend() -> Result<Box<dyn BootControl>> {
    Ok(bootctl::open(&etc("boot-control")?, Path::new(BOOT_DIR))?)
}

/// One update operation at a time.
fn lock() -> Result<std::fs::File> {
    let f = std::fs::File::create(LOCK).with_context(|| format!("creating {LOCK}"))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another `cairn update` is running; wait for it to finish");
    }
    Ok(f)
}

/// `cairn update install`.
pub fn install_command(source: &str, reboot: bool, keys_dir: &Path) -> Result<()> {
    let _lock = lock()?;
    let trusted = keys::load_trusted(keys_dir)?;
    let booted = booted()?;
    let slot = booted.other();
    let part = cairn_update::blockdev::find_by_label(Path::new("/sys"), slot.partition_label())
        .ok_or_else(|| anyhow!("no partition named {} on this disk", slot.partition_label()))?;
    let target = Target {
        board: etc("board")?,
        arch: etc("arch")?,
        booted,
        slot_device: part.dev(),
        boot_dir: PathBuf::from(BOOT_DIR),
        image_floor: std::fs::read_to_string(IMAGE_FLOOR_FILE)
            .ok()
            .map(|s| s.trim().to_string()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The runtime drives the download on its own thread while this one writes the slot.
    let rt = std::sync::Arc::new(rt);
    let driver = {
        let rt = rt.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handle = std::thread::spawn(move || {
            rt.block_on(async {
                let _ = stop_rx.await;
            })
        });
        (stop_tx, handle)
    };
    let stream = source::open(source, &rt)?;
    eprintln!(
        "cairn update: installing {source} into slot {slot} ({}); slot {booted} keeps running",
        target.slot_device.display()
    );
    let _writable = Writable::new(Path::new(BOOT_DIR)).context("making /boot writable")?;
    let mut bc = backend()?;
    let mut progress = Progress::new();
    let result = install::install(
        stream,
        &trusted,
        &target,
        bc.as_mut(),
        Path::new(STATE_FILE),
        |phase, done, total| progress.show(phase, done, total),
    );
    progress.finish();
    let _ = driver.0.send(());
    let _ = driver.1.join();
    let manifest = result.map_err(|e| anyhow!("{e}; slot {booted} is untouched"))?;
    println!(
        "installed {} {} into slot {slot}; it boots next, on trial",
        manifest.board, manifest.version
    );
    if reboot {
        request_reboot(bc.as_ref())?;
    } else {
        println!(
            "reboot to try it: the node returns to slot {booted} by itself if it is not healthy"
        );
    }
    Ok(())
}

/// Asks PID 1 for a clean reboot (what `reboot` does), with the bootloader's argument.
fn request_reboot(bc: &dyn BootControl) -> Result<()> {
    if let Some(arg) = bc.reboot_argument() {
        if let Some(dir) = Path::new(REBOOT_ARGUMENT_FILE).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(REBOOT_ARGUMENT_FILE, arg)?;
    }
    println!("rebooting");
    // SAFETY: signalling init; it shuts down cleanly on SIGTERM.
    if unsafe { libc::kill(1, libc::SIGTERM) } != 0 {
        bail!("cannot signal init: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// `cairn update status`.
pub fn status_command(json: bool) -> Result<()> {
    let bc = backend()?;
    let status = bc.status()?;
    let state = DeviceState::load(Path::new(STATE_FILE));
    let booted = booted().ok();
    if json {
        println!(
            "{}",
            serde_json::to_string(&status_json(&status, &state, booted, bc.name()))?
        );
    } else {
        print!("{}", status_text(&status, &state, booted, bc.name()));
    }
    Ok(())
}

fn status_json(
    status: &BootStatus,
    state: &DeviceState,
    booted: Option<Slot>,
    backend: &str,
) -> serde_json::Value {
    let slot = |s: Slot| {
        let r = state.slot(s);
        serde_json::json!({
            "slot": s.letter(),
            "version": r.version,
            "state": state_word(status.of(s)),
            "booted": booted == Some(s),
            "next": status.next == s,
            "installedAt": r.installed_at,
            "committedAt": r.committed_at,
            "failure": r.failure,
            "failureLog": r.failure_log,
        })
    };
    serde_json::json!({
        "bootControl": backend,
        "floor": state.floor,
        "slots": [slot(Slot::A), slot(Slot::B)],
    })
}

fn state_word(s: SlotState) -> &'static str {
    match s {
        SlotState::Empty => "empty",
        SlotState::Good => "good",
        SlotState::Trial { .. } => "trial",
        SlotState::Bad => "bad",
    }
}

pub fn status_text(
    status: &BootStatus,
    state: &DeviceState,
    booted: Option<Slot>,
    backend: &str,
) -> String {
    let mut out = String::new();
    for s in Slot::ALL {
        let r = state.slot(s);
        let mut marks = Vec::new();
        if booted == Some(s) {
            marks.push("booted");
        }
        if status.next == s {
            marks.push("boots next");
        }
        out.push_str(&format!(
            "slot {s}: {:<12} {:<22} {}\n",
            r.version.as_deref().unwrap_or("-"),
            status.of(s).to_string(),
            marks.join(", ")
        ));
        if let (Some(why), SlotState::Bad | SlotState::Trial { .. }) = (&r.failure, status.of(s)) {
            out.push_str(&format!("        last trial failed: {why}\n"));
            if let Some(log) = &r.failure_log {
                out.push_str(&format!("        its boot log: {log}\n"));
            }
        }
    }
    out.push_str(&format!(
        "anti-rollback floor: {}\nboot control: {backend}\n",
        state.floor.as_deref().unwrap_or("none")
    ));
    out
}

/// `cairn update mark-good`: commit the booted slot now, without waiting for init's check.
pub fn mark_good_command() -> Result<()> {
    let _lock = lock()?;
    let booted = booted()?;
    let _writable = Writable::new(Path::new(BOOT_DIR))?;
    backend()?.commit(booted)?;
    let mut state = DeviceState::load(Path::new(STATE_FILE));
    let r = state.slot_mut(booted);
    r.failure = None;
    if let Some(f) = r.min_version.clone() {
        state.raise_floor(&f);
    }
    state.save(Path::new(STATE_FILE))?;
    println!("slot {booted} marked good");
    Ok(())
}

/// `cairn update rollback`: the other slot (which must be good) boots from now on.
pub fn rollback_command(reboot: bool) -> Result<()> {
    let _lock = lock()?;
    let booted = booted()?;
    let _writable = Writable::new(Path::new(BOOT_DIR))?;
    let mut bc = backend()?;
    let to = bc.rollback(booted)?;
    let version = DeviceState::load(Path::new(STATE_FILE))
        .slot(to)
        .version
        .clone()
        .unwrap_or_else(|| "unknown version".into());
    println!("slot {to} ({version}) boots next");
    if reboot {
        request_reboot(bc.as_ref())?;
    }
    Ok(())
}

/// Install progress: a bar redrawn in place on a terminal, a line per quarter otherwise,
/// and at the end how long each phase took.
struct Progress {
    tty: bool,
    begun: Instant,
    started: Instant,
    last_quarter: u64,
    last_pct: u64,
    last_draw: Option<Instant>,
    phase: Option<Phase>,
    took: Vec<(Phase, f64)>,
}

/// The shortest time between two redraws of the progress bar.
const REDRAW: std::time::Duration = std::time::Duration::from_millis(200);

fn phase_words(phase: Phase) -> &'static str {
    match phase {
        Phase::Writing => "writing",
        Phase::BootFiles => "boot files",
        Phase::Verifying => "verifying",
    }
}

impl Progress {
    fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            begun: Instant::now(),
            started: Instant::now(),
            last_quarter: 0,
            last_pct: u64::MAX,
            last_draw: None,
            phase: None,
            took: Vec::new(),
        }
    }

    fn end_phase(&mut self) {
        if let Some(p) = self.phase {
            self.took.push((p, self.started.elapsed().as_secs_f64()));
            if self.tty {
                eprintln!();
            }
        }
    }

    fn show(&mut self, phase: Phase, done: u64, total: u64) {
        if self.phase != Some(phase) {
            self.end_phase();
            self.phase = Some(phase);
            self.started = Instant::now();
            self.last_quarter = 0;
            self.last_pct = u64::MAX;
            self.last_draw = None;
        }
        let verb = phase_words(phase);
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        let rate = done as f64 / 1048576.0 / self.started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "{verb} {:>3}% {:>5}/{} MiB {rate:>6.1} MiB/s",
            pct,
            done >> 20,
            total >> 20
        );
        if self.tty {
            // A serial console at 115200 baud takes about 7 ms per redraw, and the writes
            // wait for it: redrawn on a new percent, at most every REDRAW, and at the end.
            let recent = self.last_draw.is_some_and(|t| t.elapsed() < REDRAW);
            if pct == self.last_pct || (recent && done < total) {
                return;
            }
            self.last_pct = pct;
            self.last_draw = Some(Instant::now());
            let bar = "#".repeat((pct / 4) as usize);
            eprint!("\r[{bar:<25}] {line}");
            let _ = std::io::stderr().flush();
        } else if pct / 25 > self.last_quarter || done == total && self.last_quarter < 4 {
            self.last_quarter = pct / 25;
            eprintln!("cairn update: {line}");
        }
    }

    fn finish(&mut self) {
        self.end_phase();
        self.phase = None;
        if self.took.is_empty() {
            return;
        }
        let phases: Vec<String> = self
            .took
            .iter()
            .map(|(p, secs)| format!("{} {secs:.1} s", phase_words(*p)))
            .collect();
        eprintln!(
            "cairn update: {:.1} s in all ({})",
            self.begun.elapsed().as_secs_f64(),
            phases.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_explains_a_rolled_back_slot() {
        let status = BootStatus {
            a: SlotState::Good,
            b: SlotState::Bad,
            next: Slot::A,
        };
        let mut state = DeviceState::default();
        state.a.version = Some("0.2.0".into());
        state.b.version = Some("0.3.0".into());
        state.b.failure = Some("the node was not Ready within 60s of boot".into());
        state.b.failure_log = Some("/var/log/cairn/trial-b.log".into());
        state.floor = Some("0.2.0".into());
        let text = status_text(&status, &state, Some(Slot::A), "uboot-env");
        assert!(text.contains("slot a: 0.2.0"), "{text}");
        assert!(
            text.contains("good") && text.contains("booted, boots next"),
            "{text}"
        );
        assert!(
            text.contains("slot b: 0.3.0") && text.contains("bad"),
            "{text}"
        );
        assert!(
            text.contains("last trial failed: the node was not Ready within 60s"),
            "{text}"
        );
        assert!(text.contains("/var/log/cairn/trial-b.log"), "{text}");
        let j = status_json(&status, &state, Some(Slot::A), "uboot-env");
        assert_eq!(j["slots"][1]["state"], "bad");
        assert_eq!(j["slots"][0]["booted"], true);
    }
}
