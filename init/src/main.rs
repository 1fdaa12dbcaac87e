//! cairn-init: PID 1. Stage 1 runs from the initramfs and switches to the slot's read-only
//! root; stage 2 runs there, brings the node up and supervises its services.

mod config;
mod data;
mod log;
mod modules;
mod net;
mod stage1;
mod stage2;
mod supervisor;
mod sys;
mod trial;

use std::time::Duration;

fn main() {
    // The kernel starts PID 1 with almost no environment; tools are found through PATH.
    std::env::set_var("PATH", "/usr/sbin:/usr/bin");
    let stage2 = std::env::args().nth(1).as_deref() == Some("stage2") || !in_initramfs();
    if stage2 {
        let marks = std::env::var(log::MARKS_ENV).unwrap_or_default();
        stage2::run(&marks);
    }
    let start = log::boot_ms();
    match stage1::run(start) {
        Ok(never) => match never {},
        Err(e) => {
            info!("stage 1 failed: {e}");
            info!(
                "rebooting in 10 s (the bootloader's counter falls back after repeated failures)"
            );
            std::thread::sleep(Duration::from_secs(10));
            info!("{}", sys::reboot(libc::LINUX_REBOOT_CMD_RESTART));
        }
    }
}

/// The initramfs is a ramfs/tmpfs root; the real root is squashfs.
fn in_initramfs() -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    // SAFETY: statfs fills the struct we own; the path is a static C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c"/".as_ptr(), &mut st) } != 0 {
        return false;
    }
    let t = st.f_type as i64;
    t == RAMFS_MAGIC || t == TMPFS_MAGIC
}
