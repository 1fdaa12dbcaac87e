//! Kernel modules in dependency order from `modules.dep`.

use crate::info;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The directory of the running kernel's modules.
pub fn module_dir(root: &Path) -> PathBuf {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    root.join("usr/lib/modules").join(release.trim())
}

fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Parses `modules.dep`: module name → (path, dependency paths).
pub fn parse_dep(text: &str) -> HashMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let (path, deps) = l.split_once(':')?;
            Some((
                name_of(path),
                (
                    path.to_string(),
                    deps.split_whitespace().map(str::to_string).collect(),
                ),
            ))
        })
        .collect()
}

/// Files to load for `names`, each after everything it depends on.
pub fn load_order(names: &[String], dep: &HashMap<String, (String, Vec<String>)>) -> Vec<String> {
    let deps_of: HashMap<&str, &Vec<String>> = dep.values().map(|(p, d)| (p.as_str(), d)).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    fn visit<'a>(
        p: &'a str,
        deps_of: &HashMap<&'a str, &'a Vec<String>>,
        seen: &mut HashSet<&'a str>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(p) {
            return;
        }
        if let Some(ds) = deps_of.get(p) {
            for d in ds.iter() {
                visit(d, deps_of, seen, out);
            }
        }
        out.push(p.to_string());
    }
    for n in names {
        if let Some((p, _)) = dep.get(&n.replace('-', "_")) {
            visit(p, &deps_of, &mut seen, &mut out);
        }
    }
    out
}

/// Loads `names` (and their dependencies) from `dir`, one thread per requested module so
/// the kernel verifies and links them on every CPU at once (dependencies shared by two
/// chains are loaded once; the second caller sees EEXIST). A module that fails is reported
/// and skipped: a missing optional driver must not stop the boot. Returns how many loaded.
/// `params` go to every module (the kernel accepts `async_probe=1` for any of them).
pub fn load(dir: &Path, names: &[String], params: &std::ffi::CStr) -> usize {
    let dep = match std::fs::read_to_string(dir.join("modules.dep")) {
        Ok(t) => parse_dep(&t),
        Err(e) => {
            info!("no modules.dep in {}: {e}", dir.display());
            return 0;
        }
    };
    let loaded = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for name in names {
            let chain = load_order(std::slice::from_ref(name), &dep);
            let loaded = &loaded;
            scope.spawn(move || {
                for file in chain {
                    match crate::sys::load_module(&dir.join(&file), params) {
                        Ok(true) => {
                            loaded.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) => info!("{e}"),
                    }
                }
            });
        }
    });
    loaded.into_inner()
}

/// Module names listed one per line (comments with #).
pub fn read_list(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_once() {
        let dep = parse_dep(
            "kernel/fs/fat/vfat.ko.xz: kernel/fs/fat/fat.ko.xz\nkernel/fs/fat/fat.ko.xz:\nkernel/fs/fat/msdos.ko.xz: kernel/fs/fat/fat.ko.xz\n",
        );
        let order = load_order(&["vfat".into(), "msdos".into(), "unknown".into()], &dep);
        assert_eq!(
            order,
            [
                "kernel/fs/fat/fat.ko.xz",
                "kernel/fs/fat/vfat.ko.xz",
                "kernel/fs/fat/msdos.ko.xz"
            ]
        );
    }
}
