//! The health gate of A/B updates: a slot on trial is committed once the node is healthy
//! within `update.health_timeout`; otherwise its log is kept and the machine reboots, and
//! the bootloader falls back to the committed slot. The boot after a fallback marks the
//! failed slot bad, so a rolled-back node explains itself in `cairn update status`.

use crate::info;
use cairn_update::bootctl::{self, BootControl, SlotState};
use cairn_update::fsutil::Writable;
use cairn_update::state::{now_secs, DeviceState, IMAGE_FLOOR_FILE, STATE_FILE, TRIAL_LOG_DIR};
use cairn_update::Slot;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BOOT_DIR: &str = "/boot";
const BACKEND_FILE: &str = "/etc/cairn/boot-control";
const VERSION_FILE: &str = "/etc/cairn/version";
/// Services whose logs a failed trial keeps.
const LOGGED_SERVICES: [&str; 2] = ["cairn", "containerd"];
/// How much of each service log a failed trial keeps.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

pub struct TrialGate {
    booted: Slot,
    backend: String,
    /// Set while the booted slot is on trial.
    deadline: Option<(Instant, Duration)>,
    done: bool,
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Runs `change` on the boot-control backend with the boot partition writable.
fn with_boot_control<T>(
    backend: &str,
    change: impl FnOnce(&mut dyn BootControl) -> bootctl::Result<T>,
) -> Result<T, String> {
    let _writable = Writable::new(Path::new(BOOT_DIR)).map_err(|e| format!("{BOOT_DIR}: {e}"))?;
    let mut bc = bootctl::open(backend, Path::new(BOOT_DIR)).map_err(|e| e.to_string())?;
    change(bc.as_mut()).map_err(|e| e.to_string())
}

impl TrialGate {
    /// Reads the boot state at start-up: records the booted slot's version, marks a slot
    /// whose trial failed as bad, and arms the deadline when this boot is a trial.
    pub fn start(booted: Slot, health_timeout: Duration) -> Option<TrialGate> {
        let backend = read_trimmed(BACKEND_FILE)?;
        let bc = match bootctl::open(&backend, Path::new(BOOT_DIR)) {
            Ok(bc) => bc,
            Err(e) => {
                info!("boot control: {e}");
                return None;
            }
        };
        let status = match bc.status() {
            Ok(s) => s,
            Err(e) => {
                info!("boot control: {e}");
                return None;
            }
        };
        let state_file = Path::new(STATE_FILE);
        let mut state = DeviceState::load(state_file);
        let version = read_trimmed(VERSION_FILE);
        if state.slot(booted).version != version {
            state.slot_mut(booted).version = version;
        }
        let other = booted.other();
        if let SlotState::Trial { .. } = status.of(other) {
            let record = state.slot_mut(other);
            let reason = record.failure.clone().unwrap_or_else(|| {
                format!(
                    "slot {other} did not finish a boot (power lost, or the kernel, initramfs or root failed before the health check)"
                )
            });
            record.failure = Some(reason.clone());
            info!(
                "update: slot {other} ({}) failed its trial: {reason}; running slot {booted} again",
                record.version.as_deref().unwrap_or("unknown version")
            );
            if let Err(e) = with_boot_control(&backend, |bc| bc.mark_bad(other)) {
                info!("update: cannot mark slot {other} bad: {e}");
            }
        }
        if let Err(e) = state.save(state_file) {
            info!("update: {STATE_FILE}: {e}");
        }
        let deadline = match status.of(booted) {
            SlotState::Trial { .. } => {
                info!(
                    "update: slot {booted} is on trial: committing it once the node is healthy (within {}s)",
                    health_timeout.as_secs()
                );
                Some((Instant::now() + health_timeout, health_timeout))
            }
            _ => None,
        };
        Some(TrialGate {
            booted,
            backend,
            deadline,
            done: false,
        })
    }

    /// The node is healthy: commit the booted slot (for a committed slot this resets the
    /// bootloader's boot counter).
    pub fn healthy(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let slot = self.booted;
        if let Err(e) = with_boot_control(&self.backend, |bc| bc.commit(slot)) {
            info!("update: cannot commit slot {slot}: {e}");
            return;
        }
        let state_file = Path::new(STATE_FILE);
        let mut state = DeviceState::load(state_file);
        let record = state.slot_mut(slot);
        record.failure = None;
        record.failure_log = None;
        if self.deadline.is_some() || record.committed_at.is_none() {
            record.committed_at = Some(now_secs());
        }
        let floor = record
            .min_version
            .clone()
            .or_else(|| read_trimmed(IMAGE_FLOOR_FILE));
        if let Some(f) = floor {
            state.raise_floor(&f);
        }
        if let Err(e) = state.save(state_file) {
            info!("update: {STATE_FILE}: {e}");
        }
        if self.deadline.take().is_some() {
            info!("update: slot {slot} committed");
        }
    }

    /// Whether the trial ran out of time: the reason and log are kept for the next boot, and
    /// the caller reboots.
    pub fn expired(&mut self) -> bool {
        let Some((deadline, timeout)) = self.deadline else {
            return false;
        };
        if self.done || Instant::now() < deadline {
            return false;
        }
        self.done = true;
        let slot = self.booted;
        let reason = format!(
            "the node was not Ready within {}s of boot",
            timeout.as_secs()
        );
        let log = keep_log(slot, &reason);
        let state_file = Path::new(STATE_FILE);
        let mut state = DeviceState::load(state_file);
        let record = state.slot_mut(slot);
        record.failure = Some(reason.clone());
        record.failure_log = log.map(|p| p.display().to_string());
        if let Err(e) = state.save(state_file) {
            info!("update: {STATE_FILE}: {e}");
        }
        info!("update: slot {slot} failed its trial ({reason}); rebooting to fall back");
        true
    }
}

/// Copies the tail of each service log into `trial-<slot>.log`, beside them.
fn keep_log(slot: Slot, reason: &str) -> Option<PathBuf> {
    use std::io::{Read, Seek, SeekFrom};
    let dir = Path::new(TRIAL_LOG_DIR);
    let path = dir.join(format!("trial-{slot}.log"));
    let mut text = format!("slot {slot} failed its trial: {reason}\n");
    for service in LOGGED_SERVICES {
        let p = dir.join(format!("{service}.log"));
        let Ok(mut f) = std::fs::File::open(&p) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
        let mut tail = Vec::new();
        let _ = f.read_to_end(&mut tail);
        text.push_str(&format!("\n==> {} <==\n", p.display()));
        text.push_str(&String::from_utf8_lossy(&tail));
    }
    match cairn_update::fsutil::replace_file(&path, text.as_bytes()) {
        Ok(()) => Some(path),
        Err(e) => {
            info!("update: {}: {e}", path.display());
            None
        }
    }
}

/// Parses `update.health_timeout`: seconds, or a number with s, m or h.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_timeouts_parse_in_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("300"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5d"), None);
    }
}
