//! Debian packages for one board: resolved and downloaded with mmdebstrap (apt does the
//! dependency work), then unpacked selectively with dpkg-deb so that packages a cairn root
//! never uses (systemd, initramfs-tools, ...) stay out even when something depends on them.

use crate::board::Board;
use crate::progress::Step;
use crate::tool;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One downloaded package file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    #[serde(skip)]
    pub file: PathBuf,
}

/// Where packages come from: `--mirror`, `CAIRN_MIRROR`, or the archive the host's apt
/// already uses. Never a name written into cairn.
pub fn mirror(explicit: Option<&str>) -> Result<String> {
    if let Some(m) = explicit.filter(|m| !m.is_empty()) {
        return Ok(m.trim_end_matches('/').to_string());
    }
    let out = Command::new("apt-get")
        .args([
            "indextargets",
            "--format",
            "$(REPO_URI) $(RELEASE) $(TARGET_OF)",
        ])
        .output()
        .context("running apt-get indextargets to find the host's Debian archive")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let codename = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(str::to_string))
        })
        .unwrap_or_default();
    let entries: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 3 && f[2] == "deb")
        .collect();
    let pick = entries.iter().find(|f| f[1] == codename).or_else(|| {
        entries
            .iter()
            .find(|f| f[0].trim_end_matches('/').ends_with("/debian"))
    });
    match pick {
        Some(f) => Ok(f[0].trim_end_matches('/').to_string()),
        None => bail!(
            "no Debian archive in apt's sources: run 'apt-get update' or pass --mirror <archive URI>"
        ),
    }
}

/// Downloads (or reuses from the cache) every package the board needs, dependencies included.
pub fn fetch(board: &Board, mirror: &str, cache: &Path) -> Result<Vec<Package>> {
    let mut wanted = vec![board.packages.kernel.clone()];
    wanted.extend(board.packages.include.iter().cloned());
    wanted.extend(board.bootloader.packages.iter().cloned());
    let key = {
        let mut h = Sha256::new();
        for part in [
            &board.board.arch,
            &board.packages.suite,
            &mirror.to_string(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for p in wanted.iter().chain(&board.packages.components) {
            h.update(p.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..8])
    };
    let dir = cache.join(format!(
        "debs-{}-{}-{key}",
        board.packages.suite, board.board.arch
    ));
    let archives = dir.join("var/cache/apt/archives");
    extract_cached(
        board,
        mirror,
        &dir,
        &wanted,
        &["--skip=cleanup/apt/cache"],
        &format!(
            "resolving and downloading {} packages for {} ({}) from {mirror}",
            wanted.len(),
            board.board.arch,
            board.packages.suite
        ),
    )?;
    let mut packages = Vec::new();
    for entry in
        std::fs::read_dir(&archives).with_context(|| format!("reading {}", archives.display()))?
    {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".deb") else {
            continue;
        };
        let fields: Vec<&str> = stem.split('_').collect();
        if fields.len() != 3 {
            continue;
        }
        packages.push(Package {
            name: fields[0].to_string(),
            version: fields[1].replace("%3a", ":"),
            arch: fields[2].to_string(),
            file: path.clone(),
        });
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    for w in &wanted {
        if !packages.iter().any(|p| &p.name == w) {
            bail!("package {w} was not downloaded; check packages in the board file");
        }
    }
    Ok(packages)
}

/// Unpacks `include` (with their dependencies) for the board's architecture and suite into
/// `dir` with `mmdebstrap --variant=extract`, unless a completed earlier run is there.
pub fn extract_cached(
    board: &Board,
    mirror: &str,
    dir: &Path,
    include: &[String],
    extra_args: &[&str],
    what: &str,
) -> Result<()> {
    if dir.join(".complete").exists() {
        return Ok(());
    }
    let step = Step::spinner(what);
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    tool::run(
        Command::new("mmdebstrap")
            .arg("--variant=extract")
            .arg(format!("--architectures={}", board.board.arch))
            .arg(format!(
                "--components={}",
                board.packages.components.join(",")
            ))
            .args(extra_args)
            .arg(format!("--include={}", include.join(",")))
            .arg("--quiet")
            .arg(&board.packages.suite)
            .arg(dir)
            .arg(mirror),
        &format!("fetching packages for {}", board.board.name),
    )?;
    std::fs::write(dir.join(".complete"), b"")?;
    step.done();
    Ok(())
}

/// Whether a package belongs in the root filesystem (not a bootloader-only or excluded one).
pub fn in_root(board: &Board, name: &str) -> bool {
    let excluded = board
        .packages
        .exclude
        .iter()
        .any(|pattern| glob_match::glob_match(pattern, name));
    !excluded && !board.bootloader.packages.iter().any(|p| p == name)
}

/// Unpacks one package's files into `dest`.
pub fn unpack(pkg: &Package, dest: &Path) -> Result<()> {
    tool::run(
        Command::new("dpkg-deb").arg("-x").arg(&pkg.file).arg(dest),
        &format!("unpacking {}", pkg.name),
    )?;
    Ok(())
}
