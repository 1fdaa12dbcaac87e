//! The data partition: made (and grown to the disk's end) on first boot, checked for a clean
//! unmount, mounted on /var. Everything that persists lives here.

use crate::{info, sys};
use cairn_update::blockdev::{self, Partition};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub const LABEL: &str = "data";

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("no partition named \"data\" on the disk")]
    Missing,
    #[error("{0}")]
    Sys(#[from] sys::SysError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0} failed: {1}")]
    Tool(&'static str, String),
}

/// What the ext4 superblock says before mounting.
#[derive(Debug, PartialEq, Eq)]
pub enum FsState {
    NoFilesystem,
    Clean,
    NeedsRecovery,
}

const EXT4_MAGIC: u16 = 0xEF53;
const INCOMPAT_RECOVER: u32 = 0x4;

pub fn ext4_state(sb: &[u8]) -> FsState {
    // Superblock fields: s_magic at 0x38, s_state at 0x3A, s_feature_incompat at 0x60.
    if sb.len() < 0x64 || u16::from_le_bytes([sb[0x38], sb[0x39]]) != EXT4_MAGIC {
        return FsState::NoFilesystem;
    }
    let state = u16::from_le_bytes([sb[0x3A], sb[0x3B]]);
    let incompat = u32::from_le_bytes([sb[0x60], sb[0x61], sb[0x62], sb[0x63]]);
    if incompat & INCOMPAT_RECOVER != 0 || state & 1 == 0 {
        FsState::NeedsRecovery
    } else {
        FsState::Clean
    }
}

fn read_superblock(dev: &Path) -> Result<Vec<u8>, DataError> {
    let io = |what: &str| {
        let what = format!("{what} {}", dev.display());
        move |source| DataError::Io { what, source }
    };
    let mut f = std::fs::File::open(dev).map_err(io("open"))?;
    f.seek(SeekFrom::Start(1024)).map_err(io("seek"))?;
    let mut sb = vec![0u8; 1024];
    f.read_exact(&mut sb).map_err(io("read superblock of"))?;
    Ok(sb)
}

/// Extends the data partition (the disk's last) to the end of a bigger disk, and tells the
/// kernel its new size. Returns true if it grew.
fn grow_partition(part: &Partition) -> Result<bool, DataError> {
    let disk = part.disk_dev();
    let Some(disk_size) = blockdev::size_bytes(&part.disk) else {
        return Ok(false);
    };
    let io = |what: &str| {
        let what = format!("{what} {}", disk.display());
        move |source| DataError::Io { what, source }
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .map_err(io("open"))?;
    let grown = cairn_update::gpt::grow_last_partition(&mut f, disk_size)
        .map_err(|e| DataError::Tool("growing the partition table", e.to_string()))?;
    let Some(p) = grown else { return Ok(false) };
    f.sync_all().map_err(io("sync"))?;
    if p.name != LABEL {
        return Ok(false);
    }
    resize_kernel_partition(
        &f,
        part,
        p.first_lba * 512,
        (p.last_lba - p.first_lba + 1) * 512,
    )
    .map_err(io("resize partition on"))?;
    Ok(true)
}

/// BLKPG_RESIZE_PARTITION: the other partitions are in use, so the table cannot be re-read.
fn resize_kernel_partition(
    disk: &std::fs::File,
    part: &Partition,
    start: u64,
    length: u64,
) -> std::io::Result<()> {
    #[repr(C)]
    struct BlkpgPartition {
        start: i64,
        length: i64,
        pno: libc::c_int,
        devname: [u8; 64],
        volname: [u8; 64],
    }
    #[repr(C)]
    struct BlkpgIoctlArg {
        op: libc::c_int,
        flags: libc::c_int,
        datalen: libc::c_int,
        data: *mut libc::c_void,
    }
    const BLKPG: libc::c_ulong = 0x1269;
    const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
    let mut p = BlkpgPartition {
        start: start as i64,
        length: length as i64,
        pno: part.number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: &mut p as *mut BlkpgPartition as *mut libc::c_void,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: arg points to a correctly laid out blkpg_ioctl_arg that outlives the call.
    let ret = unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG as _, &mut arg) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn run_tool(tool: &'static str, args: &[&str]) -> Result<(), DataError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| DataError::Tool(tool, e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(DataError::Tool(
            tool,
            err.lines().last().unwrap_or("no output").to_string(),
        ));
    }
    Ok(())
}

/// Prepares and mounts the data partition on `target`.
pub fn mount(target: &Path) -> Result<(), DataError> {
    let part = blockdev::wait_for_label(LABEL, Duration::from_secs(5)).ok_or(DataError::Missing)?;
    let dev = part.dev();
    let state = ext4_state(&read_superblock(&dev)?);
    let grew = match grow_partition(&part) {
        Ok(g) => g,
        Err(e) => {
            info!("data partition not grown: {e}");
            false
        }
    };
    match state {
        FsState::NoFilesystem => {
            info!(
                "first boot: making the data filesystem on {}",
                dev.display()
            );
            let dev_s = dev.to_string_lossy();
            run_tool(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-L",
                    "cairn-data",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1",
                    &dev_s,
                ],
            )?;
        }
        FsState::Clean => info!("data filesystem was cleanly unmounted"),
        FsState::NeedsRecovery => {
            info!("data filesystem was not cleanly unmounted: the journal will be replayed")
        }
    }
    sys::mount(
        &dev.to_string_lossy(),
        target,
        "ext4",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME,
        None,
    )?;
    if grew && state != FsState::NoFilesystem {
        if let Err(e) = run_tool("resize2fs", &[&dev.to_string_lossy()]) {
            info!("data filesystem not grown: {e}");
        }
    }
    let size = blockdev::size_bytes(&part.name).unwrap_or(0);
    info!(
        "data partition {} ({} MiB) mounted on {}",
        dev.display(),
        size >> 20,
        target.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(state: u16, incompat: u32) -> Vec<u8> {
        let mut sb = vec![0u8; 1024];
        sb[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        sb[0x3A..0x3C].copy_from_slice(&state.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        sb
    }

    #[test]
    fn superblock_states() {
        assert_eq!(ext4_state(&vec![0u8; 1024]), FsState::NoFilesystem);
        assert_eq!(ext4_state(&sb(1, 0x2c0)), FsState::Clean);
        assert_eq!(ext4_state(&sb(1, 0x2c4)), FsState::NeedsRecovery);
    }
}
