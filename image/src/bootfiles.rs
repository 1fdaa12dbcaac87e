//! What goes on the boot partition: per-slot kernel and initramfs, the bootloader's own files
//! (U-Boot boot script or systemd-boot with its entries) and the editable `cairn.toml`.

use crate::board::{Board, BootloaderKind};
use anyhow::{Context, Result};
use cairn_update::Slot;
use std::io::Read;
use std::path::Path;

/// (path on the FAT partition, contents)
pub type BootFile = (String, Vec<u8>);

pub struct SlotBoot<'a> {
    pub slot: Slot,
    pub kernel: &'a [u8],
    pub initramfs: &'a [u8],
}

/// The node configuration written on the boot partition: a user edits it on a laptop after
/// flashing; cairn-init merges it over the persisted copy at every boot.
pub const DEFAULT_CAIRN_TOML: &str = r#"# cairn node configuration, read at every boot. Edit it on any computer after flashing.

# hostname = "cairn"             # default: cairn-<last 6 hex digits of the first MAC>

[network]
mode = "dhcp"                    # "dhcp", "static" or "off"
# address = "192.168.1.50/24"    # mode = "static" only
# gateway = "192.168.1.1"
# dns = ["192.168.1.1"]

[console]
shell = true                     # a root shell on the serial console

[runtime]
role = "server"                  # "server", "agent" or "none"

[update]
# health_timeout = "5m"          # a new slot must bring the node to Ready within this, or it is rolled back
"#;

/// A kernel as the bootloader wants it. arm64 kernels in Debian are a gzip-compressed `Image`
/// that U-Boot's `booti` cannot start, so those are decompressed here.
pub fn bootable_kernel(vmlinuz: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 3);
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .context("decompressing the kernel image")?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

pub fn kernel_file_name(board: &Board) -> &'static str {
    match board.bootloader.kind {
        BootloaderKind::UBoot => "Image",
        BootloaderKind::SystemdBoot => "vmlinuz",
    }
}

pub fn files(
    board: &Board,
    version: &str,
    slots: &[SlotBoot<'_>],
    loader_efi: Option<&[u8]>,
    mtime: u32,
) -> Result<Vec<BootFile>> {
    let mut files: Vec<BootFile> = Vec::new();
    let kernel_name = kernel_file_name(board);
    // Both slot directories exist from the start, so an update only ever replaces files in
    // them (see cairn_update::install).
    for slot in Slot::ALL {
        files.push((
            format!(
                "{}/{}",
                slot.letter(),
                cairn_update::install::SLOT_DIR_MARKER
            ),
            format!(
                "The kernel and initramfs that boot root_{}; cairn update replaces them.\n",
                slot.letter()
            )
            .into_bytes(),
        ));
    }
    for s in slots {
        let dir = s.slot.letter();
        files.push((format!("{dir}/{kernel_name}"), s.kernel.to_vec()));
        files.push((format!("{dir}/initrd.img"), s.initramfs.to_vec()));
    }
    files.push(("cairn.toml".into(), DEFAULT_CAIRN_TOML.as_bytes().to_vec()));
    let cmdline = board.kernel_cmdline();
    match board.bootloader.kind {
        BootloaderKind::UBoot => {
            let script = cairn_update::bootctl::uboot_boot_script(&cmdline, kernel_name);
            files.push(("boot.scr".into(), uboot_script_image(&script, mtime)));
        }
        BootloaderKind::SystemdBoot => {
            let efi = loader_efi.context("systemd-boot needs its EFI binary")?;
            let default_efi = match board.board.arch.as_str() {
                "amd64" => "EFI/BOOT/BOOTX64.EFI",
                "arm64" => "EFI/BOOT/BOOTAA64.EFI",
                other => anyhow::bail!("systemd-boot is not built for {other}"),
            };
            files.push((default_efi.into(), efi.to_vec()));
            // No `default`: systemd-boot boots the first entry in its order, which is how
            // boot counting falls back (update/src/bootctl/systemd_boot.rs).
            files.push((
                "loader/loader.conf".into(),
                b"timeout 0\neditor no\nconsole-mode keep\n".to_vec(),
            ));
            for s in slots {
                let l = s.slot.letter();
                // No `version` line either: entries are ordered by their file names alone.
                let entry = format!(
                    "title cairn {version} (slot {l})\nlinux /{l}/{kernel_name}\ninitrd /{l}/initrd.img\noptions {cmdline} cairn.slot={l}\n"
                );
                files.push((
                    format!("loader/entries/cairn-1-{l}.conf"),
                    entry.into_bytes(),
                ));
            }
        }
    }
    if board.bootloader.boot_control == "uboot-env" {
        let env = cairn_update::bootctl::UbootEnv::initial_files()
            .map_err(|e| anyhow::anyhow!("the boot environment: {e}"))?;
        files.extend(env);
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Wraps a script in U-Boot's legacy image header (what `mkimage -T script` writes), so the
/// `source` command accepts it.
pub fn uboot_script_image(script: &str, mtime: u32) -> Vec<u8> {
    const MAGIC: u32 = 0x2705_1956;
    const OS_LINUX: u8 = 5;
    const ARCH_ARM64: u8 = 22;
    const TYPE_SCRIPT: u8 = 6;
    const COMP_NONE: u8 = 0;
    let mut data = Vec::with_capacity(script.len() + 8);
    data.extend_from_slice(&(script.len() as u32).to_be_bytes());
    data.extend_from_slice(&0u32.to_be_bytes());
    data.extend_from_slice(script.as_bytes());

    let mut header = [0u8; 64];
    header[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    header[8..12].copy_from_slice(&mtime.to_be_bytes());
    header[12..16].copy_from_slice(&(data.len() as u32).to_be_bytes());
    header[24..28].copy_from_slice(&crc32fast::hash(&data).to_be_bytes());
    header[28] = OS_LINUX;
    header[29] = ARCH_ARM64;
    header[30] = TYPE_SCRIPT;
    header[31] = COMP_NONE;
    let name = b"cairn boot script";
    header[32..32 + name.len()].copy_from_slice(name);
    let hcrc = crc32fast::hash(&header);
    header[4..8].copy_from_slice(&hcrc.to_be_bytes());

    let mut out = header.to_vec();
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_image_has_a_valid_legacy_header() {
        let img = uboot_script_image("echo hi\n", 1_700_000_000);
        assert_eq!(&img[0..4], &0x2705_1956u32.to_be_bytes());
        let mut header = img[..64].to_vec();
        let hcrc = u32::from_be_bytes(header[4..8].try_into().unwrap());
        header[4..8].fill(0);
        assert_eq!(crc32fast::hash(&header), hcrc);
        let size = u32::from_be_bytes(img[12..16].try_into().unwrap()) as usize;
        assert_eq!(size, img.len() - 64);
        let dcrc = u32::from_be_bytes(img[24..28].try_into().unwrap());
        assert_eq!(crc32fast::hash(&img[64..]), dcrc);
        assert_eq!(img[30], 6, "script type");
        assert_eq!(
            &img[64..68],
            &8u32.to_be_bytes(),
            "first (only) script length"
        );
        assert_eq!(&img[72..], b"echo hi\n");
    }

    #[test]
    fn the_default_config_parses() {
        let v: toml::Value = toml::from_str(DEFAULT_CAIRN_TOML).unwrap();
        assert_eq!(v["network"]["mode"].as_str(), Some("dhcp"));
    }
}
