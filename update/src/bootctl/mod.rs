//! Boot control: how the bootloader is told which slot to boot, how many tries a new slot
//! gets, and how a slot is committed or given up. One trait, one backend per bootloader; the
//! board file names the backend (`bootloader.boot_control`), which the image records in
//! `/etc/cairn/boot-control` for the device.
//!
//! Every backend changes the boot target in one atomic step (a rename, or the older copy of
//! a redundant pair), so a power cut leaves the old state or the new one.

mod rpi_tryboot;
mod systemd_boot;
mod uboot;
pub mod uboot_env;

pub use rpi_tryboot::RpiTryboot;
pub use systemd_boot::SystemdBoot;
pub use uboot::{boot_script as uboot_boot_script, UbootEnv};

use crate::Slot;
use std::fmt;
use std::path::{Path, PathBuf};

/// Boot attempts a newly installed slot gets before the bootloader falls back. One: a slot
/// that cannot become healthy once is not retried on its own.
pub const TRIAL_BOOTS: u32 = 1;
/// Consecutive failed boots a committed slot survives before the bootloader falls back (on
/// bootloaders that count every boot).
pub const GOOD_BOOTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum BootControlError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("unknown boot-control backend {0:?}: expected uboot-env, systemd-boot or rpi-tryboot")]
    UnknownBackend(String),
    #[error("slot {slot} {why}")]
    Refused { slot: Slot, why: String },
}

pub type Result<T> = std::result::Result<T, BootControlError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootControlError + '_ {
    move |source| BootControlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the bootloader knows of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Nothing bootable was ever installed there.
    Empty,
    /// Committed: booted healthy.
    Good,
    /// Installed and waiting for its first healthy boot; `tries_left` boots remain.
    Trial { tries_left: u32 },
    /// Failed its trial or was given up; never booted while another slot can be.
    Bad,
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotState::Empty => f.write_str("empty"),
            SlotState::Good => f.write_str("good"),
            SlotState::Trial { tries_left } => write!(f, "trial ({tries_left} boots left)"),
            SlotState::Bad => f.write_str("bad"),
        }
    }
}

/// The bootloader's view of both slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootStatus {
    pub a: SlotState,
    pub b: SlotState,
    /// The slot the next boot starts.
    pub next: Slot,
}

impl BootStatus {
    pub fn of(&self, slot: Slot) -> SlotState {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }
}

/// One bootloader's boot-control protocol.
pub trait BootControl {
    /// The backend's name as board files spell it.
    fn name(&self) -> &'static str;

    /// Both slots as the bootloader sees them, and which boots next.
    fn status(&self) -> Result<BootStatus>;

    /// The next boot tries `slot` ([`TRIAL_BOOTS`] times); if it never commits, the
    /// bootloader returns to the committed slot by itself.
    fn set_trial(&mut self, slot: Slot) -> Result<()>;

    /// `slot` booted healthy: it becomes the slot every boot starts (and, where the
    /// bootloader counts every boot, its counter is reset).
    fn commit(&mut self, slot: Slot) -> Result<()>;

    /// `slot` failed: the bootloader must not start it again while another slot is bootable.
    fn mark_bad(&mut self, slot: Slot) -> Result<()>;

    /// What `reboot(2)` must be told for the next boot to be a trial (the Raspberry Pi
    /// firmware's one-shot `tryboot` flag); None where the bootloader keeps the state.
    fn reboot_argument(&self) -> Option<&'static str> {
        None
    }

    /// The slot the bootloader boots when nothing is being tried.
    fn active_slot(&self) -> Result<Slot> {
        let s = self.status()?;
        Ok(match (s.of(s.next), s.of(s.next.other())) {
            (SlotState::Trial { .. }, SlotState::Good) => s.next.other(),
            _ => s.next,
        })
    }

    /// Goes back to the other slot for good: it must hold a committed image.
    fn rollback(&mut self, booted: Slot) -> Result<Slot> {
        let other = booted.other();
        match self.status()?.of(other) {
            SlotState::Good => {
                self.commit(other)?;
                Ok(other)
            }
            state => Err(BootControlError::Refused {
                slot: other,
                why: format!("is {state}: only a good slot can be rolled back to"),
            }),
        }
    }
}

/// The backend a board file names, working on the boot partition mounted at `boot_dir`.
pub fn open(name: &str, boot_dir: &Path) -> Result<Box<dyn BootControl>> {
    match name {
        "uboot-env" => Ok(Box::new(UbootEnv::new(boot_dir))),
        "systemd-boot" => Ok(Box::new(SystemdBoot::new(boot_dir))),
        "rpi-tryboot" => Ok(Box::new(RpiTryboot::new(boot_dir))),
        other => Err(BootControlError::UnknownBackend(other.to_string())),
    }
}

/// The names `open` accepts, for board-file validation.
pub const BACKENDS: [&str; 3] = ["uboot-env", "systemd-boot", "rpi-tryboot"];
