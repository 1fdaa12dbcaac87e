//! Giving memory back after load. glibc's allocator keeps what a burst freed in its arenas
//! (only the top of the main heap is returned by itself), so a server that served 500
//! watches and a request burst would stay at its peak for ever. Every few seconds the
//! server asks glibc to return free pages (`malloc_trim`); it costs a walk of the free
//! lists and nothing when there is nothing to return. musl (the device images) returns
//! freed memory by itself, so there this is nothing.

use std::time::Duration;

/// How often free memory is handed back.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Starts the trimming task (on glibc; nothing elsewhere).
pub fn spawn_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only releases free pages of glibc's own heaps; it takes
            // the allocator's locks itself and touches no memory in use.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
}
