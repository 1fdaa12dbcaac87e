//! Console output for PID 1: every line goes to the console (init's stdout is /dev/console)
//! prefixed with `cairn-init:` so tests and humans can grep it.

use std::io::Write;

pub fn line(msg: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // A console write failure has nowhere to be reported; PID 1 must go on.
    let _ = writeln!(out, "cairn-init: {msg}");
    let _ = out.flush();
}

/// Waits (at most `max`) until the console has sent what was written to it. Ending a
/// shell on the console hangs the terminal up, and a hang-up throws away output not yet
/// sent: on a slow serial line that would be the last lines before a reboot.
pub fn drain_console(max: std::time::Duration) {
    let deadline = std::time::Instant::now() + max;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one int into `queued`; on a non-terminal it fails.
        let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCOUTQ, &mut queued) } == 0;
        if !ok || queued == 0 || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}

/// Milliseconds since the kernel started (CLOCK_BOOTTIME), the clock `boot_ms` is read on.
pub fn boot_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Stage 1 hands its timing marks (`key=ms ...`) to stage 2 in this variable.
pub const MARKS_ENV: &str = "CAIRN_INIT_MARKS";

/// The `pid1_start_ms` mark, or now when stage 1 did not run (no initramfs).
pub fn pid1_start_ms(marks: &str) -> u64 {
    marks
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("pid1_start_ms=")?.parse().ok())
        .unwrap_or_else(boot_ms)
}
