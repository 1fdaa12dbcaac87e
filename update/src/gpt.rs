//! GUID Partition Table reader and writer for cairn disk images and devices.
//!
//! The image builder uses [`plan`] and [`write`] to lay out a fresh disk image, and the device
//! uses [`read`] and [`grow_last_partition`] on first boot, when the image has been flashed
//! onto a medium (typically an SD card) larger than the image itself.
//!
//! Everything here works on 512-byte logical sectors, the only size the boards cairn targets
//! expose for SD cards, eMMC, USB sticks and virtio disks. Output is a pure function of the
//! inputs: no clocks and no randomness, so two image builds are byte-identical.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Logical sector size. GPT offsets are expressed in LBAs of this size.
pub const SECTOR_SIZE: u64 = 512;
/// Partition alignment: 1 MiB suits every flash erase-block size we care about and is what
/// every mainstream partitioning tool uses, so the layout does not surprise anyone.
pub const ALIGNMENT_BYTES: u64 = 1024 * 1024;
/// Number of entries in the tables we write; 128 is the minimum the UEFI spec allows for the
/// array's reserved space (16 KiB) and what all tools expect.
pub const ENTRY_COUNT: u32 = 128;
/// Size of one partition entry in the tables we write.
pub const ENTRY_SIZE: u32 = 128;
/// Maximum partition name length in UTF-16 code units (72 bytes in the entry).
pub const MAX_NAME_UNITS: usize = 36;

const ALIGNMENT_LBAS: u64 = ALIGNMENT_BYTES / SECTOR_SIZE;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION_1_0: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;
/// Sectors taken by a full 128 x 128-byte entry array.
const ENTRY_ARRAY_LBAS: u64 = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64).div_ceil(SECTOR_SIZE);
/// Primary header (LBA 1) + primary entries (LBA 2..=33): the first usable LBA is 34.
const FIRST_USABLE_LBA: u64 = 2 + ENTRY_ARRAY_LBAS;
/// Refuse to allocate absurd entry arrays described by a corrupted or hostile header.
const MAX_ENTRY_ARRAY_BYTES: u64 = 1024 * 1024;
const MBR_PARTITION_TABLE_OFFSET: usize = 446;
const MBR_PROTECTIVE_TYPE: u8 = 0xEE;

/// Errors from planning, writing, reading or growing a GPT.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("I/O error on the partition table: {0}")]
    Io(#[from] io::Error),
    #[error("invalid GUID {0:?}: expected the form XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX")]
    InvalidGuid(String),
    #[error("disk size {0} bytes is not a multiple of the {SECTOR_SIZE}-byte sector size")]
    UnalignedDiskSize(u64),
    #[error("disk of {size_bytes} bytes is too small to hold a GPT with any partition")]
    DiskTooSmall { size_bytes: u64 },
    #[error("{count} partitions requested but a table holds at most {ENTRY_COUNT}")]
    TooManyPartitions { count: usize },
    #[error("partition name {name:?} is {units} UTF-16 units long; GPT allows {MAX_NAME_UNITS}")]
    NameTooLong { name: String, units: usize },
    #[error("partition {name:?} has size 0")]
    EmptyPartition { name: String },
    #[error(
        "partition {name:?} does not fit: it would end at LBA {end_lba} \
         but the last usable LBA of a {disk_size_bytes}-byte disk is {last_usable_lba}"
    )]
    DoesNotFit {
        name: String,
        end_lba: u64,
        last_usable_lba: u64,
        disk_size_bytes: u64,
    },
    #[error("partition {name:?} ({first_lba}..={last_lba}) is outside the usable area {first_usable}..={last_usable}")]
    OutOfRange {
        name: String,
        first_lba: u64,
        last_lba: u64,
        first_usable: u64,
        last_usable: u64,
    },
    #[error("partitions {a:?} and {b:?} overlap")]
    Overlap { a: String, b: String },
    #[error("partition {name:?} has a zero type GUID, which marks an unused entry")]
    ZeroTypeGuid { name: String },
    #[error("partitions {a:?} and {b:?} share the unique GUID {guid}")]
    DuplicateUniqueGuid { a: String, b: String, guid: Guid },
    #[error("no GPT found: LBA 1 does not start with the \"EFI PART\" signature")]
    BadSignature,
    #[error("GPT header is malformed: {0}")]
    BadHeader(String),
    #[error("GPT header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderCrcMismatch { stored: u32, computed: u32 },
    #[error(
        "GPT partition entry array CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
    )]
    EntriesCrcMismatch { stored: u32, computed: u32 },
    #[error("GPT entry {index} is malformed: first LBA {first_lba} > last LBA {last_lba}")]
    BadEntry {
        index: u32,
        first_lba: u64,
        last_lba: u64,
    },
    #[error("the disk ({new_size_bytes} bytes) is smaller than the GPT expects ({table_size_bytes} bytes)")]
    DiskShrank {
        new_size_bytes: u64,
        table_size_bytes: u64,
    },
}

pub type Result<T, E = GptError> = std::result::Result<T, E>;

/// A GUID in its on-disk byte order.
///
/// GPT stores the first three groups of the textual form little-endian and the last two as
/// plain bytes ("mixed-endian"), so the bytes here are not the hex digits in textual order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID; as a partition type it marks an unused entry.
    pub const ZERO: Guid = Guid([0; 16]);

    /// Parses the textual form `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` (hex digits in either
    /// case; no braces).
    pub fn parse(text: &str) -> Result<Guid> {
        parse_guid(text.as_bytes()).ok_or_else(|| GptError::InvalidGuid(text.to_string()))
    }

    /// A stable GUID derived from `seed`: the first 16 bytes of sha256(seed) with the RFC 4122
    /// version (4) and variant (10xx) bits forced, so it is shaped like a random GUID (tools
    /// that inspect the version are happy) while being reproducible across image builds.
    pub fn derived(seed: &[u8]) -> Guid {
        let digest = Sha256::digest(seed);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        // The version nibble is the top nibble of the third group, which is stored
        // little-endian, so it lives in byte 7 rather than byte 6 as in RFC 4122's layout.
        bytes[7] = (bytes[7] & 0x0F) | 0x40;
        // The variant bits are in the fourth group, stored as-is: byte 8.
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        Guid(bytes)
    }

    pub fn is_zero(&self) -> bool {
        *self == Guid::ZERO
    }
}

/// Const-evaluable parser so the well-known type GUIDs below are written in their familiar
/// textual form and checked at compile time, yet share one implementation with [`Guid::parse`].
const fn parse_guid(s: &[u8]) -> Option<Guid> {
    if s.len() != 36 || s[8] != b'-' || s[13] != b'-' || s[18] != b'-' || s[23] != b'-' {
        return None;
    }
    // Decode the 32 hex digits into the 16 bytes in textual order first.
    let mut text_order = [0u8; 16];
    let mut i = 0; // index into s
    let mut n = 0; // index into text_order
    while i < 36 {
        if s[i] == b'-' {
            if !(i == 8 || i == 13 || i == 18 || i == 23) {
                return None;
            }
            i += 1;
            continue;
        }
        let (hi, lo) = match (hex_value(s[i]), hex_value(s[i + 1])) {
            (Some(hi), Some(lo)) => (hi, lo),
            _ => return None,
        };
        text_order[n] = (hi << 4) | lo;
        n += 1;
        i += 2;
    }
    // Then swap the first three groups into little-endian, the on-disk order.
    let t = text_order;
    Some(Guid([
        t[3], t[2], t[1], t[0], t[5], t[4], t[7], t[6], t[8], t[9], t[10], t[11], t[12], t[13],
        t[14], t[15],
    ]))
}

const fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

const fn guid_const(text: &str) -> Guid {
    match parse_guid(text.as_bytes()) {
        Some(g) => g,
        None => panic!("invalid GUID constant"),
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        for byte in &b[10..] {
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl FromStr for Guid {
    type Err = GptError;
    fn from_str(s: &str) -> Result<Guid> {
        Guid::parse(s)
    }
}

/// EFI system partition.
pub const TYPE_EFI_SYSTEM: Guid = guid_const("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
/// Generic Linux filesystem data.
pub const TYPE_LINUX_DATA: Guid = guid_const("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
/// Linux root filesystem for arm64 (Discoverable Partitions Specification).
pub const TYPE_LINUX_ROOT_ARM64: Guid = guid_const("B921B045-1DF0-41C3-AF44-4C6F280D3FAE");
/// Linux root filesystem for x86-64 (Discoverable Partitions Specification).
pub const TYPE_LINUX_ROOT_X86_64: Guid = guid_const("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");

/// What the image builder asks for: one partition, sized in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    pub name: String,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    /// Rounded up to whole sectors.
    pub size_bytes: u64,
    pub attributes: u64,
}

/// A partition as placed on the disk; LBAs are inclusive, as in the GPT entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub attributes: u64,
}

impl Partition {
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR_SIZE
    }

    pub fn size_bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR_SIZE
    }
}

/// A disk's partitions, in table order (entry 0 first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_guid: Guid,
    pub partitions: Vec<Partition>,
}

/// What [`read`] finds on a disk: the layout plus the geometry the primary header records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTable {
    pub layout: Layout,
    /// Disk size the table was written for: (alternate LBA + 1) sectors. On a freshly flashed
    /// medium larger than the image this is smaller than the medium; see [`grow_last_partition`].
    pub disk_size_bytes: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
}

/// Places `specs` in order from 1 MiB, each starting on a 1 MiB boundary, on a disk of
/// `disk_size_bytes`; fails if they do not all fit before the backup table.
pub fn plan(disk_size_bytes: u64, specs: &[PartitionSpec], disk_guid: Guid) -> Result<Layout> {
    let geometry = Geometry::for_disk(disk_size_bytes)?;
    if specs.len() > ENTRY_COUNT as usize {
        return Err(GptError::TooManyPartitions { count: specs.len() });
    }
    let mut partitions = Vec::with_capacity(specs.len());
    // The first partition starts at 1 MiB like the others, leaving LBA 34..2047 unused; this
    // also gives bootloaders that hide in that gap (e.g. on some SoCs) room they expect.
    let mut next_free = ALIGNMENT_LBAS;
    for spec in specs {
        encode_name(&spec.name)?;
        if spec.size_bytes == 0 {
            return Err(GptError::EmptyPartition {
                name: spec.name.clone(),
            });
        }
        let does_not_fit = |end_lba: u64| GptError::DoesNotFit {
            name: spec.name.clone(),
            end_lba,
            last_usable_lba: geometry.last_usable_lba,
            disk_size_bytes,
        };
        let first_lba = next_free.div_ceil(ALIGNMENT_LBAS) * ALIGNMENT_LBAS;
        let sectors = spec.size_bytes.div_ceil(SECTOR_SIZE);
        let last_lba = first_lba
            .checked_add(sectors - 1)
            .ok_or_else(|| does_not_fit(u64::MAX))?;
        if last_lba > geometry.last_usable_lba {
            return Err(does_not_fit(last_lba));
        }
        partitions.push(Partition {
            first_lba,
            last_lba,
            name: spec.name.clone(),
            type_guid: spec.type_guid,
            unique_guid: spec.unique_guid,
            attributes: spec.attributes,
        });
        next_free = last_lba + 1;
    }
    let layout = Layout {
        disk_guid,
        partitions,
    };
    // Catches zero or duplicate GUIDs in the specs with the same rules `write` applies.
    validate_layout(&layout, &geometry)?;
    Ok(layout)
}

/// Writes a protective MBR, the primary GPT (header at LBA 1, entries at LBA 2..=33) and the
/// backup GPT (entries then header in the last 33 sectors) for `layout` on a disk of
/// `disk_size_bytes`. Only those sectors are touched.
pub fn write(dev: &mut (impl Write + Seek), disk_size_bytes: u64, layout: &Layout) -> Result<()> {
    let geometry = Geometry::for_disk(disk_size_bytes)?;
    validate_layout(layout, &geometry)?;
    let entries = encode_entries(layout)?;
    let entries_crc = crc32fast::hash(&entries);
    let primary = Header {
        my_lba: 1,
        alternate_lba: geometry.last_lba,
        first_usable_lba: FIRST_USABLE_LBA,
        last_usable_lba: geometry.last_usable_lba,
        disk_guid: layout.disk_guid,
        entries_lba: 2,
        entry_count: ENTRY_COUNT,
        entry_size: ENTRY_SIZE,
        entries_crc,
    };
    let backup = primary.as_backup(geometry.backup_entries_lba);

    write_at(dev, 0, &protective_mbr(geometry.sectors))?;
    write_at(dev, primary.entries_lba, &entries)?;
    write_at(dev, primary.my_lba, &primary.encode())?;
    write_at(dev, backup.entries_lba, &entries)?;
    write_at(dev, backup.my_lba, &backup.encode())?;
    dev.flush()?;
    Ok(())
}

/// Reads and validates the primary GPT (signature, header CRC, entry array CRC) and returns
/// the used entries in table order.
pub fn read(dev: &mut (impl Read + Seek)) -> Result<DiskTable> {
    let (header, entries) = read_primary(dev)?;
    let mut partitions = Vec::new();
    for index in 0..header.entry_count {
        let raw = entry_slice(&entries, &header, index);
        if let Some(partition) = decode_entry(raw, index)? {
            partitions.push(partition);
        }
    }
    Ok(DiskTable {
        layout: Layout {
            disk_guid: header.disk_guid,
            partitions,
        },
        disk_size_bytes: (header.alternate_lba + 1) * SECTOR_SIZE,
        first_usable_lba: header.first_usable_lba,
        last_usable_lba: header.last_usable_lba,
    })
}

/// First-boot growth: when the medium (`new_disk_size_bytes`) is larger than the disk the
/// table was written for, moves the backup GPT to the new end and extends the partition that
/// ends last to the new last usable LBA, aligned down to 1 MiB.
///
/// Returns the extended partition, or `None` if no partition grew (the medium is the size of
/// the image, there are no partitions, or the extra space is less than the alignment). The
/// backup table is moved whenever the size differs, even if no partition grew, so the kernel
/// does not keep complaining that the alternate header is not at the end of the disk.
///
/// Write order keeps a valid table at every instant: the new backup (entries, then header)
/// goes first at the new end, where nothing reads it yet; then the primary entries and header.
/// A power cut between the two leaves either the old primary intact, or a primary whose entry
/// CRC fails, in which case firmware and the kernel fall back to the new backup. `flush` is
/// called between the phases; on a block device opened without `O_SYNC` the caller should
/// also fsync afterwards.
///
/// Entries are patched in place, so tables written by other tools (other entry sizes, gaps)
/// keep everything but the grown partition's last LBA.
pub fn grow_last_partition(
    dev: &mut (impl Read + Write + Seek),
    new_disk_size_bytes: u64,
) -> Result<Option<Partition>> {
    let (old, mut entries) = read_primary(dev)?;
    if new_disk_size_bytes % SECTOR_SIZE != 0 {
        return Err(GptError::UnalignedDiskSize(new_disk_size_bytes));
    }
    let new_sectors = new_disk_size_bytes / SECTOR_SIZE;
    let old_sectors = old.alternate_lba + 1;
    if new_sectors == old_sectors {
        return Ok(None);
    }
    if new_sectors < old_sectors {
        return Err(GptError::DiskShrank {
            new_size_bytes: new_disk_size_bytes,
            table_size_bytes: old_sectors * SECTOR_SIZE,
        });
    }

    let array_lbas = entry_array_lbas(&old);
    let new_last_lba = new_sectors - 1;
    let new_backup_entries_lba = new_last_lba.saturating_sub(array_lbas);
    let new_last_usable = new_backup_entries_lba.saturating_sub(1);
    // With a well-formed table growth only ever adds usable space; a table whose usable area
    // already reached into where the new backup goes would have us overwrite partition data.
    if new_last_usable < old.last_usable_lba {
        return Err(GptError::BadHeader(format!(
            "usable area ends at LBA {} but a backup table for {new_sectors} sectors needs it to end by {new_last_usable}",
            old.last_usable_lba
        )));
    }

    // The partition that ends last is the one adjacent to the free space, whatever its index.
    let mut last: Option<(u32, Partition)> = None;
    for index in 0..old.entry_count {
        if let Some(p) = decode_entry(entry_slice(&entries, &old, index), index)? {
            if last.as_ref().is_none_or(|(_, l)| p.last_lba > l.last_lba) {
                last = Some((index, p));
            }
        }
    }
    // Aligning the end (not just the start) keeps the partition a whole number of MiB, which
    // filesystems and flash translation layers both like.
    let aligned_end = ((new_last_usable + 1) / ALIGNMENT_LBAS * ALIGNMENT_LBAS).saturating_sub(1);
    let grown = match last {
        Some((index, mut p)) if aligned_end > p.last_lba => {
            let off = index as usize * old.entry_size as usize + 40;
            entries[off..off + 8].copy_from_slice(&aligned_end.to_le_bytes());
            p.last_lba = aligned_end;
            Some(p)
        }
        _ => None,
    };

    let entries_crc = crc32fast::hash(&entries);
    let primary = Header {
        alternate_lba: new_last_lba,
        last_usable_lba: new_last_usable,
        entries_crc,
        ..old
    };
    let backup = primary.as_backup(new_backup_entries_lba);

    // Phase 1: the new backup, at an address nothing references yet.
    write_at(dev, backup.entries_lba, &entries)?;
    write_at(dev, backup.my_lba, &backup.encode())?;
    dev.flush()?;
    // Phase 2: the primary, entries before header (see the doc comment for why).
    write_at(dev, primary.entries_lba, &entries)?;
    write_at(dev, primary.my_lba, &primary.encode())?;
    dev.flush()?;
    // Phase 3, cosmetic: the table is already consistent. Stretch a protective MBR over the
    // new size, and wipe the stale backup header so nothing finds an "EFI PART" inside the
    // grown partition later.
    update_protective_mbr(dev, new_sectors)?;
    // With very little growth the new backup array covers the old header's sector; it is
    // live data then and must not be wiped.
    if old.alternate_lba < new_backup_entries_lba {
        wipe_stale_backup(dev, old.alternate_lba)?;
    }
    dev.flush()?;
    Ok(grown)
}

/// Sector positions derived from the disk size.
struct Geometry {
    sectors: u64,
    last_lba: u64,
    backup_entries_lba: u64,
    last_usable_lba: u64,
}

impl Geometry {
    fn for_disk(disk_size_bytes: u64) -> Result<Geometry> {
        if disk_size_bytes % SECTOR_SIZE != 0 {
            return Err(GptError::UnalignedDiskSize(disk_size_bytes));
        }
        let sectors = disk_size_bytes / SECTOR_SIZE;
        // MBR + primary header + 2 entry arrays + backup header, and room for at least one
        // aligned partition sector: anything smaller cannot hold a useful table.
        if sectors < ALIGNMENT_LBAS + ENTRY_ARRAY_LBAS + 2 {
            return Err(GptError::DiskTooSmall {
                size_bytes: disk_size_bytes,
            });
        }
        let last_lba = sectors - 1;
        let backup_entries_lba = last_lba - ENTRY_ARRAY_LBAS;
        Ok(Geometry {
            sectors,
            last_lba,
            backup_entries_lba,
            last_usable_lba: backup_entries_lba - 1,
        })
    }
}

fn validate_layout(layout: &Layout, geometry: &Geometry) -> Result<()> {
    let parts = &layout.partitions;
    if parts.len() > ENTRY_COUNT as usize {
        return Err(GptError::TooManyPartitions { count: parts.len() });
    }
    for p in parts {
        encode_name(&p.name)?;
        if p.type_guid.is_zero() {
            return Err(GptError::ZeroTypeGuid {
                name: p.name.clone(),
            });
        }
        if p.first_lba < FIRST_USABLE_LBA
            || p.last_lba > geometry.last_usable_lba
            || p.first_lba > p.last_lba
        {
            return Err(GptError::OutOfRange {
                name: p.name.clone(),
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                first_usable: FIRST_USABLE_LBA,
                last_usable: geometry.last_usable_lba,
            });
        }
    }
    // Quadratic, but a table has at most 128 entries and this keeps the errors precise.
    for (i, a) in parts.iter().enumerate() {
        for b in &parts[i + 1..] {
            if a.first_lba <= b.last_lba && b.first_lba <= a.last_lba {
                return Err(GptError::Overlap {
                    a: a.name.clone(),
                    b: b.name.clone(),
                });
            }
            if a.unique_guid == b.unique_guid {
                return Err(GptError::DuplicateUniqueGuid {
                    a: a.name.clone(),
                    b: b.name.clone(),
                    guid: a.unique_guid,
                });
            }
        }
    }
    Ok(())
}

/// The fields of a GPT header we read and write. Reserved bytes are always written as zero.
#[derive(Debug, Clone, Copy)]
struct Header {
    my_lba: u64,
    alternate_lba: u64,
    first_usable_lba: u64,
    last_usable_lba: u64,
    disk_guid: Guid,
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
}

impl Header {
    /// The matching backup header: the two headers point at each other and each at its own
    /// entry array.
    fn as_backup(&self, backup_entries_lba: u64) -> Header {
        Header {
            my_lba: self.alternate_lba,
            alternate_lba: self.my_lba,
            entries_lba: backup_entries_lba,
            ..*self
        }
    }

    fn encode(&self) -> [u8; SECTOR_SIZE as usize] {
        let mut s = [0u8; SECTOR_SIZE as usize];
        s[0..8].copy_from_slice(SIGNATURE);
        s[8..12].copy_from_slice(&REVISION_1_0.to_le_bytes());
        s[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        // 16..20 is the CRC, computed below with the field zeroed; 20..24 reserved.
        s[24..32].copy_from_slice(&self.my_lba.to_le_bytes());
        s[32..40].copy_from_slice(&self.alternate_lba.to_le_bytes());
        s[40..48].copy_from_slice(&self.first_usable_lba.to_le_bytes());
        s[48..56].copy_from_slice(&self.last_usable_lba.to_le_bytes());
        s[56..72].copy_from_slice(&self.disk_guid.0);
        s[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        s[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
        s[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        s[88..92].copy_from_slice(&self.entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&s[..HEADER_SIZE as usize]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        s
    }

    fn decode(s: &[u8; SECTOR_SIZE as usize]) -> Result<Header> {
        if &s[0..8] != SIGNATURE {
            return Err(GptError::BadSignature);
        }
        let header_size = le_u32(s, 12);
        // The spec allows headers longer than 92 bytes (up to a sector), covered by the CRC.
        if header_size < HEADER_SIZE || header_size as u64 > SECTOR_SIZE {
            return Err(GptError::BadHeader(format!("header size {header_size}")));
        }
        let stored = le_u32(s, 16);
        let mut copy = *s;
        copy[16..20].fill(0);
        let computed = crc32fast::hash(&copy[..header_size as usize]);
        if stored != computed {
            return Err(GptError::HeaderCrcMismatch { stored, computed });
        }
        let mut disk_guid = [0u8; 16];
        disk_guid.copy_from_slice(&s[56..72]);
        let header = Header {
            my_lba: le_u64(s, 24),
            alternate_lba: le_u64(s, 32),
            first_usable_lba: le_u64(s, 40),
            last_usable_lba: le_u64(s, 48),
            disk_guid: Guid(disk_guid),
            entries_lba: le_u64(s, 72),
            entry_count: le_u32(s, 80),
            entry_size: le_u32(s, 84),
            entries_crc: le_u32(s, 88),
        };
        // The spec requires entry sizes of 128 x 2^n; we only need >= 128 and 8-byte multiples
        // to read the fields we use.
        if header.entry_size < 128 || header.entry_size % 8 != 0 {
            return Err(GptError::BadHeader(format!(
                "entry size {}",
                header.entry_size
            )));
        }
        let array_bytes = header.entry_count as u64 * header.entry_size as u64;
        if header.entry_count == 0 || array_bytes > MAX_ENTRY_ARRAY_BYTES {
            return Err(GptError::BadHeader(format!(
                "{} entries of {} bytes",
                header.entry_count, header.entry_size
            )));
        }
        Ok(header)
    }
}

fn read_primary(dev: &mut (impl Read + Seek)) -> Result<(Header, Vec<u8>)> {
    let mut sector = [0u8; SECTOR_SIZE as usize];
    read_at(dev, 1, &mut sector)?;
    let header = Header::decode(&sector)?;
    if header.my_lba != 1 {
        return Err(GptError::BadHeader(format!(
            "primary header claims to be at LBA {}",
            header.my_lba
        )));
    }
    // Geometry sanity, so later arithmetic (sizes in bytes, growth) cannot overflow and a
    // corrupted header cannot point our writes into partition data.
    let array_end = header.entries_lba.checked_add(entry_array_lbas(&header));
    if header
        .alternate_lba
        .checked_add(1)
        .and_then(|n| n.checked_mul(SECTOR_SIZE))
        .is_none()
        || header.entries_lba < 2
        || array_end.is_none_or(|end| end > header.first_usable_lba)
        || header.first_usable_lba > header.last_usable_lba
        || header.last_usable_lba >= header.alternate_lba
    {
        return Err(GptError::BadHeader(format!(
            "entries at LBA {}, usable area {}..={}, alternate header at LBA {}",
            header.entries_lba,
            header.first_usable_lba,
            header.last_usable_lba,
            header.alternate_lba
        )));
    }
    // Checked by decode to be at most MAX_ENTRY_ARRAY_BYTES, so the cast and allocation are safe.
    let mut entries = vec![0u8; (header.entry_count as u64 * header.entry_size as u64) as usize];
    read_at(dev, header.entries_lba, &mut entries)?;
    let computed = crc32fast::hash(&entries);
    if computed != header.entries_crc {
        return Err(GptError::EntriesCrcMismatch {
            stored: header.entries_crc,
            computed,
        });
    }
    Ok((header, entries))
}

fn entry_array_lbas(header: &Header) -> u64 {
    (header.entry_count as u64 * header.entry_size as u64).div_ceil(SECTOR_SIZE)
}

fn entry_slice<'a>(entries: &'a [u8], header: &Header, index: u32) -> &'a [u8] {
    let start = index as usize * header.entry_size as usize;
    &entries[start..start + header.entry_size as usize]
}

fn decode_entry(raw: &[u8], index: u32) -> Result<Option<Partition>> {
    let mut type_guid = [0u8; 16];
    type_guid.copy_from_slice(&raw[0..16]);
    if type_guid == [0; 16] {
        return Ok(None);
    }
    let mut unique_guid = [0u8; 16];
    unique_guid.copy_from_slice(&raw[16..32]);
    let first_lba = le_u64(raw, 32);
    let last_lba = le_u64(raw, 40);
    if first_lba > last_lba {
        return Err(GptError::BadEntry {
            index,
            first_lba,
            last_lba,
        });
    }
    let units: Vec<u16> = raw[56..128]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    Ok(Some(Partition {
        first_lba,
        last_lba,
        // A mangled name should not make the whole disk unreadable; it is only a label.
        name: String::from_utf16_lossy(&units),
        type_guid: Guid(type_guid),
        unique_guid: Guid(unique_guid),
        attributes: le_u64(raw, 48),
    }))
}

fn encode_entries(layout: &Layout) -> Result<Vec<u8>> {
    let mut entries = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for (p, raw) in layout
        .partitions
        .iter()
        .zip(entries.chunks_exact_mut(ENTRY_SIZE as usize))
    {
        raw[0..16].copy_from_slice(&p.type_guid.0);
        raw[16..32].copy_from_slice(&p.unique_guid.0);
        raw[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        raw[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        raw[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        raw[56..128].copy_from_slice(&encode_name(&p.name)?);
    }
    Ok(entries)
}

/// UTF-16LE, zero-padded to the 72-byte field. A name of exactly 36 units has no terminator,
/// which the spec allows.
fn encode_name(name: &str) -> Result<[u8; 2 * MAX_NAME_UNITS]> {
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > MAX_NAME_UNITS {
        return Err(GptError::NameTooLong {
            name: name.to_string(),
            units: units.len(),
        });
    }
    let mut out = [0u8; 2 * MAX_NAME_UNITS];
    for (unit, slot) in units.iter().zip(out.chunks_exact_mut(2)) {
        slot.copy_from_slice(&unit.to_le_bytes());
    }
    Ok(out)
}

/// A protective MBR: one partition of type 0xEE from LBA 1 to the end of the disk (capped at
/// the 32-bit field's maximum), so MBR-only tools see the disk as in use. Boot code is zeroed
/// to keep the sector a pure function of the disk size.
fn protective_mbr(sectors: u64) -> [u8; SECTOR_SIZE as usize] {
    let mut s = [0u8; SECTOR_SIZE as usize];
    let e = &mut s[MBR_PARTITION_TABLE_OFFSET..MBR_PARTITION_TABLE_OFFSET + 16];
    e[0] = 0x00; // not bootable
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = MBR_PROTECTIVE_TYPE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]); // CHS "beyond addressable", as the spec asks
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    e[12..16].copy_from_slice(&protective_size(sectors).to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

fn protective_size(sectors: u64) -> u32 {
    u32::try_from(sectors - 1).unwrap_or(u32::MAX)
}

/// Only rewrites the size of a genuine protective MBR; a hybrid MBR (first entry not 0xEE)
/// was made deliberately by someone else and is left alone.
fn update_protective_mbr(dev: &mut (impl Read + Write + Seek), sectors: u64) -> Result<()> {
    let mut s = [0u8; SECTOR_SIZE as usize];
    read_at(dev, 0, &mut s)?;
    let e = MBR_PARTITION_TABLE_OFFSET;
    if s[510..512] != [0x55, 0xAA] || s[e + 4] != MBR_PROTECTIVE_TYPE {
        return Ok(());
    }
    s[e + 12..e + 16].copy_from_slice(&protective_size(sectors).to_le_bytes());
    write_at(dev, 0, &s)
}

/// Zeroes the old backup header, but only if it really is the backup header we expect there,
/// so a bogus alternate LBA can never make us clobber data.
fn wipe_stale_backup(dev: &mut (impl Read + Write + Seek), lba: u64) -> Result<()> {
    let mut s = [0u8; SECTOR_SIZE as usize];
    read_at(dev, lba, &mut s)?;
    if &s[0..8] == SIGNATURE && le_u64(&s, 24) == lba {
        write_at(dev, lba, &[0u8; SECTOR_SIZE as usize])?;
    }
    Ok(())
}

fn read_at(dev: &mut (impl Read + Seek), lba: u64, buf: &mut [u8]) -> Result<()> {
    dev.seek(SeekFrom::Start(lba * SECTOR_SIZE))?;
    dev.read_exact(buf)?;
    Ok(())
}

fn write_at(dev: &mut (impl Write + Seek), lba: u64, buf: &[u8]) -> Result<()> {
    dev.seek(SeekFrom::Start(lba * SECTOR_SIZE))?;
    dev.write_all(buf)?;
    Ok(())
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const MIB: u64 = 1024 * 1024;

    fn spec(name: &str, type_guid: Guid, size_bytes: u64) -> PartitionSpec {
        PartitionSpec {
            name: name.to_string(),
            type_guid,
            unique_guid: Guid::derived(name.as_bytes()),
            size_bytes,
            attributes: 0,
        }
    }

    fn cairn_specs() -> Vec<PartitionSpec> {
        vec![
            spec("esp", TYPE_EFI_SYSTEM, 16 * MIB),
            spec("root_a", TYPE_LINUX_ROOT_ARM64, 32 * MIB),
            spec("root_b", TYPE_LINUX_ROOT_ARM64, 32 * MIB),
            PartitionSpec {
                attributes: 1 << 63,
                ..spec("data", TYPE_LINUX_DATA, 10 * MIB + 1)
            },
        ]
    }

    /// A disk image in memory, pre-sized so writes land where a real disk has sectors.
    fn disk(size: u64) -> Cursor<Vec<u8>> {
        Cursor::new(vec![0u8; size as usize])
    }

    fn written(size: u64) -> (Layout, Cursor<Vec<u8>>) {
        let layout = plan(size, &cairn_specs(), Guid::derived(b"disk")).expect("plan");
        let mut dev = disk(size);
        write(&mut dev, size, &layout).expect("write");
        (layout, dev)
    }

    #[test]
    fn guid_parse_matches_on_disk_mixed_endian() {
        let g = Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap();
        assert_eq!(
            g.0,
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert_eq!(g, TYPE_EFI_SYSTEM);
        assert_eq!(g.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        // Lower case parses, Display normalises to upper case.
        let lower: Guid = "0fc63daf-8483-4772-8e79-3d69d8477de4".parse().unwrap();
        assert_eq!(lower, TYPE_LINUX_DATA);
        assert_eq!(lower.to_string(), "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        for c in [TYPE_LINUX_ROOT_ARM64, TYPE_LINUX_ROOT_X86_64] {
            assert_eq!(Guid::parse(&c.to_string()).unwrap(), c);
        }
    }

    #[test]
    fn guid_parse_rejects_garbage() {
        for bad in [
            "",
            "C12A7328F81F11D2BA4B00A0C93EC93B",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93BB",
            "C12A7328-F81F-11D2-BA4B0-0A0C93EC93B",
            "G12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "{12A7328-F81F-11D2-BA4B-00A0C93EC93}",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC9é",
        ] {
            assert!(
                matches!(Guid::parse(bad), Err(GptError::InvalidGuid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn derived_guid_is_stable_and_v4_shaped() {
        let a = Guid::derived(b"cairn/rpi4/root_a");
        assert_eq!(a, Guid::derived(b"cairn/rpi4/root_a"));
        assert_ne!(a, Guid::derived(b"cairn/rpi4/root_b"));
        let text = a.to_string();
        assert_eq!(&text[14..15], "4", "{text}");
        assert!("89AB".contains(&text[19..20]), "{text}");
        // Pinned: a change here changes every image's GUIDs, which must be deliberate.
        let digest = Sha256::digest(b"cairn/rpi4/root_a");
        assert_eq!(a.0[..7], digest[..7]);
        assert_eq!(a.0[9..], digest[9..16]);
    }

    #[test]
    fn plan_aligns_every_partition_to_1mib() {
        let layout = plan(128 * MIB, &cairn_specs(), Guid::derived(b"disk")).unwrap();
        let starts: Vec<u64> = layout.partitions.iter().map(|p| p.first_lba).collect();
        assert_eq!(starts, [2048, 2048 * 17, 2048 * 49, 2048 * 81]);
        for p in &layout.partitions {
            assert_eq!(p.first_lba % ALIGNMENT_LBAS, 0);
        }
        assert_eq!(layout.partitions[0].size_bytes(), 16 * MIB);
        assert_eq!(layout.partitions[0].offset_bytes(), MIB);
        // 10 MiB + 1 byte rounds up to a whole sector.
        assert_eq!(layout.partitions[3].size_bytes(), 10 * MIB + 512);
    }

    #[test]
    fn plan_rejects_layouts_that_do_not_fit() {
        // 1 + 16 + 32 + 32 + 10 MiB + a sector > 91 MiB.
        let err = plan(91 * MIB, &cairn_specs(), Guid::ZERO).unwrap_err();
        assert!(
            matches!(&err, GptError::DoesNotFit { name, .. } if name == "data"),
            "{err}"
        );
        // Exactly fitting: the last partition may end at the last usable LBA.
        let size = 2 * MIB + 33 * 512;
        let exact = plan(size, &[spec("x", TYPE_LINUX_DATA, MIB)], Guid::ZERO).unwrap();
        assert_eq!(exact.partitions[0].last_lba, size / 512 - 34);
        assert!(plan(size, &[spec("x", TYPE_LINUX_DATA, MIB + 1)], Guid::ZERO).is_err());
    }

    #[test]
    fn plan_rejects_bad_specs() {
        let size = 64 * MIB;
        let long = "x".repeat(37);
        assert!(matches!(
            plan(size, &[spec(&long, TYPE_LINUX_DATA, MIB)], Guid::ZERO),
            Err(GptError::NameTooLong { units: 37, .. })
        ));
        // 36 units is the maximum and is fine.
        plan(
            size,
            &[spec(&"y".repeat(36), TYPE_LINUX_DATA, MIB)],
            Guid::ZERO,
        )
        .unwrap();
        assert!(matches!(
            plan(size, &[spec("e", TYPE_LINUX_DATA, 0)], Guid::ZERO),
            Err(GptError::EmptyPartition { .. })
        ));
        assert!(matches!(
            plan(size, &[spec("z", Guid::ZERO, MIB)], Guid::ZERO),
            Err(GptError::ZeroTypeGuid { .. })
        ));
        let dup = [
            spec("a", TYPE_LINUX_DATA, MIB),
            PartitionSpec {
                unique_guid: Guid::derived(b"a"),
                ..spec("b", TYPE_LINUX_DATA, MIB)
            },
        ];
        assert!(matches!(
            plan(size, &dup, Guid::ZERO),
            Err(GptError::DuplicateUniqueGuid { .. })
        ));
        let many: Vec<_> = (0..129)
            .map(|i| spec(&format!("p{i}"), TYPE_LINUX_DATA, 512))
            .collect();
        assert!(matches!(
            plan(1024 * MIB, &many, Guid::ZERO),
            Err(GptError::TooManyPartitions { count: 129 })
        ));
        assert!(matches!(
            plan(64 * MIB + 1, &[], Guid::ZERO),
            Err(GptError::UnalignedDiskSize(_))
        ));
        assert!(matches!(
            plan(MIB, &[], Guid::ZERO),
            Err(GptError::DiskTooSmall { .. })
        ));
    }

    #[test]
    fn write_rejects_overlapping_or_out_of_range_layouts() {
        let size = 64 * MIB;
        let mut layout = plan(
            size,
            &[
                spec("a", TYPE_LINUX_DATA, MIB),
                spec("b", TYPE_LINUX_DATA, MIB),
            ],
            Guid::ZERO,
        )
        .unwrap();
        layout.partitions[1].first_lba = layout.partitions[0].last_lba;
        assert!(matches!(
            write(&mut disk(size), size, &layout),
            Err(GptError::Overlap { .. })
        ));
        layout.partitions[1].first_lba = 33;
        assert!(matches!(
            write(&mut disk(size), size, &layout),
            Err(GptError::OutOfRange { .. })
        ));
        // A layout planned for a bigger disk does not fit a smaller one.
        let big = plan(128 * MIB, &cairn_specs(), Guid::ZERO).unwrap();
        assert!(matches!(
            write(&mut disk(size), size, &big),
            Err(GptError::OutOfRange { .. })
        ));
    }

    #[test]
    fn round_trip() {
        let size = 128 * MIB;
        let (layout, mut dev) = written(size);
        let table = read(&mut dev).unwrap();
        assert_eq!(table.layout, layout);
        assert_eq!(table.disk_size_bytes, size);
        assert_eq!(table.first_usable_lba, 34);
        assert_eq!(table.last_usable_lba, size / 512 - 34);
        // Non-ASCII names survive the UTF-16 round trip.
        let mut dev = disk(64 * MIB);
        let specs = [spec("données-✓", TYPE_LINUX_DATA, MIB)];
        let l = plan(64 * MIB, &specs, Guid::ZERO).unwrap();
        write(&mut dev, 64 * MIB, &l).unwrap();
        assert_eq!(
            read(&mut dev).unwrap().layout.partitions[0].name,
            "données-✓"
        );
    }

    #[test]
    fn on_disk_field_offsets() {
        let size = 128 * MIB;
        let (layout, dev) = written(size);
        let b = dev.into_inner();
        let last = (size - 512) as usize;
        // Protective MBR.
        assert_eq!(&b[510..512], &[0x55, 0xAA]);
        assert_eq!(b[446 + 4], 0xEE);
        assert_eq!(le_u32(&b, 446 + 8), 1);
        assert_eq!(le_u32(&b, 446 + 12), (size / 512 - 1) as u32);
        // Primary header at LBA 1.
        assert_eq!(&b[512..520], b"EFI PART");
        assert_eq!(le_u32(&b, 512 + 8), 0x0001_0000);
        assert_eq!(le_u32(&b, 512 + 12), 92);
        assert_eq!(le_u64(&b, 512 + 24), 1);
        assert_eq!(le_u64(&b, 512 + 32), size / 512 - 1);
        assert_eq!(le_u64(&b, 512 + 40), 34);
        assert_eq!(le_u64(&b, 512 + 48), size / 512 - 34);
        assert_eq!(&b[512 + 56..512 + 72], &Guid::derived(b"disk").0);
        assert_eq!(le_u64(&b, 512 + 72), 2);
        assert_eq!(le_u32(&b, 512 + 80), 128);
        assert_eq!(le_u32(&b, 512 + 84), 128);
        assert!(b[512 + 92..1024].iter().all(|&x| x == 0));
        // Entry 0 at LBA 2 (byte 1024).
        assert_eq!(&b[1024..1040], &TYPE_EFI_SYSTEM.0);
        assert_eq!(&b[1040..1056], &Guid::derived(b"esp").0);
        assert_eq!(le_u64(&b, 1024 + 32), 2048);
        assert_eq!(le_u64(&b, 1024 + 40), 2048 + 16 * 2048 - 1);
        assert_eq!(&b[1024 + 56..1024 + 62], &[b'e', 0, b's', 0, b'p', 0]);
        assert_eq!(le_u64(&b, 1024 + 3 * 128 + 48), 1 << 63);
        // Entries CRC covers all 128 entries (16 KiB), including the empty ones.
        assert_eq!(
            le_u32(&b, 512 + 88),
            crc32fast::hash(&b[1024..1024 + 16384])
        );
        // Backup header in the last sector, pointing back at LBA 1 and at its own entries.
        assert_eq!(&b[last..last + 8], b"EFI PART");
        assert_eq!(le_u64(&b, last + 24), size / 512 - 1);
        assert_eq!(le_u64(&b, last + 32), 1);
        assert_eq!(le_u64(&b, last + 72), size / 512 - 33);
        let backup_entries = last - 16384;
        assert_eq!(&b[backup_entries..last], &b[1024..1024 + 16384]);
        // The backup's header CRC is its own.
        let mut copy = b[last..last + 92].to_vec();
        copy[16..20].fill(0);
        assert_eq!(le_u32(&b, last + 16), crc32fast::hash(&copy));
        // Nothing but GPT structures was written: partition areas are untouched.
        assert!(b[34 * 512..2048 * 512].iter().all(|&x| x == 0));
        let _ = layout;
    }

    #[test]
    fn read_detects_corruption() {
        let size = 64 * MIB;
        let (_, dev) = written_small(size);
        let clean = dev.into_inner();

        let mut header = clean.clone();
        header[512 + 40] ^= 1; // first usable LBA
        assert!(matches!(
            read(&mut Cursor::new(header)),
            Err(GptError::HeaderCrcMismatch { .. })
        ));

        let mut entry = clean.clone();
        entry[1024 + 56] ^= 1; // a character of the first name
        assert!(matches!(
            read(&mut Cursor::new(entry)),
            Err(GptError::EntriesCrcMismatch { .. })
        ));

        let mut unused_entry = clean.clone();
        unused_entry[1024 + 127 * 128] = 1; // the CRC covers unused entries as well
        assert!(matches!(
            read(&mut Cursor::new(unused_entry)),
            Err(GptError::EntriesCrcMismatch { .. })
        ));

        let mut sig = clean.clone();
        sig[512] = b'X';
        assert!(matches!(
            read(&mut Cursor::new(sig)),
            Err(GptError::BadSignature)
        ));

        // A blank disk is "no GPT", not an I/O error.
        assert!(matches!(read(&mut disk(size)), Err(GptError::BadSignature)));
        // A truncated device is an I/O error, not a panic.
        assert!(matches!(
            read(&mut Cursor::new(clean[..2048].to_vec())),
            Err(GptError::Io(_))
        ));
    }

    #[test]
    fn write_is_deterministic() {
        let size = 256 * MIB;
        let specs = [
            spec("esp", TYPE_EFI_SYSTEM, 32 * MIB),
            spec("root_a", TYPE_LINUX_ROOT_X86_64, 64 * MIB),
        ];
        let build = || {
            let layout = plan(size, &specs, Guid::derived(b"disk")).unwrap();
            let mut dev = Cursor::new(Vec::new());
            write(&mut dev, size, &layout).unwrap();
            dev.into_inner()
        };
        let a = build();
        assert_eq!(
            a.len() as u64,
            size,
            "the backup header extends an empty file to the disk size"
        );
        assert!(a == build());
    }

    #[test]
    fn grow_moves_backup_and_extends_last_partition() {
        let image_size = 128 * MIB;
        let (layout, dev) = written(image_size);
        // Flash the image onto a bigger medium with leftover garbage after the image.
        let card_size = 256 * MIB + 7 * 512;
        let mut card = dev.into_inner();
        card.resize(card_size as usize, 0xA5);
        let mut card = Cursor::new(card);

        let grown = grow_last_partition(&mut card, card_size)
            .unwrap()
            .expect("grew");
        let card_sectors = card_size / 512;
        let last_usable = card_sectors - 34;
        assert_eq!(grown.name, "data");
        assert_eq!(grown.first_lba, layout.partitions[3].first_lba);
        assert_eq!(grown.last_lba, (last_usable + 1) / 2048 * 2048 - 1);

        let table = read(&mut card).unwrap();
        assert_eq!(table.disk_size_bytes, card_size);
        assert_eq!(table.last_usable_lba, last_usable);
        assert_eq!(table.layout.partitions[..3], layout.partitions[..3]);
        assert_eq!(table.layout.partitions[3], grown);

        let b = card.into_inner();
        let last = (card_size - 512) as usize;
        assert_eq!(&b[last..last + 8], b"EFI PART");
        assert_eq!(le_u64(&b, last + 24), card_sectors - 1);
        assert_eq!(le_u64(&b, last + 72), card_sectors - 33);
        assert_eq!(&b[last - 16384..last], &b[1024..1024 + 16384]);
        // The old backup header is gone, the MBR covers the new size.
        let old_last = (image_size - 512) as usize;
        assert!(b[old_last..old_last + 512].iter().all(|&x| x == 0));
        assert_eq!(le_u32(&b, 446 + 12), (card_sectors - 1) as u32);

        // The backup alone is a complete, valid table (header CRC checked by decode).
        let backup = Header::decode(b[last..].try_into().unwrap()).unwrap();
        assert_eq!(backup.alternate_lba, 1);
        assert_eq!(backup.last_usable_lba, last_usable);
        assert_eq!(backup.entries_crc, crc32fast::hash(&b[last - 16384..last]));

        // Growing again to the same size is a no-op.
        let mut again = Cursor::new(b.clone());
        assert_eq!(grow_last_partition(&mut again, card_size).unwrap(), None);
        assert!(again.into_inner() == b);
    }

    #[test]
    fn grow_picks_the_partition_that_ends_last_not_the_last_entry() {
        let size = 64 * MIB;
        let mut layout = plan(
            size,
            &[
                spec("a", TYPE_LINUX_DATA, MIB),
                spec("b", TYPE_LINUX_DATA, MIB),
            ],
            Guid::ZERO,
        )
        .unwrap();
        layout.partitions.swap(0, 1);
        let mut dev = disk(size);
        write(&mut dev, size, &layout).unwrap();
        let mut big = dev.into_inner();
        big.resize(128 * MIB as usize, 0);
        let grown = grow_last_partition(&mut Cursor::new(big), 128 * MIB)
            .unwrap()
            .unwrap();
        assert_eq!(grown.name, "b");
    }

    #[test]
    fn grow_small_and_invalid() {
        let size = 64 * MIB - 64 * 512;
        let (_, dev) = written_full(size);
        // Not enough for another aligned MiB: the backup moves but no partition grows.
        let mut b = dev.into_inner();
        let slightly = size + 64 * 512;
        b.resize(slightly as usize, 0);
        let mut dev = Cursor::new(b);
        assert_eq!(grow_last_partition(&mut dev, slightly).unwrap(), None);
        let table = read(&mut dev).unwrap();
        assert_eq!(table.disk_size_bytes, slightly);
        // Shrinking and unaligned sizes are refused.
        assert!(matches!(
            grow_last_partition(&mut dev, size),
            Err(GptError::DiskShrank { .. })
        ));
        assert!(matches!(
            grow_last_partition(&mut dev, slightly + 1),
            Err(GptError::UnalignedDiskSize(_))
        ));
        // A device without a GPT is refused, not "grown".
        assert!(matches!(
            grow_last_partition(&mut disk(size), 2 * size),
            Err(GptError::BadSignature)
        ));
    }

    #[test]
    fn grow_by_less_than_the_backup_array() {
        // The new backup array then covers the old backup header; it must not be wiped.
        let size = 64 * MIB - 64 * 512;
        let (_, dev) = written_full(size);
        let mut b = dev.into_inner();
        let bigger = size + 8 * 512;
        b.resize(bigger as usize, 0);
        let mut dev = Cursor::new(b);
        assert_eq!(grow_last_partition(&mut dev, bigger).unwrap(), None);
        assert_eq!(read(&mut dev).unwrap().disk_size_bytes, bigger);
        backup_table(dev.get_ref()).expect("backup valid");
    }

    /// Validates the backup GPT at the end of `b` on its own: header CRC, entries CRC, and
    /// that it points back at LBA 1. Returns the disk size it describes.
    fn backup_table(b: &[u8]) -> Result<u64> {
        let last = b.len() - 512;
        let header = Header::decode(b[last..].try_into().unwrap())?;
        assert_eq!(header.my_lba as usize * 512, last);
        assert_eq!(header.alternate_lba, 1);
        let start = header.entries_lba as usize * 512;
        let computed = crc32fast::hash(&b[start..start + 16384]);
        if computed != header.entries_crc {
            return Err(GptError::EntriesCrcMismatch {
                stored: header.entries_crc,
                computed,
            });
        }
        Ok(b.len() as u64)
    }

    /// A device that loses power (fails every write) after `budget` write calls.
    struct PowerCut {
        inner: Cursor<Vec<u8>>,
        budget: usize,
    }

    impl Read for PowerCut {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(buf)
        }
    }
    impl Seek for PowerCut {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.inner.seek(pos)
        }
    }
    impl Write for PowerCut {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::Error::other("power cut"));
            }
            self.budget -= 1;
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn grow_survives_a_power_cut_at_any_write() {
        let image_size = 64 * MIB;
        let card_size = 128 * MIB;
        let (_, dev) = written_small(image_size);
        let mut image = dev.into_inner();
        image.resize(card_size as usize, 0);
        let mut completed = false;
        let mut fell_back = false;
        for budget in 0..32 {
            let mut dev = PowerCut {
                inner: Cursor::new(image.clone()),
                budget,
            };
            let result = grow_last_partition(&mut dev, card_size);
            let b = dev.inner.into_inner();
            // Either the primary is valid (old or new table), or its entries were replaced
            // and the firmware/kernel fallback, the backup at the device's end, is valid.
            match read(&mut Cursor::new(&b)) {
                Ok(t) => assert!(t.disk_size_bytes == image_size || t.disk_size_bytes == card_size),
                Err(GptError::EntriesCrcMismatch { .. }) => {
                    fell_back = true;
                    assert_eq!(backup_table(&b).expect("backup valid"), card_size)
                }
                Err(e) => panic!("budget {budget}: unreadable table: {e}"),
            }
            if result.is_ok() {
                completed = true;
                assert_eq!(
                    read(&mut Cursor::new(&b)).unwrap().disk_size_bytes,
                    card_size
                );
                break;
            }
        }
        assert!(completed, "grow never completed within the write budget");
        assert!(fell_back, "no cut point exercised the backup fallback");
    }

    /// One partition that already extends to the last aligned MiB of the disk.
    fn written_full(size: u64) -> (Layout, Cursor<Vec<u8>>) {
        let aligned_end = (size / 512 - 33) / 2048 * 2048;
        let layout = plan(
            size,
            &[spec("data", TYPE_LINUX_DATA, (aligned_end - 2048) * 512)],
            Guid::ZERO,
        )
        .unwrap();
        let mut dev = disk(size);
        write(&mut dev, size, &layout).unwrap();
        (layout, dev)
    }

    fn written_small(size: u64) -> (Layout, Cursor<Vec<u8>>) {
        let layout = plan(size, &[spec("data", TYPE_LINUX_DATA, 8 * MIB)], Guid::ZERO).unwrap();
        let mut dev = disk(size);
        write(&mut dev, size, &layout).unwrap();
        (layout, dev)
    }

    /// Cross-check against util-linux when it is installed; skipped otherwise. Covers a
    /// fresh image and the same image grown onto a bigger "card", and requires sfdisk to
    /// print no warnings (it complains about a misplaced backup or a stale protective MBR).
    #[test]
    fn sfdisk_agrees() {
        let sfdisk = std::process::Command::new("sfdisk")
            .arg("--version")
            .output();
        if !matches!(sfdisk, Ok(ref o) if o.status.success()) {
            eprintln!("sfdisk not found; skipping");
            return;
        }
        let size = 128 * MIB;
        let (layout, dev) = written(size);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), dev.get_ref()).unwrap();
        check_with_sfdisk(file.path(), &layout, size);
        assert_eq!(
            sfdisk_json(file.path())["partitiontable"]["partitions"][3]["attrs"],
            "GUID:63"
        );

        let card = 256 * MIB;
        let mut grown = dev.into_inner();
        grown.resize(card as usize, 0);
        let mut grown = Cursor::new(grown);
        let p = grow_last_partition(&mut grown, card).unwrap().unwrap();
        let mut layout = layout;
        layout.partitions[3] = p;
        std::fs::write(file.path(), grown.get_ref()).unwrap();
        check_with_sfdisk(file.path(), &layout, card);
    }

    fn sfdisk_json(path: &std::path::Path) -> serde_json::Value {
        let out = std::process::Command::new("sfdisk")
            .arg("--json")
            .arg(path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.trim().is_empty(), "sfdisk warned: {stderr}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn check_with_sfdisk(path: &std::path::Path, layout: &Layout, size: u64) {
        let verify = std::process::Command::new("sfdisk")
            .arg("--verify")
            .arg(path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&verify.stdout);
        let stderr = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success(), "{stdout}{stderr}");
        assert!(stderr.trim().is_empty(), "sfdisk warned: {stderr}");
        assert!(stdout.contains("No errors detected"), "{stdout}");

        let json = sfdisk_json(path);
        let table = &json["partitiontable"];
        assert_eq!(table["label"], "gpt");
        assert_eq!(table["id"], layout.disk_guid.to_string());
        let ours = read(&mut std::fs::File::open(path).unwrap()).unwrap();
        assert_eq!(table["firstlba"], ours.first_usable_lba);
        assert_eq!(table["lastlba"], size / 512 - 34);
        let parts = table["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), layout.partitions.len());
        for (got, want) in parts.iter().zip(&layout.partitions) {
            assert_eq!(got["name"], want.name.as_str());
            assert_eq!(got["start"], want.first_lba);
            assert_eq!(got["size"], want.size_bytes() / 512);
            assert_eq!(got["type"], want.type_guid.to_string());
            assert_eq!(got["uuid"], want.unique_guid.to_string());
        }
    }

    /// A table made by another tool reads back and grows cleanly. Skipped without sfdisk.
    #[test]
    fn reads_and_grows_a_table_made_by_sfdisk() {
        use std::io::Write as _;
        let sfdisk = std::process::Command::new("sfdisk")
            .arg("--version")
            .output();
        if !matches!(sfdisk, Ok(ref o) if o.status.success()) {
            eprintln!("sfdisk not found; skipping");
            return;
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 * MIB).unwrap();
        let mut child = std::process::Command::new("sfdisk")
            .arg("--quiet")
            .arg(file.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"label: gpt\nsize=8MiB, type=U, name=boot\nsize=20MiB, type=L, name=rest\n")
            .unwrap();
        assert!(child.wait().unwrap().success());

        let mut dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(file.path())
            .unwrap();
        let table = read(&mut dev).unwrap();
        assert_eq!(table.disk_size_bytes, 64 * MIB);
        let names: Vec<&str> = table
            .layout
            .partitions
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["boot", "rest"]);
        assert_eq!(table.layout.partitions[0].type_guid, TYPE_EFI_SYSTEM);
        assert_eq!(table.layout.partitions[1].type_guid, TYPE_LINUX_DATA);
        assert_eq!(table.layout.partitions[1].size_bytes(), 20 * MIB);

        dev.set_len(96 * MIB).unwrap();
        let grown = grow_last_partition(&mut dev, 96 * MIB).unwrap().unwrap();
        assert_eq!(grown.name, "rest");
        assert_eq!(grown.last_lba, 95 * 2048 - 1);
        drop(dev);
        let mut expected = table.layout.clone();
        expected.partitions[1] = grown;
        check_with_sfdisk(file.path(), &expected, 96 * MIB);
    }

    #[test]
    fn protective_mbr_size_is_capped() {
        assert_eq!(protective_size(1 << 40), u32::MAX);
        assert_eq!(protective_size(u32::MAX as u64 + 1), u32::MAX);
        assert_eq!(protective_size(1000), 999);
    }
}
