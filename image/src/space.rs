//! Free disk space, checked before a build writes anything: a build that runs out of space
//! half-way fails deep inside a tool (tar, mksquashfs) with an error that hides the cause.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// What one board's build writes at most: its work tree, the image and bundle, and the
/// package cache (measured: about 1.2 GiB for qemu-x86_64), with room to spare.
pub const BUILD_NEEDS: u64 = 2 << 30;

/// Bytes an unprivileged writer may still use on the filesystem holding `dir` (or, when
/// `dir` does not exist yet, its nearest existing ancestor).
pub fn available(dir: &Path) -> Result<u64> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p,
            _ => {
                probe = Path::new(".");
                break;
            }
        }
    }
    let st = rustix::fs::statvfs(probe)
        .with_context(|| format!("reading the free space of {}", probe.display()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Fails, before anything is written, when `dir` has less than `need` bytes free.
pub fn ensure(dir: &Path, need: u64) -> Result<()> {
    let free = available(dir)?;
    if free < need {
        bail!(
            "only {} MiB free for {} but a build needs {} MiB: free some space or pass --out on a larger disk",
            free >> 20,
            dir.display(),
            need >> 20
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_nearest_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let free = available(dir.path()).unwrap();
        assert!(free > 0);
        let missing = dir.path().join("a/b/c");
        let below = available(&missing).unwrap();
        // Same filesystem: the two readings differ only by what others wrote meanwhile.
        assert!(below.abs_diff(free) < 1 << 30, "{below} vs {free}");
    }

    #[test]
    fn refuses_a_need_larger_than_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure(dir.path(), u64::MAX).unwrap_err().to_string();
        assert!(err.contains("MiB free for"), "{err}");
        assert!(err.contains("larger disk"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        ensure(dir.path(), 1).unwrap();
    }
}
