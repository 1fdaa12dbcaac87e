//! Assembles the read-only root filesystem tree: package contents minus what a device never
//! reads (docs, man pages, locales, unused CNI plugins), the merged-/usr links, cairn's own
//! binaries and configuration, the container images baked in for offline pods, and the kernel
//! modules with a fresh `modules.dep`.

use crate::board::Board;
use crate::manifest::BakedImage;
use crate::oci;
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
    /// Container images written under [`IMAGES_DIR`].
    pub images: Vec<BakedImage>,
}

/// Where baked container images live in the root; the agent imports every `*.tar` here at
/// start, beside the ones on the data partition.
pub const IMAGES_DIR: &str = "usr/lib/cairn/images";

/// The name the busybox image is imported under: what a pod spec says for
/// `image: busybox` once the agent normalizes it.
pub const BUSYBOX_REFERENCE: &str = "docker.io/library/busybox:latest";

pub struct Binaries {
    pub init: PathBuf,
    pub cairn: PathBuf,
}

/// What the image needs to take updates: the keys it trusts and its anti-rollback floor.
pub struct UpdateTrust {
    pub keys: Vec<cairn_update::keys::PublicKey>,
    pub min_version: String,
    /// Tests only: `/usr/bin/cairn` exits at once, so the node never becomes healthy.
    pub broken_runtime: bool,
}

/// Where the root keeps the public keys it accepts update bundles from.
pub const UPDATE_KEYS_DIR: &str = "etc/cairn/update-keys";

pub fn assemble(
    board: &Board,
    pkgs: &[Package],
    bins: &Binaries,
    version: &str,
    trust: &UpdateTrust,
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
    install_update_trust(board, trust, &dir)?;
    let images = bake_images(board, &dir, work)?;
    depmod(&dir, &kernel_version)?;
    if decompress_late_modules(board, &dir, &kernel_version)? > 0 {
        depmod(&dir, &kernel_version)?;
    }

    Ok(Root {
        dir,
        kernel_version,
        kernel_image: kept_kernel,
        images,
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

/// Boot-control backend, architecture, trusted update keys and the anti-rollback floor.
fn install_update_trust(board: &Board, trust: &UpdateTrust, root: &Path) -> Result<()> {
    let etc = root.join("etc");
    let keys = root.join(UPDATE_KEYS_DIR);
    std::fs::create_dir_all(&keys)?;
    for k in &trust.keys {
        let name = format!("{}.pub", cairn_update::keys::short_id(&k.id()));
        std::fs::write(keys.join(name), k.to_pem())?;
    }
    std::fs::write(
        etc.join("cairn/boot-control"),
        format!("{}\n", board.bootloader.boot_control),
    )?;
    std::fs::write(etc.join("cairn/arch"), format!("{}\n", board.board.arch))?;
    std::fs::write(
        etc.join("cairn/min-version"),
        format!("{}\n", trust.min_version),
    )?;
    if board.bootloader.boot_control == "uboot-env" {
        // fw_printenv/fw_setenv (libubootenv) read the same redundant pair U-Boot does.
        let size = cairn_update::bootctl::uboot_env::ENV_SIZE;
        let [a, b] = cairn_update::bootctl::uboot_env::ENV_FILES;
        std::fs::write(
            etc.join("fw_env.config"),
            format!("/boot/{a} 0x0 {size:#x}\n/boot/{b} 0x0 {size:#x}\n"),
        )?;
    }
    if trust.broken_runtime {
        let cairn = root.join("usr/bin/cairn");
        std::fs::remove_file(&cairn)?;
        std::fs::write(
            &cairn,
            "#!/bin/sh\necho 'cairn: this image was built with --test-broken-runtime' >&2\nexit 1\n",
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cairn, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Writes the board's `root.images` as OCI archives into the root. They are built from the
/// root's own files (busybox-static of the board's architecture), so they match the device
/// and need no registry; the archives are byte-for-byte reproducible.
fn bake_images(board: &Board, root: &Path, work: &Path) -> Result<Vec<BakedImage>> {
    let images_dir = root.join(IMAGES_DIR);
    std::fs::create_dir_all(&images_dir)?;
    let mut baked = Vec::new();
    for name in &board.root.images {
        let (reference, config, tree) = match name.as_str() {
            "busybox" => {
                let tree = work.join("image-busybox");
                if tree.exists() {
                    std::fs::remove_dir_all(&tree)
                        .with_context(|| format!("clearing {}", tree.display()))?;
                }
                oci::busybox_rootfs(&root.join("usr/bin/busybox"), &tree)
                    .context("root.images: busybox")?;
                (BUSYBOX_REFERENCE, oci::ImageConfig::busybox(), tree)
            }
            other => bail!("root.images: no recipe for {other:?}"),
        };
        let out = images_dir.join(format!("{name}.tar"));
        oci::write_archive(&tree, reference, &board.board.arch, &config, &out)
            .with_context(|| format!("root.images: writing {}", out.display()))?;
        std::fs::remove_dir_all(&tree)?;
        baked.push(BakedImage::of(
            reference,
            &format!("{IMAGES_DIR}/{name}.tar"),
            &out,
        )?);
    }
    Ok(baked)
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

/// Stores the modules stage 2 loads (and what they depend on) uncompressed. Under emulation
/// the kernel's xz decompression dominates their load time, and it delays the runtime's
/// start; the squashfs compresses them anyway. Returns how many were decompressed.
fn decompress_late_modules(board: &Board, root: &Path, kernel_version: &str) -> Result<usize> {
    let (files, _) = crate::initramfs::module_files(root, kernel_version, &board.root.modules)
        .context("root.modules")?;
    let moddir = root.join("usr/lib/modules").join(kernel_version);
    let compressed: Vec<PathBuf> = files
        .iter()
        .filter(|f| f.ends_with(".ko.xz"))
        .map(|f| moddir.join(f))
        .collect();
    if compressed.is_empty() {
        return Ok(0);
    }
    crate::tool::run(
        Command::new("xz")
            .args(["--decompress", "--quiet"])
            .args(&compressed),
        "decompressing the root's late kernel modules",
    )?;
    Ok(compressed.len())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_board() -> Board {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/qemu-x86_64.toml");
        Board::load(&path).expect("shipped board")
    }

    /// A root with the host's busybox-static where the package puts it.
    fn root_with_busybox(dir: &Path) -> Option<PathBuf> {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            return None;
        }
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        std::fs::copy(busybox, root.join("usr/bin/busybox")).expect("copy busybox");
        Some(root)
    }

    #[test]
    fn busybox_image_is_baked_reproducibly() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let Some(root) = root_with_busybox(tmp.path()) else {
            panic!("/bin/busybox is missing: install busybox-static (make deps)");
        };
        let board = shipped_board();
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).expect("mkdir");

        let first = bake_images(&board, &root, &work).expect("bake");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].reference, BUSYBOX_REFERENCE);
        assert_eq!(first[0].path, "usr/lib/cairn/images/busybox.tar");
        let archive = root.join(&first[0].path);
        let bytes = std::fs::read(&archive).expect("archive written");
        assert_eq!(bytes.len() as u64, first[0].bytes);
        assert!(
            !work.join("image-busybox").exists(),
            "the scratch tree is removed"
        );

        let mut names = Vec::new();
        let mut index = String::new();
        let mut tar = ::tar::Archive::new(bytes.as_slice());
        for entry in tar.entries().expect("tar") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").to_string_lossy().to_string();
            if name == "index.json" {
                std::io::Read::read_to_string(&mut entry, &mut index).expect("index");
            }
            names.push(name);
        }
        assert!(names.contains(&"oci-layout".to_string()), "{names:?}");
        assert!(index.contains(BUSYBOX_REFERENCE), "{index}");
        assert!(index.contains("\"architecture\":\"amd64\""), "{index}");

        let second = bake_images(&board, &root, &work).expect("bake again");
        assert_eq!(first[0].sha256, second[0].sha256, "same inputs, same bytes");
    }
}
