//! The device side of an update: stream a bundle into the inactive slot and switch the boot
//! target only once every byte is verified. The active slot is never opened for writing.

use crate::bootctl::{BootControl, BootControlError};
use crate::bundle::{self, BundleError, Manifest};
use crate::direct_io::SlotFile;
use crate::keys::PublicKey;
use crate::state::DeviceState;
use crate::{copy, fsutil, version, Slot};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("bundle is for board {bundle}, this device is {device}")]
    WrongBoard { bundle: String, device: String },
    #[error("bundle is for architecture {bundle}, this device is {device}")]
    WrongArch { bundle: String, device: String },
    #[error("bundle version {version} is below this device's anti-rollback floor {floor}")]
    BelowFloor { version: String, floor: String },
    #[error("payload of {size} bytes does not fit slot {slot} ({slot_size} bytes)")]
    TooLarge {
        size: u64,
        slot: Slot,
        slot_size: u64,
    },
    #[error("boot file name {0:?} is not a plain file name")]
    BootFileName(String),
    #[error("slot {slot} read back differently from what was written: the storage is failing")]
    ReadBack { slot: Slot },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    BootControl(#[from] BootControlError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> InstallError {
    let what = what.into();
    move |source| InstallError::Io { what, source }
}

/// Where and for what device a bundle is installed.
pub struct Target {
    pub board: String,
    pub arch: String,
    /// The slot running now; the bundle goes to the other one.
    pub booted: Slot,
    /// The inactive slot's partition (or a file, in tests).
    pub slot_device: PathBuf,
    /// The boot partition, mounted writable.
    pub boot_dir: PathBuf,
    /// The anti-rollback floor of the running image.
    pub image_floor: Option<String>,
}

/// Install phases, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The kernel and initramfs into the slot's directory on the boot partition.
    BootFiles,
    /// The payload into the slot.
    Writing,
    /// Reading the slot back.
    Verifying,
}

/// Everything that can refuse a bundle before a byte is written.
pub fn check(
    m: &Manifest,
    target: &Target,
    state: &DeviceState,
    slot_size: u64,
) -> Result<(), InstallError> {
    if m.board != target.board {
        return Err(InstallError::WrongBoard {
            bundle: m.board.clone(),
            device: target.board.clone(),
        });
    }
    if m.arch != target.arch {
        return Err(InstallError::WrongArch {
            bundle: m.arch.clone(),
            device: target.arch.clone(),
        });
    }
    for floor in [&state.floor, &target.image_floor].into_iter().flatten() {
        if !version::at_least(&m.version, floor) {
            return Err(InstallError::BelowFloor {
                version: m.version.clone(),
                floor: floor.clone(),
            });
        }
    }
    if m.payload.size > slot_size {
        return Err(InstallError::TooLarge {
            size: m.payload.size,
            slot: target.booted.other(),
            slot_size,
        });
    }
    for f in &m.boot_files {
        let plain = !f.name.is_empty()
            && !f.name.starts_with('.')
            && f.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !plain {
            return Err(InstallError::BootFileName(f.name.clone()));
        }
    }
    Ok(())
}

fn size_of(mut dev: &std::fs::File) -> std::io::Result<u64> {
    // Block devices report no length in their metadata; seeking to the end does.
    let end = dev.seek(SeekFrom::End(0))?;
    dev.seek(SeekFrom::Start(0))?;
    Ok(end)
}

/// Installs a bundle read from `stream` into the inactive slot and makes it the trial slot.
/// Returns the manifest of what was installed.
pub fn install(
    stream: impl Read,
    trusted: &[PublicKey],
    target: &Target,
    boot: &mut dyn BootControl,
    state_file: &Path,
    mut progress: impl FnMut(Phase, u64, u64),
) -> Result<Manifest, InstallError> {
    let slot = target.booted.other();
    let mut opened = bundle::open(stream, trusted)?;
    let manifest = opened.manifest.clone();
    let dev = SlotFile::open(&target.slot_device).map_err(io(format!(
        "opening slot {slot} ({})",
        target.slot_device.display()
    )))?;
    let slot_size = size_of(dev.file()).map_err(io("sizing the slot"))?;
    let mut state = DeviceState::load(state_file);
    check(&manifest, target, &state, slot_size)?;

    // From here the slot's old contents are going: the bootloader must never pick it, even
    // as a fallback, until the new image is whole and verified.
    boot.mark_bad(slot)?;
    *state.slot_mut(slot) = Default::default();
    state.slot_mut(slot).failure = Some("installation did not finish".into());
    state
        .save(state_file)
        .map_err(io("saving the update state"))?;

    // The slot's old kernel and initramfs go too: nothing boots them any more, and a boot
    // partition sized for two slots has no room for a third set.
    let slot_dir = target.boot_dir.join(slot.letter());
    clear_slot_dir(&slot_dir).map_err(io(format!("clearing {}", slot_dir.display())))?;

    // The boot files come first in the bundle. Their flush to the boot partition runs
    // beside the payload's copy to the root partition, which keeps the cores busy hashing
    // while the flush mostly waits on the storage.
    let staged = write_boot_files(&mut opened, &manifest, &slot_dir, &mut progress)?;
    let total = manifest.payload.size;
    let (same, flushed) = std::thread::scope(|s| {
        let flushed = s.spawn(|| flush_boot_files(&staged));
        let same = (|| {
            let written = opened.copy_payload(&mut dev.writer(), |done| {
                progress(Phase::Writing, done, total)
            })?;
            opened.finish()?;
            dev.file().sync_all().map_err(io("flushing the slot"))?;
            copy::matches_chunks(
                &mut dev.reader(total).map_err(io("reading the slot back"))?,
                &written.chunk_checks,
                total,
                |done| progress(Phase::Verifying, done, total),
            )
            .map_err(io("reading the slot back"))
        })();
        let flushed = flushed.join().unwrap_or_else(|_| {
            Err(io("flushing the boot files")(std::io::Error::other(
                "the flushing thread panicked",
            )))
        });
        (same, flushed)
    });
    if !same? {
        return Err(InstallError::ReadBack { slot });
    }
    flushed?;
    for f in staged {
        fsutil::rename(&f.tmp, &f.dest).map_err(io(format!("installing {}", f.dest.display())))?;
    }

    // The one step that changes what boots next.
    boot.set_trial(slot)?;
    *state.slot_mut(slot) = crate::state::SlotRecord {
        version: Some(manifest.version.clone()),
        installed_at: Some(crate::state::now_secs()),
        bundle_sha256: Some(manifest.payload.sha256.clone()),
        min_version: Some(manifest.min_version.clone()),
        ..Default::default()
    };
    state
        .save(state_file)
        .map_err(io("saving the update state"))?;
    Ok(manifest)
}

/// A boot file written under a temporary name, to be renamed once everything is verified.
struct Staged {
    file: std::fs::File,
    tmp: PathBuf,
    dest: PathBuf,
}

/// Streams the boot files into the slot's directory under temporary names, not yet flushed.
fn write_boot_files<R: Read>(
    opened: &mut bundle::Opened<R>,
    manifest: &Manifest,
    slot_dir: &Path,
    progress: &mut impl FnMut(Phase, u64, u64),
) -> Result<Vec<Staged>, InstallError> {
    let mut staged = Vec::new();
    let boot_total = manifest.boot_files.iter().map(|f| f.size).sum::<u64>();
    let mut boot_done = 0;
    for (i, f) in manifest.boot_files.iter().enumerate() {
        let tmp = slot_dir.join(format!(".{}.new", f.name));
        let file =
            std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        opened.copy_boot_file(i, &mut fsutil::WritebackAhead::new(&file), |done| {
            progress(Phase::BootFiles, boot_done + done, boot_total)
        })?;
        boot_done += f.size;
        staged.push(Staged {
            file,
            tmp,
            dest: slot_dir.join(&f.name),
        });
    }
    Ok(staged)
}

fn flush_boot_files(staged: &[Staged]) -> Result<(), InstallError> {
    for f in staged {
        f.file
            .sync_all()
            .map_err(io(format!("flushing {}", f.tmp.display())))?;
    }
    Ok(())
}

/// The marker each slot directory keeps for good (written by the image builder).
pub const SLOT_DIR_MARKER: &str = "README.txt";

/// Empties a slot's directory on the boot partition, keeping the directory itself: FAT has
/// no journal, and a directory allocated just before a power cut can hold stale data that
/// fsck then reads as entries crossing other files.
fn clear_slot_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() && entry.file_name() != SLOT_DIR_MARKER {
            std::fs::remove_file(entry.path())?;
        }
    }
    fsutil::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootctl::{SlotState, UbootEnv};
    use crate::bundle::tests::{boot_file, bundle, key, manifest_for};

    struct Device {
        dir: tempfile::TempDir,
        target: Target,
        boot: UbootEnv,
    }

    fn device() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let boot_dir = dir.path().join("boot");
        std::fs::create_dir_all(&boot_dir).unwrap();
        for (name, bytes) in UbootEnv::initial_files().unwrap() {
            std::fs::write(boot_dir.join(name), bytes).unwrap();
        }
        let slot_device = dir.path().join("root_b");
        std::fs::write(&slot_device, vec![0xAAu8; 1 << 20]).unwrap();
        let boot = UbootEnv::new(&boot_dir);
        Device {
            target: Target {
                board: "qemu-aarch64".into(),
                arch: "arm64".into(),
                booted: Slot::A,
                slot_device,
                boot_dir,
                image_floor: Some("0.1.0".into()),
            },
            boot,
            dir,
        }
    }

    fn run(d: &mut Device, bytes: &[u8], trusted: &[PublicKey]) -> Result<Manifest, InstallError> {
        let state = d.dir.path().join("state.toml");
        install(bytes, trusted, &d.target, &mut d.boot, &state, |_, _, _| {})
    }

    /// A signed bundle carrying a kernel, and the key that signed it.
    fn with_kernel(payload: &[u8], kernel: &[u8]) -> (PublicKey, Vec<u8>) {
        let k = key();
        let mut m = manifest_for(payload);
        m.boot_files.push(boot_file("Image", kernel));
        let mut out = Vec::new();
        bundle::write(&mut out, &k, &m, &mut &payload[..], &[kernel]).unwrap();
        (k.public(), out)
    }

    #[test]
    fn a_good_bundle_lands_in_the_inactive_slot_and_becomes_the_trial() {
        let mut d = device();
        let payload = vec![5u8; 300_000];
        let (k, bytes) = with_kernel(&payload, b"new kernel");
        let m = run(&mut d, &bytes, &[k]).unwrap();
        assert_eq!(m.version, "0.2.0");
        let slot = std::fs::read(&d.target.slot_device).unwrap();
        assert_eq!(&slot[..payload.len()], &payload[..]);
        assert_eq!(
            std::fs::read(d.target.boot_dir.join("b/Image")).unwrap(),
            b"new kernel"
        );
        let s = d.boot.status().unwrap();
        assert_eq!((s.b, s.next), (SlotState::Trial { tries_left: 1 }, Slot::B));
        let state = DeviceState::load(&d.dir.path().join("state.toml"));
        assert_eq!(state.b.version.as_deref(), Some("0.2.0"));
    }

    #[test]
    fn refusals_before_writing_leave_the_slot_and_boot_target_alone() {
        let payload = vec![5u8; 1000];
        let k = key();
        let cases: Vec<(Manifest, &str)> = vec![
            (
                Manifest {
                    board: "rpi4".into(),
                    ..manifest_for(&payload)
                },
                "board rpi4",
            ),
            (
                Manifest {
                    arch: "amd64".into(),
                    ..manifest_for(&payload)
                },
                "architecture amd64",
            ),
            (
                Manifest {
                    version: "0.0.9".into(),
                    ..manifest_for(&payload)
                },
                "anti-rollback floor 0.1.0",
            ),
        ];
        for (m, says) in cases {
            let mut d = device();
            let before = std::fs::read(&d.target.slot_device).unwrap();
            let err = run(&mut d, &bundle(&k, &m, &payload), &[k.public()]).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
            assert_eq!(std::fs::read(&d.target.slot_device).unwrap(), before);
            assert_eq!(d.boot.status().unwrap().b, SlotState::Empty);
        }
        let mut d = device();
        let big = vec![1u8; (1 << 20) + 1];
        let err = run(
            &mut d,
            &bundle(&k, &manifest_for(&big), &big),
            &[k.public()],
        )
        .unwrap_err();
        assert!(matches!(err, InstallError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_bundle_that_fails_midway_never_becomes_bootable() {
        let mut d = device();
        let k = key();
        let payload = vec![9u8; 200_000];
        let mut bytes = bundle(&k, &manifest_for(&payload), &payload);
        let n = bytes.len();
        bytes[n - 10] ^= 0xff;
        let err = run(&mut d, &bytes, &[k.public()]).unwrap_err();
        assert!(
            matches!(err, InstallError::Bundle(BundleError::PayloadHash { .. })),
            "{err}"
        );
        let s = d.boot.status().unwrap();
        assert_eq!((s.b, s.next), (SlotState::Bad, Slot::A));
        let state = DeviceState::load(&d.dir.path().join("state.toml"));
        assert_eq!(
            state.b.failure.as_deref(),
            Some("installation did not finish")
        );
    }
}
