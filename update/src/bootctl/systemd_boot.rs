//! `systemd-boot`: Boot Loader Specification entries with boot counting.
//!
//! Each slot has at most one entry, `loader/entries/cairn-<gen>-<slot>[+LEFT[-DONE]].conf`.
//! systemd-boot sorts entries whose counter reached `+0` last and the rest by id, highest
//! first; loader.conf names no default, so it boots the first. `gen` grows by one on every
//! change of the preferred slot, so that change is one rename (or one new file):
//!
//! - trial: a new entry `cairn-<gen+1>-b+1.conf`; systemd-boot renames it to `+0-1` as it
//!   boots it, and if the boot never commits, the `+0` entry sorts last and the old slot boots.
//! - commit: rename to `cairn-<gen>-b.conf` (no counter: a committed entry is never demoted).
//! - bad: rename to `….conf.bad`, which systemd-boot does not read.

use super::{io_err, BootControl, BootControlError, BootStatus, Result, SlotState, TRIAL_BOOTS};
use crate::fsutil;
use crate::Slot;
use std::path::{Path, PathBuf};

const ENTRIES: &str = "loader/entries";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    file: String,
    gen: u64,
    slot: Slot,
    /// (left, done) when the entry counts boots.
    counter: Option<(u32, u32)>,
    bad: bool,
}

impl Entry {
    /// Parses `cairn-<gen>-<slot>[+L[-D]].conf[.bad]`.
    fn parse(file: &str) -> Option<Entry> {
        let (stem, bad) = match file.strip_suffix(".conf.bad") {
            Some(s) => (s, true),
            None => (file.strip_suffix(".conf")?, false),
        };
        let rest = stem.strip_prefix("cairn-")?;
        let (gen, rest) = rest.split_once('-')?;
        let gen = gen.parse().ok()?;
        let (slot, counter) = match rest.split_once('+') {
            Some((slot, c)) => {
                let (left, done) = c.split_once('-').unwrap_or((c, "0"));
                (slot, Some((left.parse().ok()?, done.parse().ok()?)))
            }
            None => (rest, None),
        };
        Some(Entry {
            file: file.to_string(),
            gen,
            slot: slot.parse().ok()?,
            counter,
            bad,
        })
    }

    fn name(gen: u64, slot: Slot, counter: Option<u32>) -> String {
        match counter {
            Some(left) => format!("cairn-{gen}-{slot}+{left}.conf"),
            None => format!("cairn-{gen}-{slot}.conf"),
        }
    }

    fn state(&self) -> SlotState {
        match (self.bad, self.counter) {
            (true, _) => SlotState::Bad,
            (false, None) => SlotState::Good,
            (false, Some((left, _))) => SlotState::Trial { tries_left: left },
        }
    }

    /// systemd-boot's order: exhausted entries last, then the highest id.
    fn boot_rank(&self) -> (bool, u64) {
        (!matches!(self.counter, Some((0, _))), self.gen)
    }
}

pub struct SystemdBoot {
    boot_dir: PathBuf,
}

impl SystemdBoot {
    pub fn new(boot_dir: &Path) -> Self {
        SystemdBoot {
            boot_dir: boot_dir.to_path_buf(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.boot_dir.join(ENTRIES)
    }

    fn entries(&self) -> Result<Vec<Entry>> {
        let dir = self.dir();
        let mut out: Vec<Entry> = std::fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| Entry::parse(&e.file_name().to_string_lossy()))
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.boot_rank()));
        Ok(out)
    }

    fn entry_of(entries: &[Entry], slot: Slot) -> Option<&Entry> {
        entries.iter().find(|e| e.slot == slot)
    }

    fn top_gen(entries: &[Entry]) -> u64 {
        entries.iter().map(|e| e.gen).max().unwrap_or(0)
    }

    /// The new slot's entry, made from another entry: the same kernel options, with the
    /// slot's own kernel, initramfs and `cairn.slot=`.
    fn entry_text(&self, entries: &[Entry], slot: Slot) -> Result<String> {
        let template = entries
            .iter()
            .find(|e| !e.bad)
            .or_else(|| entries.first())
            .ok_or_else(|| BootControlError::Corrupt {
                path: self.dir(),
                problem: "no cairn entry to take the kernel options from".into(),
            })?;
        let path = self.dir().join(&template.file);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let from = template.slot.letter();
        let to = slot.letter();
        Ok(text
            .lines()
            .map(|line| {
                let (key, value) = line.split_once(' ').unwrap_or((line, ""));
                let value = match key {
                    "linux" | "initrd" => {
                        value.replacen(&format!("/{from}/"), &format!("/{to}/"), 1)
                    }
                    "options" => value
                        .split_whitespace()
                        .map(|a| {
                            if a.starts_with("cairn.slot=") {
                                format!("cairn.slot={to}")
                            } else {
                                a.to_string()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                    "title" => format!("cairn (slot {to})"),
                    _ => value.to_string(),
                };
                format!("{key} {value}\n")
            })
            .collect())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (self.dir().join(from), self.dir().join(to));
        fsutil::rename(&f, &t).map_err(io_err(&f))
    }
}

impl BootControl for SystemdBoot {
    fn name(&self) -> &'static str {
        "systemd-boot"
    }

    fn status(&self) -> Result<BootStatus> {
        let entries = self.entries()?;
        let state = |slot| Self::entry_of(&entries, slot).map_or(SlotState::Empty, Entry::state);
        let next = entries
            .iter()
            .find(|e| !e.bad)
            .map(|e| e.slot)
            .unwrap_or(Slot::A);
        Ok(BootStatus {
            a: state(Slot::A),
            b: state(Slot::B),
            next,
        })
    }

    fn set_trial(&mut self, slot: Slot) -> Result<()> {
        let entries = self.entries()?;
        let text = self.entry_text(&entries, slot)?;
        for old in entries.iter().filter(|e| e.slot == slot) {
            let p = self.dir().join(&old.file);
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
        let name = Entry::name(Self::top_gen(&entries) + 1, slot, Some(TRIAL_BOOTS));
        let path = self.dir().join(name);
        fsutil::replace_file(&path, text.as_bytes()).map_err(io_err(&path))
    }

    fn commit(&mut self, slot: Slot) -> Result<()> {
        let entries = self.entries()?;
        let Some(e) = Self::entry_of(&entries, slot) else {
            return Err(BootControlError::Refused {
                slot,
                why: "has no boot entry".into(),
            });
        };
        let top = Self::top_gen(&entries);
        let others_top = entries.iter().any(|o| o.slot != slot && o.gen == top);
        let gen = if e.gen == top && !others_top {
            top
        } else {
            top + 1
        };
        let name = Entry::name(gen, slot, None);
        if name != e.file {
            self.rename(&e.file.clone(), &name)?;
        }
        Ok(())
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<()> {
        let entries = self.entries()?;
        if let Some(e) = Self::entry_of(&entries, slot).filter(|e| !e.bad) {
            self.rename(&e.file, &format!("{}.bad", e.file))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> (tempfile::TempDir, SystemdBoot) {
        let dir = tempfile::tempdir().unwrap();
        let entries = dir.path().join(ENTRIES);
        std::fs::create_dir_all(&entries).unwrap();
        std::fs::write(
            entries.join("cairn-1-a.conf"),
            "title cairn 0.1.0 (slot a)\nlinux /a/vmlinuz\ninitrd /a/initrd.img\noptions console=ttyS0 quiet cairn.slot=a\n",
        )
        .unwrap();
        let b = SystemdBoot::new(dir.path());
        (dir, b)
    }

    fn files(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d.join(ENTRIES))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    /// What systemd-boot does at power-on: boot the first entry, counting it down.
    fn boot(d: &Path) -> Slot {
        let b = SystemdBoot::new(d);
        let entries = b.entries().unwrap();
        let e = entries.iter().find(|e| !e.bad).unwrap().clone();
        if let Some((left, done)) = e.counter {
            let to = format!(
                "cairn-{}-{}+{}-{}.conf",
                e.gen,
                e.slot,
                left.saturating_sub(1),
                done + 1
            );
            std::fs::rename(d.join(ENTRIES).join(&e.file), d.join(ENTRIES).join(to)).unwrap();
        }
        e.slot
    }

    #[test]
    fn parses_counted_and_plain_entry_names() {
        let e = Entry::parse("cairn-7-b+0-1.conf").unwrap();
        assert_eq!((e.gen, e.slot, e.counter), (7, Slot::B, Some((0, 1))));
        assert_eq!(
            Entry::parse("cairn-2-a.conf.bad").unwrap().state(),
            SlotState::Bad
        );
        assert!(Entry::parse("other.conf").is_none());
        assert!(Entry::parse("cairn-x-a.conf").is_none());
    }

    #[test]
    fn a_trial_boots_once_and_commits_with_one_rename() {
        let (d, mut b) = disk();
        b.set_trial(Slot::B).unwrap();
        assert_eq!(files(d.path()), ["cairn-1-a.conf", "cairn-2-b+1.conf"]);
        let text =
            std::fs::read_to_string(d.path().join(ENTRIES).join("cairn-2-b+1.conf")).unwrap();
        assert!(text.contains("linux /b/vmlinuz\n"), "{text}");
        assert!(
            text.contains("options console=ttyS0 quiet cairn.slot=b\n"),
            "{text}"
        );
        assert_eq!(boot(d.path()), Slot::B);
        assert_eq!(b.status().unwrap().b, SlotState::Trial { tries_left: 0 });
        b.commit(Slot::B).unwrap();
        assert_eq!(files(d.path()), ["cairn-1-a.conf", "cairn-2-b.conf"]);
        assert_eq!(boot(d.path()), Slot::B);
        let s = b.status().unwrap();
        assert_eq!(
            (s.a, s.b, s.next),
            (SlotState::Good, SlotState::Good, Slot::B)
        );
    }

    #[test]
    fn an_uncommitted_trial_falls_back_and_is_then_marked_bad() {
        let (d, mut b) = disk();
        b.set_trial(Slot::B).unwrap();
        assert_eq!(boot(d.path()), Slot::B);
        assert_eq!(boot(d.path()), Slot::A, "the exhausted entry sorts last");
        b.mark_bad(Slot::B).unwrap();
        assert_eq!(
            files(d.path()),
            ["cairn-1-a.conf", "cairn-2-b+0-1.conf.bad"]
        );
        let s = b.status().unwrap();
        assert_eq!(
            (s.a, s.b, s.next),
            (SlotState::Good, SlotState::Bad, Slot::A)
        );
        // A new install replaces the bad entry.
        b.set_trial(Slot::B).unwrap();
        assert_eq!(files(d.path()), ["cairn-1-a.conf", "cairn-3-b+1.conf"]);
    }

    #[test]
    fn rollback_and_commit_move_the_preferred_slot_by_one_rename() {
        let (d, mut b) = disk();
        b.set_trial(Slot::B).unwrap();
        b.commit(Slot::B).unwrap();
        assert_eq!(b.rollback(Slot::B).unwrap(), Slot::A);
        assert_eq!(files(d.path()), ["cairn-2-b.conf", "cairn-3-a.conf"]);
        assert_eq!(boot(d.path()), Slot::A);
        // Committing the slot already preferred changes nothing.
        b.commit(Slot::A).unwrap();
        assert_eq!(files(d.path()), ["cairn-2-b.conf", "cairn-3-a.conf"]);
    }

    #[test]
    fn a_trial_entry_appears_whole_or_not_at_all() {
        let (d, mut b) = disk();
        b.set_trial(Slot::B).unwrap();
        // The only files are finished entries: no temporary file is left to be read.
        assert!(files(d.path()).iter().all(|f| f.ends_with(".conf")));
    }
}
