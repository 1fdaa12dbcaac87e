//! Stage 1, in the initramfs: load the board's modules, find the slot's root partition by
//! its GPT name, mount the squashfs read-only, and switch to it.

use crate::{info, modules, sys};
use cairn_update::Slot;
use std::path::Path;
use std::time::Duration;

const SYSROOT: &str = "/sysroot";

#[derive(Debug, thiserror::Error)]
pub enum Stage1Error {
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error("bad kernel command line: {0}")]
    Cmdline(#[from] cairn_update::SlotError),
    #[error("no partition named {0} appeared within 10 s: check the disk and the board's initramfs.modules")]
    NoRoot(&'static str),
}

pub fn run(start_ms: u64) -> Result<std::convert::Infallible, Stage1Error> {
    sys::mount_kernel_filesystems(Path::new("/"))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let slot = Slot::from_cmdline(&cmdline).transpose()?.unwrap_or(Slot::A);

    let wanted = modules::read_list(Path::new("/etc/cairn/modules"));
    // Drivers probe their devices asynchronously, so one slow probe (the disk) does not hold
    // up the others; the root partition is waited for below anyway.
    let n = modules::load(
        &modules::module_dir(Path::new("/")),
        &wanted,
        c"async_probe=1",
    );
    let modules_ms = crate::log::boot_ms();
    info!("stage 1: loaded {n} kernel modules, booting slot {slot}");

    let label = slot.partition_label();
    let part = cairn_update::blockdev::wait_for_label(label, Duration::from_secs(10))
        .ok_or(Stage1Error::NoRoot(label))?;
    let sysroot = Path::new(SYSROOT);
    sys::mount(
        &part.dev().to_string_lossy(),
        sysroot,
        "squashfs",
        libc::MS_RDONLY | libc::MS_NODEV,
        None,
    )?;
    let root_ms = crate::log::boot_ms();
    info!(
        "stage 1: root {} ({label}) mounted read-only",
        part.dev().display()
    );

    for dir in ["dev", "proc", "sys"] {
        sys::move_mount(&Path::new("/").join(dir), &sysroot.join(dir))?;
    }
    let marks = format!(
        "pid1_start_ms={start_ms} modules_loaded_ms={modules_ms} root_mounted_ms={root_ms}"
    );
    switch_root(sysroot, &marks)
}

/// Frees the initramfs (its files would otherwise hold RAM for ever), makes `new_root` the
/// root and runs stage 2 there.
fn switch_root(new_root: &Path, marks: &str) -> Result<std::convert::Infallible, Stage1Error> {
    remove_initramfs_files(Path::new("/"), new_root);
    std::env::set_current_dir(new_root).map_err(|e| sys::SysError {
        what: format!("chdir {}", new_root.display()),
        source: e,
    })?;
    sys::move_mount(new_root, Path::new("/"))?;
    sys::chroot(Path::new("."))?;
    let _ = std::env::set_current_dir("/");
    // Stage 2 continues in this process: the initramfs and the root carry the same build of
    // cairn-init, and skipping a second exec from squashfs saves tens of milliseconds.
    crate::stage2::run(marks)
}

/// Deletes the initramfs contents without crossing into other filesystems.
fn remove_initramfs_files(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let root_dev = std::fs::symlink_metadata("/").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.dev()
    });
    for e in entries.flatten() {
        let path = e.path();
        if path == keep {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        if meta.is_dir() {
            if root_dev.as_ref().ok() != Some(&meta.dev()) {
                continue;
            }
            remove_initramfs_files(&path, keep);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}
