//! `rpi-tryboot`: the Raspberry Pi firmware's A/B support. `autoboot.txt` on the first FAT
//! partition names the committed slot's boot partition under `[all]` and the slot on trial
//! under `[tryboot]`; the firmware reads `[tryboot]` only on the one boot after
//! `reboot "0 tryboot"`, so a trial that does not commit is gone after the next reset.
//! Slot states for `cairn update status` ride along as a comment in the same file, so every
//! change is one atomic replace of `autoboot.txt`.

use super::{io_err, BootControl, BootStatus, Result, SlotState};
use crate::fsutil;
use crate::Slot;
use std::path::{Path, PathBuf};

const AUTOBOOT: &str = "autoboot.txt";
/// Set by the firmware (a big-endian 1) when this boot is a tryboot.
const TRYBOOT_FLAG: &str = "/proc/device-tree/chosen/bootloader/tryboot";

pub struct RpiTryboot {
    boot_dir: PathBuf,
    tryboot_flag: PathBuf,
    /// Boot partition numbers of slots A and B.
    partitions: [u32; 2],
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Autoboot {
    committed: u32,
    tryboot: u32,
    states: [String; 2],
}

impl RpiTryboot {
    pub fn new(boot_dir: &Path) -> Self {
        RpiTryboot {
            boot_dir: boot_dir.to_path_buf(),
            tryboot_flag: PathBuf::from(TRYBOOT_FLAG),
            partitions: [2, 3],
        }
    }

    /// For tests and boards whose slots sit elsewhere.
    pub fn with(boot_dir: &Path, tryboot_flag: &Path, partitions: [u32; 2]) -> Self {
        RpiTryboot {
            boot_dir: boot_dir.to_path_buf(),
            tryboot_flag: tryboot_flag.to_path_buf(),
            partitions,
        }
    }

    fn path(&self) -> PathBuf {
        self.boot_dir.join(AUTOBOOT)
    }

    fn part(&self, slot: Slot) -> u32 {
        self.partitions[slot_index(slot)]
    }

    fn slot_of(&self, part: u32) -> Slot {
        if part == self.partitions[1] {
            Slot::B
        } else {
            Slot::A
        }
    }

    fn read(&self) -> Autoboot {
        let text = std::fs::read_to_string(self.path()).unwrap_or_default();
        let mut ab = Autoboot {
            committed: self.partitions[0],
            tryboot: self.partitions[0],
            states: ["good".into(), "empty".into()],
        };
        let mut section = String::from("all");
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some(states) = line.strip_prefix("# cairn-slots:") {
                for kv in states.split_whitespace() {
                    if let Some((k, v)) = kv.split_once('=') {
                        if let Ok(slot) = k.parse::<Slot>() {
                            ab.states[slot_index(slot)] = v.to_string();
                        }
                    }
                }
            } else if let Some(v) = line.strip_prefix("boot_partition=") {
                let n = v.trim().parse().unwrap_or(self.partitions[0]);
                match section.as_str() {
                    "tryboot" => ab.tryboot = n,
                    _ => ab.committed = n,
                }
            }
        }
        ab
    }

    fn write(&self, ab: &Autoboot) -> Result<()> {
        let text = format!(
            "# Written by cairn: the committed slot under [all], the slot on trial under [tryboot].\n# cairn-slots: a={} b={}\n[all]\ntryboot_a_b=1\nboot_partition={}\n[tryboot]\nboot_partition={}\n",
            ab.states[0], ab.states[1], ab.committed, ab.tryboot
        );
        let path = self.path();
        fsutil::replace_file(&path, text.as_bytes()).map_err(io_err(&path))
    }

    fn in_tryboot(&self) -> bool {
        std::fs::read(&self.tryboot_flag).is_ok_and(|b| b.last() == Some(&1))
    }
}

fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

impl BootControl for RpiTryboot {
    fn name(&self) -> &'static str {
        "rpi-tryboot"
    }

    fn status(&self) -> Result<BootStatus> {
        let ab = self.read();
        let trial_used = self.in_tryboot();
        let state = |slot: Slot| match ab.states[slot_index(slot)].as_str() {
            "good" => SlotState::Good,
            "trial" => SlotState::Trial {
                tries_left: if trial_used { 0 } else { 1 },
            },
            "bad" => SlotState::Bad,
            _ => SlotState::Empty,
        };
        let trial_pending = ab.tryboot != ab.committed
            && matches!(
                state(self.slot_of(ab.tryboot)),
                SlotState::Trial { tries_left: 1 }
            );
        Ok(BootStatus {
            a: state(Slot::A),
            b: state(Slot::B),
            next: self.slot_of(if trial_pending {
                ab.tryboot
            } else {
                ab.committed
            }),
        })
    }

    fn set_trial(&mut self, slot: Slot) -> Result<()> {
        let mut ab = self.read();
        ab.tryboot = self.part(slot);
        ab.states[slot_index(slot)] = "trial".into();
        self.write(&ab)
    }

    fn commit(&mut self, slot: Slot) -> Result<()> {
        let mut ab = self.read();
        ab.committed = self.part(slot);
        ab.tryboot = ab.committed;
        ab.states[slot_index(slot)] = "good".into();
        self.write(&ab)
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<()> {
        let mut ab = self.read();
        ab.states[slot_index(slot)] = "bad".into();
        ab.tryboot = ab.committed;
        self.write(&ab)
    }

    fn reboot_argument(&self) -> Option<&'static str> {
        Some("0 tryboot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pi() -> (tempfile::TempDir, RpiTryboot) {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("tryboot");
        std::fs::write(&flag, [0, 0, 0, 0]).unwrap();
        let b = RpiTryboot::with(dir.path(), &flag, [2, 3]);
        (dir, b)
    }

    fn autoboot(d: &Path) -> String {
        std::fs::read_to_string(d.join(AUTOBOOT)).unwrap()
    }

    #[test]
    fn a_trial_is_named_under_tryboot_and_committed_under_all() {
        let (d, mut b) = pi();
        b.set_trial(Slot::B).unwrap();
        let text = autoboot(d.path());
        assert!(
            text.contains("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"),
            "{text}"
        );
        assert_eq!(b.status().unwrap().next, Slot::B);
        assert_eq!(b.reboot_argument(), Some("0 tryboot"));
        // The firmware booted the trial.
        std::fs::write(d.path().join("tryboot"), [0, 0, 0, 1]).unwrap();
        assert_eq!(b.status().unwrap().b, SlotState::Trial { tries_left: 0 });
        b.commit(Slot::B).unwrap();
        let s = b.status().unwrap();
        assert_eq!(
            (s.a, s.b, s.next),
            (SlotState::Good, SlotState::Good, Slot::B)
        );
        assert!(autoboot(d.path()).contains("[all]\ntryboot_a_b=1\nboot_partition=3\n"));
    }

    #[test]
    fn a_failed_trial_leaves_the_committed_slot_and_is_marked_bad() {
        let (d, mut b) = pi();
        b.set_trial(Slot::B).unwrap();
        std::fs::write(d.path().join("tryboot"), [0, 0, 0, 1]).unwrap();
        // The trial never committed; the next normal reset boots [all] = slot A.
        std::fs::write(d.path().join("tryboot"), [0, 0, 0, 0]).unwrap();
        b.mark_bad(Slot::B).unwrap();
        let s = b.status().unwrap();
        assert_eq!(
            (s.a, s.b, s.next),
            (SlotState::Good, SlotState::Bad, Slot::A)
        );
        assert!(b.rollback(Slot::A).is_err());
    }
}
