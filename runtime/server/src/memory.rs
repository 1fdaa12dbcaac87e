//! Giving memory back after load. glibc's allocator keeps what a burst freed in its arenas
//! (only the top of the main heap is returned by itself), so a server that served 500
//! watches and a request burst would stay at its peak for ever. Every few seconds the
//! server asks glibc to return free pages (`malloc_trim`); it costs a walk of the free
//! lists and nothing when there is nothing to return. glibc also gives every thread that
//! allocates at once an arena of its own (up to 8 per core), each fragmenting on its own;
//! the server's threads (async workers, SQLite readers) share two. musl (the device images)
//! returns freed memory by itself and has no arenas, so there this is nothing.

use std::time::Duration;

/// How often free memory is handed back.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// How many malloc arenas the process's threads share.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Caps the arenas and starts the trimming task (on glibc; nothing elsewhere). Called
/// first in the server, before it starts threads of its own.
pub fn hold_down() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; arenas made before keep working.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
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
