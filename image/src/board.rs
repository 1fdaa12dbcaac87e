//! Board files (`boards/<name>.toml`): what to build for one kind of device.
//! Every key is documented in `boards/README.md`; unknown keys are errors so a typo never
//! silently builds the wrong image.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub board: Identity,
    pub packages: Packages,
    pub initramfs: Initramfs,
    #[serde(default)]
    pub root: Root,
    pub bootloader: Bootloader,
    pub partitions: Partitions,
    pub console: Console,
    pub qemu: Option<Qemu>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub name: String,
    pub description: String,
    /// Debian architecture name (arm64, amd64, armhf).
    pub arch: String,
    /// Rust target triple the device binaries are built for.
    pub rust_target: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    pub suite: String,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    pub kernel: String,
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    pub cni_plugins: Vec<String>,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    pub modules: Vec<String>,
}

/// What stage 2 does on the root.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// Modules stage 2 loads in the background (not needed to reach the root).
    #[serde(default)]
    pub modules: Vec<String>,
    /// Container images baked into the root (`/usr/lib/cairn/images/<name>.tar`), which the
    /// agent imports at start so pods run with no registry. One of [`BAKED_IMAGES`].
    #[serde(default)]
    pub images: Vec<String>,
}

/// Images `root.images` can name: each is built from the root's own files for the board's
/// architecture, never downloaded.
pub const BAKED_IMAGES: &[&str] = &["busybox"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootloaderKind {
    /// U-Boot runs `boot.scr` from the boot partition.
    UBoot,
    /// UEFI firmware starts systemd-boot from the EFI system partition.
    SystemdBoot,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootloader {
    pub kind: BootloaderKind,
    #[serde(default)]
    pub packages: Vec<String>,
    /// The EFI binary installed as the removable-media default loader (systemd-boot only).
    pub loader: Option<String>,
    /// Files from the bootloader packages copied beside the image (what QEMU or a ROM loads).
    #[serde(default)]
    pub firmware: Vec<String>,
    pub boot_control: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    pub boot_mib: u64,
    pub root_mib: u64,
    pub data_mib: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Console {
    pub device: String,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default)]
    pub kernel_args: Vec<String>,
}

fn default_baud() -> u32 {
    115_200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    pub binary: String,
    pub machine: Vec<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Firmware passed with `-bios` (a file listed in `bootloader.firmware`).
    pub bios: Option<String>,
    /// UEFI code and variable store passed as pflash drives.
    pub pflash_code: Option<String>,
    pub pflash_vars: Option<String>,
}

/// One list of backends: the ones the update crate implements.
pub const BOOT_CONTROL_BACKENDS: &[&str] = &cairn_update::bootctl::BACKENDS;

impl Board {
    pub fn load(path: &Path) -> Result<Board, BoardError> {
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Board, BoardError> {
        let board: Board = toml::from_str(text).map_err(|e| BoardError::Parse {
            path: path.to_owned(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0),
            message: e.message().replace('\n', " "),
        })?;
        board
            .validate()
            .map_err(|(key, message)| BoardError::Invalid {
                path: path.to_owned(),
                key,
                message,
            })?;
        Ok(board)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let name_ok = !self.board.name.is_empty()
            && self
                .board
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(("board.name", "must be letters, digits, '-' or '_'".into()));
        }
        if !["arm64", "amd64", "armhf"].contains(&self.board.arch.as_str()) {
            return Err((
                "board.arch",
                format!(
                    "unsupported architecture {:?} (arm64, amd64, armhf)",
                    self.board.arch
                ),
            ));
        }
        let p = &self.partitions;
        if !(16..=1024).contains(&p.boot_mib) {
            return Err((
                "partitions.boot_mib",
                format!("{} MiB is impossible: use 16 to 1024", p.boot_mib),
            ));
        }
        if !(32..=16384).contains(&p.root_mib) {
            return Err((
                "partitions.root_mib",
                format!("{} MiB is impossible: use 32 to 16384", p.root_mib),
            ));
        }
        if !(16..=65536).contains(&p.data_mib) {
            return Err((
                "partitions.data_mib",
                format!("{} MiB is impossible: use 16 to 65536", p.data_mib),
            ));
        }
        if !BOOT_CONTROL_BACKENDS.contains(&self.bootloader.boot_control.as_str()) {
            return Err((
                "bootloader.boot_control",
                format!(
                    "unknown backend {:?} (one of {})",
                    self.bootloader.boot_control,
                    BOOT_CONTROL_BACKENDS.join(", ")
                ),
            ));
        }
        if self.bootloader.kind == BootloaderKind::SystemdBoot && self.bootloader.loader.is_none() {
            return Err((
                "bootloader.loader",
                "systemd-boot needs the path of its EFI binary".into(),
            ));
        }
        if self.packages.cni_plugins.is_empty() {
            return Err((
                "packages.cni_plugins",
                "list at least the bridge, host-local and loopback plugins".into(),
            ));
        }
        if let Some(unknown) = self
            .root
            .images
            .iter()
            .find(|i| !BAKED_IMAGES.contains(&i.as_str()))
        {
            return Err((
                "root.images",
                format!(
                    "unknown image {unknown:?} (one of {})",
                    BAKED_IMAGES.join(", ")
                ),
            ));
        }
        if self.console.device.is_empty() || self.console.device.contains('/') {
            return Err((
                "console.device",
                "a device name such as ttyS0 or ttyAMA0".into(),
            ));
        }
        if let Some(q) = &self.qemu {
            let firmware_names: Vec<&str> = self
                .bootloader
                .firmware
                .iter()
                .filter_map(|f| f.rsplit('/').next())
                .collect();
            for (key, file) in [
                ("qemu.bios", &q.bios),
                ("qemu.pflash_code", &q.pflash_code),
                ("qemu.pflash_vars", &q.pflash_vars),
            ] {
                if let Some(file) = file {
                    if !firmware_names.contains(&file.as_str()) {
                        return Err((key, format!("{file:?} is not one of bootloader.firmware")));
                    }
                }
            }
            if q.memory_mib < 256 {
                return Err(("qemu.memory_mib", "at least 256 MiB".into()));
            }
        }
        Ok(())
    }

    /// The kernel command line shared by every slot; the bootloader adds `cairn.slot=`.
    pub fn kernel_cmdline(&self) -> String {
        let mut args = vec![format!(
            "console={},{}",
            self.console.device, self.console.baud
        )];
        args.extend(self.console.kernel_args.iter().cloned());
        args.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> (PathBuf, String) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../boards")
            .join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).expect("board file shipped with the repo");
        (path, text)
    }

    #[test]
    fn shipped_boards_load() {
        for name in ["qemu-aarch64", "qemu-x86_64"] {
            let (path, text) = shipped(name);
            let board = Board::parse(&path, &text).expect("valid board");
            assert_eq!(board.board.name, name);
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let (path, text) = shipped("qemu-aarch64");
        let text = text.replace("root_mib = 160", "root_mib = 160\nbogus_key = 1");
        let err = Board::parse(&path, &text).unwrap_err().to_string();
        assert!(err.contains("bogus_key"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn missing_field_is_named() {
        let (path, text) = shipped("qemu-aarch64");
        let text = text.replace("root_mib = 160\n", "");
        let err = Board::parse(&path, &text).unwrap_err().to_string();
        assert!(err.contains("root_mib"), "{err}");
    }

    #[test]
    fn impossible_sizes_are_refused() {
        let (path, text) = shipped("qemu-x86_64");
        let text = text.replace("root_mib = 160", "root_mib = 0");
        let err = Board::parse(&path, &text).unwrap_err().to_string();
        assert!(err.contains("partitions.root_mib"), "{err}");
    }

    #[test]
    fn only_known_images_can_be_baked() {
        let (path, text) = shipped("qemu-aarch64");
        let board = Board::parse(&path, &text).expect("valid board");
        assert_eq!(board.root.images, ["busybox"]);
        let text = text.replace("images = [\"busybox\"]", "images = [\"nginx\"]");
        let err = Board::parse(&path, &text).unwrap_err().to_string();
        assert!(
            err.contains("root.images") && err.contains("nginx"),
            "{err}"
        );
    }

    #[test]
    fn qemu_firmware_must_come_from_the_bootloader() {
        let (path, text) = shipped("qemu-aarch64");
        let text = text.replace("bios = \"u-boot.bin\"", "bios = \"other.bin\"");
        let err = Board::parse(&path, &text).unwrap_err().to_string();
        assert!(err.contains("qemu.bios"), "{err}");
    }
}
