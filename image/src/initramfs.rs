//! The initramfs: cairn-init as /init, and the board's kernel modules with everything they
//! depend on (from the root's `modules.dep`), so stage 1 can reach the root partition.

use crate::cpio::CpioWriter;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `modules.dep` as module name → (path, direct dependencies' paths).
pub type ModulesDep = BTreeMap<String, (String, Vec<String>)>;

/// Parses `modules.dep`.
pub fn parse_modules_dep(text: &str) -> ModulesDep {
    text.lines()
        .filter_map(|line| {
            let (path, deps) = line.split_once(':')?;
            let deps = deps.split_whitespace().map(str::to_string).collect();
            Some((module_name(path), (path.to_string(), deps)))
        })
        .collect()
}

/// `kernel/fs/overlayfs/overlay.ko.xz` → `overlay`; dashes and underscores are the same to
/// the kernel, and we normalise to underscores.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The module files to ship, dependencies first, for the requested names. Names that are
/// built into the kernel (`modules.builtin`) need nothing.
pub fn resolve(
    requested: &[String],
    dep: &ModulesDep,
    builtin: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let by_path: BTreeMap<&str, &Vec<String>> =
        dep.values().map(|(p, d)| (p.as_str(), d)).collect();
    let mut ordered = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        path: &str,
        by_path: &BTreeMap<&str, &Vec<String>>,
        seen: &mut BTreeSet<String>,
        ordered: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_string()) {
            return;
        }
        if let Some(deps) = by_path.get(path) {
            for d in deps.iter() {
                visit(d, by_path, seen, ordered);
            }
        }
        ordered.push(path.to_string());
    }
    for name in requested {
        let name = name.replace('-', "_");
        match dep.get(&name) {
            Some((path, _)) => visit(path, &by_path, &mut seen, &mut ordered),
            None if builtin.contains(&name) => {}
            None => bail!("no kernel module named {name:?} in this kernel"),
        }
    }
    Ok(ordered)
}

/// The module files (dependencies first) for `names` in the root's kernel, and the parsed
/// `modules.dep`. Fails naming the first module this kernel does not have.
pub fn module_files(
    root: &Path,
    kernel_version: &str,
    names: &[String],
) -> Result<(Vec<String>, ModulesDep)> {
    let moddir = root.join("usr/lib/modules").join(kernel_version);
    let dep_text = std::fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("reading modules.dep in {}", moddir.display()))?;
    let dep = parse_modules_dep(&dep_text);
    let builtin: BTreeSet<String> = std::fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    Ok((resolve(names, &dep, &builtin)?, dep))
}

/// Writes the initramfs to `out`. `root` is the assembled root (for modules), `init` the
/// cairn-init binary, `modules` the names from the board file.
pub fn build(
    root: &Path,
    kernel_version: &str,
    init: &Path,
    modules: &[String],
    mtime: u32,
    out: &Path,
) -> Result<usize> {
    let moddir = root.join("usr/lib/modules").join(kernel_version);
    let (files, dep) = module_files(root, kernel_version, modules)?;

    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = CpioWriter::new(std::io::BufWriter::new(file), mtime);
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "sysroot",
        "etc",
        "etc/cairn",
        "usr",
        "usr/lib",
    ] {
        cpio.add_dir(d, 0o755)?;
    }
    cpio.add_char_device("dev/console", 0o600, 5, 1)?;
    cpio.add_symlink("lib", "usr/lib")?;
    let init_bytes = std::fs::read(init).with_context(|| format!("reading {}", init.display()))?;
    cpio.add_file("init", 0o755, &init_bytes)?;

    let base = format!("usr/lib/modules/{kernel_version}");
    let mut dirs = BTreeSet::new();
    dirs.insert("usr/lib/modules".to_string());
    dirs.insert(base.clone());
    for f in &files {
        let mut parent = Path::new(f).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(format!("{base}/{}", p.display()));
            parent = p.parent();
        }
    }
    for d in &dirs {
        cpio.add_dir(d, 0o755)?;
    }
    // Modules are stored decompressed: the kernel's in-place decompression is the slowest
    // part of stage 1 under emulation, and the initramfs itself is not compressed.
    for f in &files {
        let data = read_module(&moddir.join(f))?;
        cpio.add_file(&format!("{base}/{}", plain_name(f)), 0o644, &data)?;
    }
    // Only the shipped modules, so init never looks for a file that is not there.
    let mut dep_out = String::new();
    for f in &files {
        let (_, deps) = &dep[&module_name(f)];
        let deps: Vec<&str> = deps.iter().map(|d| plain_name(d)).collect();
        dep_out.push_str(&format!("{}: {}\n", plain_name(f), deps.join(" ")));
    }
    cpio.add_file(&format!("{base}/modules.dep"), 0o644, dep_out.as_bytes())?;
    let list: String = modules.iter().map(|m| format!("{m}\n")).collect();
    cpio.add_file("etc/cairn/modules", 0o644, list.as_bytes())?;
    cpio.finish()?;
    Ok(files.len())
}

/// `x.ko.xz` → `x.ko`.
fn plain_name(path: &str) -> &str {
    path.strip_suffix(".xz")
        .or_else(|| path.strip_suffix(".zst"))
        .or_else(|| path.strip_suffix(".gz"))
        .unwrap_or(path)
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return std::fs::read(path).with_context(|| format!("reading module {name}"));
    };
    crate::tool::run(
        std::process::Command::new(tool).arg("-dc").arg(path),
        &format!("decompressing module {name}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/overlayfs/overlay.ko.xz:\n\
kernel/drivers/block/virtio_blk.ko.xz:\n\
kernel/fs/fat/vfat.ko.xz: kernel/fs/fat/fat.ko.xz\n\
kernel/fs/fat/fat.ko.xz:\n\
kernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz kernel/net/llc/llc.ko.xz\n\
kernel/net/bridge/bridge.ko.xz: kernel/net/llc/llc.ko.xz\n\
kernel/net/llc/llc.ko.xz:\n";

    #[test]
    fn dependencies_come_before_the_module() {
        let dep = parse_modules_dep(DEP);
        let got = resolve(&["br-netfilter".into()], &dep, &BTreeSet::new()).unwrap();
        assert_eq!(
            got,
            [
                "kernel/net/llc/llc.ko.xz",
                "kernel/net/bridge/bridge.ko.xz",
                "kernel/net/bridge/br_netfilter.ko.xz"
            ]
        );
    }

    #[test]
    fn builtin_modules_need_nothing_and_unknown_ones_fail() {
        let dep = parse_modules_dep(DEP);
        let builtin: BTreeSet<String> = ["ext4".to_string()].into();
        assert!(resolve(&["ext4".into()], &dep, &builtin)
            .unwrap()
            .is_empty());
        let err = resolve(&["nope".into()], &dep, &builtin).unwrap_err();
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn shared_dependencies_are_listed_once() {
        let dep = parse_modules_dep(DEP);
        let got = resolve(&["vfat".into(), "fat".into()], &dep, &BTreeSet::new()).unwrap();
        assert_eq!(got, ["kernel/fs/fat/fat.ko.xz", "kernel/fs/fat/vfat.ko.xz"]);
    }
}
