//! Power-safe file updates: every state change on a boot partition goes through here.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `contents` in one step: a temporary file beside it is written and
/// flushed, then renamed over it, and the directory is flushed. A power cut leaves the old
/// file or the new one.
pub fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = parent(path);
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    rename(&tmp, path)
}

/// Renames `from` to `to`, then flushes the renamed file and the directory.
pub fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    // FAT keeps a file's size and first cluster in its directory entry, and Linux's vfat
    // writes the renamed entry with size 0 (or, over an existing file, with the replaced
    // file's clusters), leaving the real values to the file's later writeback. Until that
    // happens a power cut leaves an empty or wrong kernel. Flushing the file writes them.
    std::fs::File::open(to)?.sync_all()?;
    sync_dir(parent(to))
}

/// Flushes a directory's entries (the rename itself) to the disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A writer that starts the kernel's writeback of what it has written every few MiB,
/// instead of leaving it all to the final `fsync`: the storage then works while the next
/// chunks are still being produced, and the final flush has little left to do.
pub struct WritebackAhead<'a> {
    file: &'a std::fs::File,
    written: u64,
    started: u64,
}

/// How much is written before writeback of it is started.
const WRITEBACK_STEP: u64 = 8 << 20;

impl<'a> WritebackAhead<'a> {
    pub fn new(file: &'a std::fs::File) -> Self {
        WritebackAhead {
            file,
            written: 0,
            started: 0,
        }
    }
}

impl Write for WritebackAhead<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (&mut &*self.file).write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_STEP {
            use std::os::unix::io::AsRawFd;
            // SAFETY: a hint on a descriptor we borrow; it does not wait for the data.
            // Failure only means the final fsync does all the work, as it would anyway.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.started as libc::off64_t,
                    (self.written - self.started) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A read-only mount made writable for as long as this guard lives (the boot partition
/// while boot control changes it); read-only again when dropped.
pub struct Writable {
    path: std::ffi::CString,
    remounted: bool,
}

const BOOT_FLAGS: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

fn remount(path: &std::ffi::CStr, flags: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: plain syscall with valid C strings; NULL source/type are allowed for remounts.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Writable {
    /// Remounts `path` read-write when it is a read-only mount point; a plain directory (tests,
    /// hosts) is left as it is.
    pub fn new(path: &Path) -> std::io::Result<Writable> {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        let read_only = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() > 5 && Path::new(f[4]) == path && f[5].split(',').any(|o| o == "ro")
            });
        if read_only {
            remount(&c, BOOT_FLAGS)?;
        }
        Ok(Writable {
            path: c,
            remounted: read_only,
        })
    }
}

impl Drop for Writable {
    fn drop(&mut self) {
        if self.remounted {
            // SAFETY: flushing every filesystem before the remount; no arguments.
            unsafe { libc::sync() };
            let _ = remount(&self.path, BOOT_FLAGS | libc::MS_RDONLY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_leaves_only_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("autoboot.txt");
        replace_file(&p, b"old").unwrap();
        replace_file(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
