//! The read-only root as a deterministic zstd squashfs.

use crate::progress::Step;
use anyhow::Result;
use std::path::Path;
use std::process::Command;

pub fn build(root: &Path, out: &Path, source_date_epoch: u64) -> Result<u64> {
    if out.exists() {
        std::fs::remove_file(out)?;
    }
    let step = Step::spinner("compressing the root filesystem (squashfs, zstd)");
    let epoch = source_date_epoch.to_string();
    crate::tool::run(
        Command::new("mksquashfs")
            .arg(root)
            .arg(out)
            .args(["-comp", "zstd", "-Xcompression-level", "19", "-b", "256K"])
            .args([
                "-noappend",
                "-no-xattrs",
                "-all-root",
                "-quiet",
                "-no-progress",
            ])
            // mksquashfs refuses SOURCE_DATE_EPOCH together with explicit times.
            .args(["-mkfs-time", &epoch, "-all-time", &epoch])
            .env_remove("SOURCE_DATE_EPOCH"),
        "compressing the root filesystem",
    )?;
    step.done();
    Ok(std::fs::metadata(out)?.len())
}
