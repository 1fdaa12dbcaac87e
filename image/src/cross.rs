//! A C cross toolchain for the device binaries' C parts (SQLite, ring): clang targeting the
//! board's musl triple, with musl's headers for that architecture unpacked from the board's
//! own Debian suite. No cross gcc and no change to the host's dpkg architectures needed.

use crate::board::Board;
use crate::tool;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variables the `cc` crate reads for the board's Rust target.
pub fn c_toolchain_env(board: &Board, mirror: &str, cache: &Path) -> Result<Vec<(String, String)>> {
    let target = &board.board.rust_target;
    let Some(clang_triple) = clang_triple(target) else {
        // Not a musl target: the target's own C toolchain is expected on PATH.
        return Ok(Vec::new());
    };
    let sysroot = musl_headers(board, mirror, cache)?;
    // The C compiler runs in each crate's own directory: the path must be absolute.
    let include = std::fs::canonicalize(sysroot.join("usr/include").join(&clang_triple))
        .with_context(|| format!("musl-dev for {} has no headers", board.board.arch))?;
    if !include.join("stdio.h").exists() {
        bail!(
            "musl-dev for {} has no headers at {}",
            board.board.arch,
            include.display()
        );
    }
    let resource = String::from_utf8_lossy(&tool::run(
        Command::new("clang").arg("-print-resource-dir"),
        "finding clang's own headers",
    )?)
    .trim()
    .to_string();
    let var = target.replace('-', "_");
    let cflags = format!(
        "--target={clang_triple} -nostdinc -isystem {} -isystem {resource}/include",
        include.display()
    );
    Ok(vec![
        (format!("CC_{var}"), "clang".into()),
        (format!("AR_{var}"), "llvm-ar".into()),
        (format!("CFLAGS_{var}"), cflags),
    ])
}

/// `aarch64-unknown-linux-musl` → `aarch64-linux-musl`, the name musl-dev's headers use.
fn clang_triple(rust_target: &str) -> Option<String> {
    let (arch, rest) = rust_target.split_once('-')?;
    rest.ends_with("linux-musl")
        .then(|| format!("{arch}-linux-musl"))
}

fn musl_headers(board: &Board, mirror: &str, cache: &Path) -> Result<PathBuf> {
    let dir = cache.join(format!(
        "musl-sysroot-{}-{}",
        board.packages.suite, board.board.arch
    ));
    crate::packages::extract_cached(
        board,
        mirror,
        &dir,
        &["musl-dev".to_string()],
        &[],
        &format!("fetching musl headers for {}", board.board.arch),
    )?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clang_triples() {
        assert_eq!(
            clang_triple("aarch64-unknown-linux-musl").as_deref(),
            Some("aarch64-linux-musl")
        );
        assert_eq!(
            clang_triple("x86_64-unknown-linux-musl").as_deref(),
            Some("x86_64-linux-musl")
        );
        assert_eq!(clang_triple("armv7-unknown-linux-gnueabihf"), None);
    }
}
