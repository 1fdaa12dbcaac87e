//! The whole-disk image: GPT with boot, root_a, root_b and data, written into a sparse file
//! without root privileges or loop devices.

use crate::board::Board;
use anyhow::{bail, Context, Result};
use cairn_update::gpt::{self, Guid, PartitionSpec};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

const MIB: u64 = 1024 * 1024;

pub struct DiskContents<'a> {
    pub boot_fat: &'a Path,
    pub root_squashfs: &'a Path,
}

/// The GPT type of a root partition for this architecture (Discoverable Partitions spec).
fn root_type(arch: &str) -> Guid {
    match arch {
        "amd64" => gpt::TYPE_LINUX_ROOT_X86_64,
        _ => gpt::TYPE_LINUX_ROOT_ARM64,
    }
}

pub fn layout_specs(board: &Board) -> Vec<PartitionSpec> {
    let p = &board.partitions;
    let name = &board.board.name;
    let spec = |label: &str, type_guid: Guid, mib: u64| PartitionSpec {
        name: label.to_string(),
        type_guid,
        unique_guid: Guid::derived(format!("cairn/{name}/{label}").as_bytes()),
        size_bytes: mib * MIB,
        attributes: 0,
    };
    vec![
        spec("boot", gpt::TYPE_EFI_SYSTEM, p.boot_mib),
        spec("root_a", root_type(&board.board.arch), p.root_mib),
        spec("root_b", root_type(&board.board.arch), p.root_mib),
        spec("data", gpt::TYPE_LINUX_DATA, p.data_mib),
    ]
}

/// Total image size: 1 MiB in front for the primary GPT and alignment, 1 MiB at the end for
/// the backup GPT.
pub fn disk_size(board: &Board) -> u64 {
    let p = &board.partitions;
    (1 + p.boot_mib + 2 * p.root_mib + p.data_mib + 1) * MIB
}

pub fn write(board: &Board, contents: &DiskContents<'_>, out: &Path) -> Result<()> {
    let size = disk_size(board);
    let layout = gpt::plan(
        size,
        &layout_specs(board),
        Guid::derived(format!("cairn/{}/disk", board.board.name).as_bytes()),
    )?;
    let squash_len = std::fs::metadata(contents.root_squashfs)?.len();
    if squash_len > board.partitions.root_mib * MIB {
        bail!(
            "partitions.root_mib: the root filesystem is {} MiB and does not fit a {} MiB slot",
            squash_len.div_ceil(MIB),
            board.partitions.root_mib
        );
    }
    if out.exists() {
        std::fs::remove_file(out)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    file.set_len(size)?;
    gpt::write(&mut file, size, &layout)?;
    let offset_of = |name: &str| -> Result<u64> {
        layout
            .partitions
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.first_lba * 512)
            .with_context(|| format!("partition {name} missing from the layout"))
    };
    copy_into(&mut file, offset_of("boot")?, contents.boot_fat)?;
    copy_into(&mut file, offset_of("root_a")?, contents.root_squashfs)?;
    file.sync_all()?;
    Ok(())
}

fn copy_into(file: &mut std::fs::File, offset: u64, src: &Path) -> Result<()> {
    let mut input =
        std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    file.seek(SeekFrom::Start(offset))?;
    std::io::copy(&mut input, file)?;
    file.flush()?;
    Ok(())
}
