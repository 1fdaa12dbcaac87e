//! What the device remembers about its slots beyond the bootloader's view: which version each
//! holds, when it was installed, why a trial failed, and the anti-rollback floor. Kept on
//! the data partition, shared by both slots; replaced atomically.

use crate::{fsutil, Slot};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the record lives on a device.
pub const STATE_FILE: &str = "/var/lib/cairn/update/state.toml";
/// Where a failed trial boot leaves its log, for `cairn update status` to point at.
pub const TRIAL_LOG_DIR: &str = "/var/log/cairn";
/// The floor a freshly flashed image starts with (its own `min_version`).
pub const IMAGE_FLOOR_FILE: &str = "/etc/cairn/min-version";

/// Seconds since the epoch, as the records store times (0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub version: Option<String>,
    /// Seconds since the epoch.
    pub installed_at: Option<u64>,
    pub committed_at: Option<u64>,
    pub bundle_sha256: Option<String>,
    /// The bundle's anti-rollback floor, raised to once this slot commits.
    pub min_version: Option<String>,
    /// Why the slot's last trial failed.
    pub failure: Option<String>,
    /// The failed boot's log.
    pub failure_log: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    #[serde(default)]
    pub a: SlotRecord,
    #[serde(default)]
    pub b: SlotRecord,
    /// No bundle below this version installs.
    pub floor: Option<String>,
}

impl DeviceState {
    /// The record, or an empty one when there is none yet (first boot) or it is unreadable.
    pub fn load(path: &Path) -> DeviceState {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| toml::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = toml::to_string(self).map_err(std::io::Error::other)?;
        fsutil::replace_file(path, text.as_bytes())
    }

    pub fn slot(&self, slot: Slot) -> &SlotRecord {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    pub fn slot_mut(&mut self, slot: Slot) -> &mut SlotRecord {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// Raises the floor to `version` (never lowers it).
    pub fn raise_floor(&mut self, version: &str) {
        let higher = match &self.floor {
            Some(f) => crate::version::compare(version, f).is_gt(),
            None => true,
        };
        if higher {
            self.floor = Some(version.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_the_floor_only_rises() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("update/state.toml");
        assert_eq!(DeviceState::load(&path), DeviceState::default());
        let mut s = DeviceState::default();
        s.slot_mut(Slot::B).version = Some("0.2.0".into());
        s.raise_floor("0.2.0");
        s.raise_floor("0.1.0");
        s.save(&path).unwrap();
        let back = DeviceState::load(&path);
        assert_eq!(back, s);
        assert_eq!(back.floor.as_deref(), Some("0.2.0"));
    }
}
