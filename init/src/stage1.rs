//! Stage 1, in the initramfs: load the board's modules, find the slot's root partition by
//! its GPT name, mount the squashfs read-only, and switch to it.

use crate::{info, modules, sys};
use cairn_update::Slot;
use std::path::Path;
use std::time::Duration;

const SYSROOT: &str = "/sysroot";
const STAGE2: &str = "/usr/sbin/cairn-init";

#[derive(Debug, thiserror::Error)]
pub enum Stage1Error {
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error("bad kernel command line: {0}")]
    Cmdline(#[from] cairn_update::SlotError),
    #[error("no partition named {0} appeared within 10 s: check the disk and the board's initramfs.modules")]
    NoRoot(&'static str),
    #[error("exec {STAGE2} on the new root: {0}")]
    Exec(std::io::Error),
}

pub fn run(start_ms: u64) -> Result<std::convert::Infallible, Stage1Error> {
    sys::mount_kernel_filesystems(Path::new("/"))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let slot = Slot::from_cmdline(&cmdline).transpose()?.unwrap_or(Slot::A);

    let wanted = modules::read_list(Path::new("/etc/cairn/modules"));
    let n = modules::load(&modules::module_dir(Path::new("/")), &wanted);
    info!(
        "stage 1: loaded {n} kernel modules in {} ms, booting slot {slot}",
        crate::log::boot_ms().saturating_sub(start_ms)
    );

    let label = slot.partition_label();
    let part = crate::blockdev::wait_for_label(label, Duration::from_secs(10))
        .ok_or(Stage1Error::NoRoot(label))?;
    let sysroot = Path::new(SYSROOT);
    sys::mount(
        &part.dev().to_string_lossy(),
        sysroot,
        "squashfs",
        libc::MS_RDONLY | libc::MS_NODEV,
        None,
    )?;
    info!(
        "stage 1: root {} ({label}) mounted read-only at {} ms",
        part.dev().display(),
        crate::log::boot_ms()
    );

    for dir in ["dev", "proc", "sys"] {
        sys::move_mount(&Path::new("/").join(dir), &sysroot.join(dir))?;
    }
    switch_root(sysroot, start_ms)
}

/// Frees the initramfs (its files would otherwise hold RAM for ever), makes `new_root` the
/// root and executes stage 2 there.
fn switch_root(new_root: &Path, start_ms: u64) -> Result<std::convert::Infallible, Stage1Error> {
    remove_initramfs_files(Path::new("/"), new_root);
    std::env::set_current_dir(new_root).map_err(|e| sys::SysError {
        what: format!("chdir {}", new_root.display()),
        source: e,
    })?;
    sys::move_mount(new_root, Path::new("/"))?;
    sys::chroot(Path::new("."))?;
    let _ = std::env::set_current_dir("/");
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(STAGE2)
        .arg("stage2")
        .env("CAIRN_INIT_START_MS", start_ms.to_string())
        .exec();
    Err(Stage1Error::Exec(err))
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
