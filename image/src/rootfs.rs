//! Assembles the read-only root filesystem tree: package contents minus what a device never
//! reads (docs, man pages, locales, unused CNI plugins), the merged-/usr links, cairn's own
//! binaries and configuration, and the kernel modules with a fresh `modules.dep`.

use crate::board::Board;
use crate::packages::{self, Package};
use crate::progress::Step;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Paths (relative to the root) removed after unpacking: nothing on the device reads them.
const PRUNED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/bash-completion",
    "usr/share/zsh",
    "usr/share/fish",
    "usr/share/initramfs-tools",
    "usr/lib/tmpfiles.d",
    "usr/lib/systemd",
    "etc/systemd",
    "etc/init.d",
    "etc/default",
    "etc/kernel",
    "var",
    "boot",
    "usr/bin/containerd-shim",
    "usr/bin/containerd-shim-runc-v1",
    "usr/bin/containerd-stress",
];

/// busybox applets linked into /usr/bin for the console shell and for scripts.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ash",
    "ls",
    "cat",
    "cp",
    "mv",
    "rm",
    "mkdir",
    "rmdir",
    "ln",
    "touch",
    "echo",
    "sleep",
    "sync",
    "mount",
    "umount",
    "ps",
    "kill",
    "dmesg",
    "ip",
    "ping",
    "df",
    "du",
    "free",
    "top",
    "vi",
    "grep",
    "sed",
    "awk",
    "find",
    "head",
    "tail",
    "wc",
    "sort",
    "uniq",
    "tr",
    "cut",
    "date",
    "uname",
    "hostname",
    "id",
    "env",
    "test",
    "[",
    "true",
    "false",
    "stat",
    "chmod",
    "chown",
    "less",
    "more",
    "hexdump",
    "md5sum",
    "sha256sum",
    "wget",
    "nc",
    "netstat",
    "nslookup",
    "reboot",
    "poweroff",
    "halt",
    "lsmod",
    "mountpoint",
    "readlink",
    "realpath",
    "basename",
    "dirname",
    "xargs",
    "tee",
    "dd",
    "printf",
    "which",
    "seq",
    "expr",
    "yes",
    "clear",
    "reset",
];

pub struct Root {
    pub dir: PathBuf,
    pub kernel_version: String,
    pub kernel_image: PathBuf,
}

pub struct Binaries {
    pub init: PathBuf,
    pub cairn: PathBuf,
}

pub fn assemble(
    board: &Board,
    pkgs: &[Package],
    bins: &Binaries,
    version: &str,
    work: &Path,
) -> Result<Root> {
    let dir = work.join("rootfs");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;

    let root_pkgs: Vec<&Package> = pkgs
        .iter()
        .filter(|p| packages::in_root(board, &p.name))
        .collect();
    let step = Step::counted("unpacking packages into the root", root_pkgs.len() as u64);
    for p in &root_pkgs {
        packages::unpack(p, &dir)?;
        step.inc();
    }
    step.done();

    // Kernel image goes to the boot partition, not the root.
    let boot = dir.join("boot");
    let kernel_image = std::fs::read_dir(&boot)
        .context("the kernel package left no /boot")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-") || n.starts_with("vmlinux-"))
        })
        .context("no vmlinuz-* in the kernel package")?;
    let kernel_version = kernel_image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('-').map(|(_, v)| v.to_string()))
        .context("kernel file name has no version")?;
    let kept_kernel = work.join("vmlinuz");
    std::fs::copy(&kernel_image, &kept_kernel)?;

    for p in PRUNED {
        let path = dir.join(p);
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else if path.exists() || path.is_symlink() {
            std::fs::remove_file(&path)?;
        }
    }
    prune_cni(board, &dir)?;
    merged_usr_links(&dir)?;
    busybox_links(&dir)?;
    install_cairn(board, bins, version, &dir)?;
    depmod(&dir, &kernel_version)?;

    Ok(Root {
        dir,
        kernel_version,
        kernel_image: kept_kernel,
    })
}

fn prune_cni(board: &Board, root: &Path) -> Result<()> {
    let cni = root.join("usr/lib/cni");
    if !cni.is_dir() {
        bail!("containernetworking-plugins left no /usr/lib/cni");
    }
    for plugin in &board.packages.cni_plugins {
        if !cni.join(plugin).exists() {
            bail!("packages.cni_plugins: plugin {plugin:?} is not in containernetworking-plugins");
        }
    }
    for entry in std::fs::read_dir(&cni)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !board.packages.cni_plugins.contains(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Debian's packages ship everything under /usr; the classic paths are links (as usrmerge makes).
fn merged_usr_links(root: &Path) -> Result<()> {
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        let path = root.join(link);
        if path.exists() || path.is_symlink() {
            continue;
        }
        if root.join(target).exists() {
            symlink(target, &path)?;
        }
    }
    Ok(())
}

fn busybox_links(root: &Path) -> Result<()> {
    let bin = root.join("usr/bin");
    if !bin.join("busybox").exists() {
        bail!("busybox-static is missing from the root");
    }
    for applet in BUSYBOX_APPLETS {
        let path = bin.join(applet);
        let in_sbin = root.join("usr/sbin").join(applet);
        if path.exists() || path.is_symlink() || in_sbin.exists() {
            continue;
        }
        symlink("busybox", &path)?;
    }
    Ok(())
}

fn install_cairn(board: &Board, bins: &Binaries, version: &str, root: &Path) -> Result<()> {
    let sbin = root.join("usr/sbin");
    std::fs::create_dir_all(&sbin)?;
    std::fs::copy(&bins.init, sbin.join("cairn-init"))
        .with_context(|| format!("copying {}", bins.init.display()))?;
    std::fs::copy(&bins.cairn, root.join("usr/bin/cairn"))
        .with_context(|| format!("copying {}", bins.cairn.display()))?;
    let init_link = sbin.join("init");
    if !init_link.exists() {
        symlink("cairn-init", init_link)?;
    }
    // Mount points for stage 2; /var is the data partition, /boot the boot partition.
    for d in [
        "proc", "sys", "dev", "run", "tmp", "var", "boot", "root", "mnt",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let etc = root.join("etc");
    std::fs::create_dir_all(etc.join("cairn"))?;
    std::fs::create_dir_all(etc.join("containerd"))?;
    let files: Vec<(PathBuf, String)> = vec![
        (
            etc.join("os-release"),
            format!(
                "NAME=cairn\nID=cairn\nPRETTY_NAME=\"cairn {version} ({})\"\nVERSION={version}\nVERSION_ID={version}\nVARIANT_ID={}\nHOME_URL=\"https://github.com/cairn-os/cairn\"\n",
                board.board.name, board.board.name
            ),
        ),
        (etc.join("cairn/version"), format!("{version}\n")),
        (etc.join("cairn/board"), format!("{}\n", board.board.name)),
        (
            etc.join("cairn/modules"),
            board.root.modules.iter().map(|m| format!("{m}\n")).collect(),
        ),
        (etc.join("hostname"), "cairn\n".into()),
        (
            etc.join("hosts"),
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n".into(),
        ),
        (etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n".into()),
        (etc.join("group"), "root:x:0:\n".into()),
        (etc.join("shadow"), "root:*:0:0:99999:7:::\n".into()),
        (etc.join("nsswitch.conf"), "hosts: files dns\npasswd: files\ngroup: files\n".into()),
        (etc.join("containerd/config.toml"), CONTAINERD_CONFIG.into()),
    ];
    for (path, content) in files {
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    // resolv.conf is written at run time by init into /run.
    let resolv = etc.join("resolv.conf");
    if resolv.exists() || resolv.is_symlink() {
        std::fs::remove_file(&resolv)?;
    }
    symlink("../run/resolv.conf", resolv)?;
    Ok(())
}

/// containerd state lives on the data partition and its socket under /run.
const CONTAINERD_CONFIG: &str = r#"# Written by cairn-image.
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

# cairn's agent drives containerd through its own API, not the CRI.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[debug]
  level = "warn"

# The root is read-only; containerd's optional-binaries directory lives on the data partition.
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"

[grpc]
  address = "/run/containerd/containerd.sock"
"#;

fn depmod(root: &Path, kernel_version: &str) -> Result<()> {
    crate::tool::run(
        Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(kernel_version),
        "indexing kernel modules",
    )?;
    Ok(())
}
