//! Console output for PID 1: every line goes to the console (init's stdout is /dev/console)
//! prefixed with `cairn-init:` so tests and humans can grep it.

use std::io::Write;

pub fn line(msg: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // A console write failure has nowhere to be reported; PID 1 must go on.
    let _ = writeln!(out, "cairn-init: {msg}");
    let _ = out.flush();
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
