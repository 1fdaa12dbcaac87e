//! Reproducible FAT filesystem images, for the EFI system partition and the Raspberry Pi
//! style boot partition (firmware, kernel, device trees, config).
//!
//! A FAT image made naively is different on every build: directory entries carry the
//! current time, and the volume id is usually random. Here every timestamp is one fixed
//! value passed in (typically SOURCE_DATE_EPOCH), the volume id is passed in, files are
//! written in sorted order so cluster allocation does not depend on the caller's ordering,
//! and the whole target area is zeroed first so stale bytes cannot leak into the output.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

use fatfs::{Date, DateTime, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};

const SECTOR: u64 = 512;
/// FAT timestamps cover 1980-01-01T00:00:00 ..= 2107-12-31T23:59:59 (UTC, since we store
/// UTC: FAT has no time zone, and a build host's local zone must not leak into the image).
const FAT_MIN_UNIX: i64 = 315_532_800;
const FAT_MAX_UNIX: i64 = 4_354_819_199;

#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("I/O error building the FAT image: {0}")]
    Io(#[from] io::Error),
    #[error("FAT image size {0} is not a positive multiple of {SECTOR} bytes that fits 32-bit sector counts")]
    BadSize(u64),
    #[error("invalid volume label {label:?}: {reason}")]
    BadLabel { label: String, reason: &'static str },
    #[error("invalid path {path:?} for a FAT image: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{a:?} and {b:?} name the same FAT entry (FAT names are case-insensitive)")]
    Conflict { a: String, b: String },
    #[error("{path:?}: {source}")]
    File { path: String, source: io::Error },
}

pub type Result<T, E = FatError> = std::result::Result<T, E>;

/// fatfs picks FAT32 from this size on (and its own cluster size for it).
const FAT32_FROM: u64 = 512 << 20;

/// The cluster size of a FAT16 volume: the largest (up to FAT's 32 KiB) that still leaves
/// twice FAT16's minimum of 4085 clusters. fatfs's default follows DOS's table (2 KiB at
/// 128 MiB); Linux's vfat driver allocates a file cluster by cluster, so an update's
/// 30 MiB kernel writes about as fast as a raw partition only with large clusters, and the
/// boot partition holds a few large files, so little space goes to waste.
fn fat16_cluster_bytes(size_bytes: u64) -> Option<u32> {
    if size_bytes >= FAT32_FROM {
        return None;
    }
    [32u32, 16, 8, 4, 2]
        .into_iter()
        .map(|kib| kib * 1024)
        .find(|&bytes| size_bytes / u64::from(bytes) >= 2 * 4085)
}

/// Formats `out` (from offset 0, `size_bytes` long) as a FAT volume and fills it with
/// `files` ('/'-separated paths, parents created as needed). FAT12/16/32 is chosen by fatfs
/// from the size. Byte-identical output for identical arguments.
pub fn build_fat_image(
    out: &mut (impl Read + Write + Seek),
    size_bytes: u64,
    volume_label: &str,
    volume_id: u32,
    files: &[(String, Vec<u8>)],
    timestamp_unix: i64,
) -> Result<()> {
    if size_bytes == 0 || size_bytes % SECTOR != 0 || size_bytes / SECTOR > u32::MAX as u64 {
        return Err(FatError::BadSize(size_bytes));
    }
    let label = encode_label(volume_label)?;
    // Check everything before writing anything, so a bad argument leaves `out` untouched.
    let Tree { dirs, files } = plan_tree(files)?;

    zero(out, size_bytes)?;
    out.seek(SeekFrom::Start(0))?;
    let mut format = FormatVolumeOptions::new()
        .total_sectors((size_bytes / SECTOR) as u32)
        .volume_id(volume_id);
    if let Some(bytes) = fat16_cluster_bytes(size_bytes) {
        format = format.bytes_per_cluster(bytes);
    }
    if let Some(label) = label {
        format = format.volume_label(label);
    }
    fatfs::format_volume(&mut *out, format)?;

    out.seek(SeekFrom::Start(0))?;
    let options = FsOptions::new()
        .update_accessed_date(false)
        .time_provider(fixed_time(timestamp_unix));
    let fs = FileSystem::new(&mut *out, options)?;
    {
        let root = fs.root_dir();
        // BTreeSet order puts every parent before its children ("a" < "a/b").
        for dir in &dirs {
            root.create_dir(dir).map_err(|source| FatError::File {
                path: dir.clone(),
                source,
            })?;
        }
        for (path, data) in files {
            let with_path = |source| FatError::File {
                path: path.to_string(),
                source,
            };
            let mut file = root.create_file(path).map_err(with_path)?;
            file.write_all(data).map_err(with_path)?;
            // Flushing writes the directory entry (size, times) and surfaces its errors here
            // rather than in a silent drop.
            file.flush().map_err(with_path)?;
        }
    }
    // On FAT32, fatfs leaves FSInfo's free-cluster count "unknown" after formatting; asking
    // for stats counts the free clusters and records them, so the unmount below writes an
    // exact count (fsck.fat flags an unknown one, and it saves the kernel a FAT scan).
    fs.stats()?;
    // Unmount clears the dirty flag and writes FSInfo, both part of the bytes we produce.
    fs.unmount()?;
    repair_dot_entries(out)?;
    out.flush()?;
    Ok(())
}

/// fatfs 0.3.6 (the newest release) writes every subdirectory as
/// `[LFN("."), ".", LFN(".."), ".."]`, and on FAT32 gives ".." of a first-level directory the
/// root's cluster number. The spec (and fsck.fat, which would "repair" the volume and delete
/// entries) wants "." and ".." in the first two slots, and 0 as the root's cluster in "..".
/// This pass walks the finished tree and rewrites the first four slots of every
/// subdirectory as `[".", "..", deleted, deleted]`; deleted slots are skipped by every
/// reader, so nothing else has to move. It leaves already-correct directories alone, so it
/// stays harmless once fatfs is fixed.
fn repair_dot_entries(dev: &mut (impl Read + Write + Seek)) -> Result<()> {
    let geo = FatGeometry::read(dev)?;
    // (directory location, whether it is the root)
    let mut pending = vec![(geo.root, true)];
    while let Some((dir, is_root)) = pending.pop() {
        for cluster in geo.subdirectories(dev, dir)? {
            geo.fix_first_slots(dev, cluster, is_root)?;
            pending.push((DirLocation::Chain(cluster), false));
        }
    }
    Ok(())
}

const DIR_ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0F;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";

#[derive(Clone, Copy)]
enum DirLocation {
    /// The FAT12/16 root directory: a fixed region before the data area.
    Fixed { offset: u64, len: u64 },
    /// Any FAT32 directory or any subdirectory: a cluster chain.
    Chain(u32),
}

/// Just enough of the BIOS parameter block to walk directories.
struct FatGeometry {
    bits: u8,
    fat_offset: u64,
    data_offset: u64,
    cluster_size: u64,
    cluster_count: u32,
    root: DirLocation,
}

impl FatGeometry {
    fn read(dev: &mut (impl Read + Seek)) -> Result<FatGeometry> {
        let mut b = [0u8; 512];
        dev.seek(SeekFrom::Start(0))?;
        dev.read_exact(&mut b)?;
        let u16_at = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
        let u32_at = |o: usize| u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]));
        let bytes_per_sector = u16_at(11);
        let sectors_per_cluster = u64::from(b[13]);
        let reserved = u16_at(14);
        let fats = u64::from(b[16]);
        let root_entries = u16_at(17);
        let total = if u16_at(19) != 0 {
            u16_at(19)
        } else {
            u32_at(32)
        };
        let fat_size = if u16_at(22) != 0 {
            u16_at(22)
        } else {
            u32_at(36)
        };
        if bytes_per_sector == 0 || sectors_per_cluster == 0 {
            return Err(corrupt("boot sector has zero sector or cluster size"));
        }
        let root_sectors = (root_entries * DIR_ENTRY as u64).div_ceil(bytes_per_sector);
        let first_data_sector = reserved + fats * fat_size + root_sectors;
        let cluster_count = total
            .checked_sub(first_data_sector)
            .ok_or_else(|| corrupt("data area starts past the end"))?
            / sectors_per_cluster;
        // The FAT type is defined by the cluster count alone (Microsoft's FAT specification).
        let bits = match cluster_count {
            0..4085 => 12,
            4085..65525 => 16,
            _ => 32,
        };
        let root = if bits == 32 {
            DirLocation::Chain(u32_at(44) as u32)
        } else {
            DirLocation::Fixed {
                offset: (reserved + fats * fat_size) * bytes_per_sector,
                len: root_sectors * bytes_per_sector,
            }
        };
        Ok(FatGeometry {
            bits,
            fat_offset: reserved * bytes_per_sector,
            data_offset: first_data_sector * bytes_per_sector,
            cluster_size: sectors_per_cluster * bytes_per_sector,
            cluster_count: cluster_count as u32,
            root,
        })
    }

    fn cluster_offset(&self, cluster: u32) -> Result<u64> {
        // Data clusters are numbered from 2.
        if cluster < 2 || cluster - 2 >= self.cluster_count {
            return Err(corrupt("cluster number out of range"));
        }
        Ok(self.data_offset + u64::from(cluster - 2) * self.cluster_size)
    }

    fn next_cluster(&self, dev: &mut (impl Read + Seek), cluster: u32) -> Result<Option<u32>> {
        let c = u64::from(cluster);
        let (offset, width) = match self.bits {
            12 => (c + c / 2, 2),
            16 => (c * 2, 2),
            _ => (c * 4, 4),
        };
        let mut buf = [0u8; 4];
        dev.seek(SeekFrom::Start(self.fat_offset + offset))?;
        dev.read_exact(&mut buf[..width])?;
        let raw = u32::from_le_bytes(buf);
        let (next, end) = match self.bits {
            12 => (if c % 2 == 0 { raw & 0xFFF } else { raw >> 4 }, 0xFF8),
            16 => (raw, 0xFFF8),
            _ => (raw & 0x0FFF_FFFF, 0x0FFF_FFF8),
        };
        Ok(if next >= end { None } else { Some(next) })
    }

    /// Byte ranges of a directory's storage, in order.
    fn extents(&self, dev: &mut (impl Read + Seek), dir: DirLocation) -> Result<Vec<(u64, u64)>> {
        match dir {
            DirLocation::Fixed { offset, len } => Ok(vec![(offset, len)]),
            DirLocation::Chain(first) => {
                let mut out = Vec::new();
                let mut cluster = Some(first);
                while let Some(c) = cluster {
                    // A chain longer than the volume has a loop.
                    if out.len() > self.cluster_count as usize {
                        return Err(corrupt("cluster chain loops"));
                    }
                    out.push((self.cluster_offset(c)?, self.cluster_size));
                    cluster = self.next_cluster(dev, c)?;
                }
                Ok(out)
            }
        }
    }

    /// First clusters of the subdirectories listed in `dir` (not "." and "..").
    fn subdirectories(&self, dev: &mut (impl Read + Seek), dir: DirLocation) -> Result<Vec<u32>> {
        let mut found = Vec::new();
        for (offset, len) in self.extents(dev, dir)? {
            let mut buf = vec![0u8; len as usize];
            dev.seek(SeekFrom::Start(offset))?;
            dev.read_exact(&mut buf)?;
            for e in buf.chunks_exact(DIR_ENTRY) {
                match e[0] {
                    0x00 => return Ok(found), // end of directory
                    0xE5 => continue,         // deleted
                    _ => {}
                }
                let attr = e[11];
                if attr == ATTR_LFN || attr & ATTR_VOLUME_ID != 0 || attr & ATTR_DIRECTORY == 0 {
                    continue;
                }
                if &e[..11] == DOT || &e[..11] == DOTDOT {
                    continue;
                }
                found.push(entry_cluster(e));
            }
        }
        Ok(found)
    }

    fn fix_first_slots(
        &self,
        dev: &mut (impl Read + Write + Seek),
        cluster: u32,
        parent_is_root: bool,
    ) -> Result<()> {
        let offset = self.cluster_offset(cluster)?;
        let mut slots = [0u8; 4 * DIR_ENTRY];
        dev.seek(SeekFrom::Start(offset))?;
        dev.read_exact(&mut slots)?;
        let name = |i: usize| &slots[i * DIR_ENTRY..i * DIR_ENTRY + 11];
        let attr = |i: usize| slots[i * DIR_ENTRY + 11];
        let mut fixed = slots;
        if attr(0) == ATTR_LFN && name(1) == DOT && attr(2) == ATTR_LFN && name(3) == DOTDOT {
            fixed[..DIR_ENTRY].copy_from_slice(&slots[DIR_ENTRY..2 * DIR_ENTRY]);
            fixed[DIR_ENTRY..2 * DIR_ENTRY].copy_from_slice(&slots[3 * DIR_ENTRY..]);
            fixed[2 * DIR_ENTRY..].fill(0);
            fixed[2 * DIR_ENTRY] = 0xE5;
            fixed[3 * DIR_ENTRY] = 0xE5;
        } else if name(0) != DOT || name(1) != DOTDOT {
            return Err(corrupt("subdirectory does not start with '.' and '..'"));
        }
        if parent_is_root {
            // ".." names the root as cluster 0, even on FAT32 where the root has a cluster.
            fixed[DIR_ENTRY + 20..DIR_ENTRY + 22].fill(0);
            fixed[DIR_ENTRY + 26..DIR_ENTRY + 28].fill(0);
        }
        if fixed != slots {
            dev.seek(SeekFrom::Start(offset))?;
            dev.write_all(&fixed)?;
        }
        Ok(())
    }
}

fn entry_cluster(e: &[u8]) -> u32 {
    let hi = u32::from(u16::from_le_bytes([e[20], e[21]]));
    let lo = u32::from(u16::from_le_bytes([e[26], e[27]]));
    (hi << 16) | lo
}

fn corrupt(what: &str) -> FatError {
    FatError::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected FAT structure after formatting: {what}"),
    ))
}

/// What goes into the volume, in creation order.
struct Tree<'a> {
    /// Every directory, parents before children.
    dirs: BTreeSet<String>,
    /// Files sorted by path.
    files: Vec<(&'a str, &'a [u8])>,
}

/// Validates the paths and returns the directories to create and the files in sorted order.
fn plan_tree(files: &[(String, Vec<u8>)]) -> Result<Tree<'_>> {
    let mut sorted: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));

    let mut dirs = BTreeSet::new();
    // Case-folded name -> (spelling, is_dir), to catch names FAT would merge.
    let mut seen: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let mut claim = |name: &str, is_dir: bool| -> Result<()> {
        let key = name.to_uppercase();
        match seen.get(&key) {
            // Two files with one name would silently overwrite; a file and a directory with
            // one name cannot coexist. Repeated directories are expected.
            Some((other, other_is_dir)) if !(is_dir && *other_is_dir && other == name) => {
                Err(FatError::Conflict {
                    a: other.clone(),
                    b: name.to_string(),
                })
            }
            _ => {
                seen.insert(key, (name.to_string(), is_dir));
                Ok(())
            }
        }
    };
    for (path, _) in &sorted {
        validate_path(path)?;
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let dir = &path[..end + i];
            claim(dir, true)?;
            dirs.insert(dir.to_string());
            end += i + 1;
        }
        claim(path, false)?;
    }
    Ok(Tree {
        dirs,
        files: sorted,
    })
}

fn validate_path(path: &str) -> Result<()> {
    let bad = |reason| {
        Err(FatError::BadPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') {
        return bad("must be relative to the volume root (no leading '/')");
    }
    for component in path.split('/') {
        if component.is_empty() {
            return bad("empty component (double or trailing '/')");
        }
        if component == "." || component == ".." {
            return bad("'.' and '..' components are not allowed");
        }
        if component.encode_utf16().count() > 255 {
            return bad("component longer than 255 characters");
        }
        // Characters long file names cannot hold (and control characters).
        if component
            .chars()
            .any(|c| c < ' ' || "\"*:<>?\\|".contains(c))
        {
            return bad("contains a character FAT does not allow");
        }
        if component.ends_with('.') || component.ends_with(' ') {
            // Windows and many firmwares strip these, so the name would not round-trip.
            return bad("component ends with '.' or ' '");
        }
    }
    Ok(())
}

/// The label as the 11 space-padded bytes FAT stores, or None for no label. Restricted to
/// upper-case ASCII and the punctuation DOS allows, since firmware and tools disagree on
/// anything else.
fn encode_label(label: &str) -> Result<Option<[u8; 11]>> {
    if label.is_empty() {
        return Ok(None);
    }
    let bad = |reason| {
        Err(FatError::BadLabel {
            label: label.to_string(),
            reason,
        })
    };
    if label.len() > 11 {
        return bad("longer than 11 characters");
    }
    if label.starts_with(' ') {
        return bad("starts with a space");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b" !#$%&'()-@^_`{}~".contains(&b))
    {
        return bad("only A-Z, 0-9, space and !#$%&'()-@^_`{}~ are allowed");
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(Some(out))
}

/// Zeroes `[0, size)`. Bytes that already lie beyond the current end are zeros once the
/// stream is extended, so only the existing part is written; for a new file that keeps the
/// image sparse.
fn zero(out: &mut (impl Write + Seek), size: u64) -> io::Result<()> {
    let existing = out.seek(SeekFrom::End(0))?.min(size);
    out.seek(SeekFrom::Start(0))?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = existing;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    if existing < size {
        out.seek(SeekFrom::Start(size - 1))?;
        out.write_all(&[0])?;
    }
    Ok(())
}

/// fatfs asks a `TimeProvider` for "now" whenever it stamps an entry; this one always answers
/// the build's timestamp.
#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// fatfs 0.3 only takes `&'static` providers. One is leaked per distinct (clamped) timestamp
/// and reused, so a long-running process building many images leaks a few bytes at most per
/// distinct timestamp, not per image.
fn fixed_time(timestamp_unix: i64) -> &'static FixedTime {
    static CACHE: Mutex<BTreeMap<i64, &'static FixedTime>> = Mutex::new(BTreeMap::new());
    let clamped = timestamp_unix.clamp(FAT_MIN_UNIX, FAT_MAX_UNIX);
    // A poisoned lock only means another thread panicked mid-insert of an immutable value;
    // the map itself is still sound.
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(clamped)
        .or_insert_with(|| Box::leak(Box::new(FixedTime(fat_date_time(clamped)))))
}

/// Converts a Unix timestamp (already clamped to FAT's range) to a UTC calendar date/time.
fn fat_date_time(unix: i64) -> DateTime {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Days to civil date, counting in 400-year eras from 0000-03-01 so leap days fall at the
    // end of each year and the month lengths follow a simple pattern.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // The clamp keeps every value in u16 range.
    DateTime {
        date: Date {
            year: year as u16,
            month: month as u16,
            day: day as u16,
        },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Seek, SeekFrom};

    const MIB: u64 = 1024 * 1024;
    const TS: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    fn files() -> Vec<(String, Vec<u8>)> {
        // Deliberately unsorted, with nested and sibling directories.
        vec![
            ("EFI/BOOT/BOOTX64.EFI".into(), vec![0x4D; 300_000]),
            ("config.txt".into(), b"arm_64bit=1\n".to_vec()),
            ("EFI/cairn/cmdline.txt".into(), b"console=ttyS0\n".to_vec()),
            ("overlays/a-long-file-name.dtbo".into(), vec![1, 2, 3]),
            ("empty".into(), Vec::new()),
        ]
    }

    fn build(size: u64, files: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut img = Cursor::new(Vec::new());
        build_fat_image(&mut img, size, "CAIRN-BOOT", 0xCA1B_0001, files, TS).unwrap();
        img.into_inner()
    }

    #[test]
    fn files_read_back_with_fixed_times() {
        let img = build(32 * MIB, &files());
        assert_eq!(img.len() as u64, 32 * MIB);
        let fs = FileSystem::new(Cursor::new(img), FsOptions::new()).unwrap();
        assert_eq!(fs.volume_id(), 0xCA1B_0001);
        assert_eq!(fs.volume_label(), "CAIRN-BOOT");
        let root = fs.root_dir();
        for (path, data) in files() {
            let mut got = Vec::new();
            root.open_file(&path)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert_eq!(got, data, "{path}");
        }
        let expected = fat_date_time(TS);
        assert_eq!(
            (expected.date.year, expected.date.month, expected.date.day),
            (2023, 11, 14)
        );
        // Every entry, files and directories (including "." and ".."), carries the time.
        fn walk<T: fatfs::ReadWriteSeek>(dir: fatfs::Dir<'_, T>, expected: DateTime, n: &mut u32) {
            for e in dir.iter() {
                let e = e.unwrap();
                assert_eq!(e.modified().date, expected.date, "{}", e.file_name());
                assert_eq!(e.modified().time.hour, 22, "{}", e.file_name());
                assert_eq!(e.modified().time.min, 13, "{}", e.file_name());
                // FAT's modification time has 2-second resolution: 20 s is exact.
                assert_eq!(e.modified().time.sec, 20, "{}", e.file_name());
                assert_eq!(e.created(), expected, "{}", e.file_name());
                assert_eq!(e.accessed(), expected.date, "{}", e.file_name());
                *n += 1;
                if e.is_dir() && e.file_name() != "." && e.file_name() != ".." {
                    walk(e.to_dir(), expected, n);
                }
            }
        }
        let mut n = 0;
        walk(fs.root_dir(), expected, &mut n);
        // 5 files, 4 directories (EFI, EFI/BOOT, EFI/cairn, overlays), "."/".." in each.
        assert_eq!(n, 5 + 4 + 2 * 4);
    }

    #[test]
    fn identical_bytes_whatever_the_input_order_or_prior_content() {
        let a = build(32 * MIB, &files());
        let mut reversed = files();
        reversed.reverse();
        assert!(a == build(32 * MIB, &reversed));
        // Building over a dirty buffer (bigger than the image) gives the same image bytes.
        let mut dirty = Cursor::new(vec![0xEE; (33 * MIB) as usize]);
        build_fat_image(
            &mut dirty,
            32 * MIB,
            "CAIRN-BOOT",
            0xCA1B_0001,
            &files(),
            TS,
        )
        .unwrap();
        assert!(dirty.get_ref()[..(32 * MIB) as usize] == a[..]);
        // The timestamp and volume id are really in the bytes.
        let mut other = Cursor::new(Vec::new());
        build_fat_image(
            &mut other,
            32 * MIB,
            "CAIRN-BOOT",
            0xCA1B_0001,
            &files(),
            TS + 3600,
        )
        .unwrap();
        assert!(other.into_inner() != a);
    }

    #[test]
    fn boot_partitions_get_large_clusters_and_stay_fat16() {
        assert_eq!(fat16_cluster_bytes(16 * MIB), Some(2048));
        assert_eq!(fat16_cluster_bytes(64 * MIB), Some(8192));
        assert_eq!(fat16_cluster_bytes(128 * MIB), Some(16384));
        assert_eq!(fat16_cluster_bytes(511 * MIB), Some(32768));
        assert_eq!(fat16_cluster_bytes(FAT32_FROM), None);
        let img = build(128 * MIB, &files());
        let sectors_per_cluster = u64::from(img[13]);
        assert_eq!(sectors_per_cluster * SECTOR, 16384);
    }

    #[test]
    fn fat_type_follows_size_and_directories_are_well_formed() {
        // fatfs picks FAT16 up to 511 MiB and FAT32 from 512 MiB. The FAT32 case is built
        // into a (sparse) file rather than memory; it also exercises the file-backed path.
        for (size, want) in [
            (16 * MIB, fatfs::FatType::Fat16),
            (32 * MIB, fatfs::FatType::Fat16),
            (128 * MIB, fatfs::FatType::Fat16),
            (256 * MIB, fatfs::FatType::Fat16),
            (511 * MIB, fatfs::FatType::Fat16),
            (512 * MIB, fatfs::FatType::Fat32),
        ] {
            let mut file = tempfile::tempfile().unwrap();
            build_fat_image(&mut file, size, "CAIRN", 7, &files(), TS).unwrap();
            assert_eq!(file.metadata().unwrap().len(), size);
            file.seek(SeekFrom::Start(0)).unwrap();
            check_dot_entries(&mut file);
            file.seek(SeekFrom::Start(0)).unwrap();
            let fs = FileSystem::new(&mut file, FsOptions::new()).unwrap();
            assert_eq!(fs.fat_type(), want, "{size}");
            let mut got = Vec::new();
            let root = fs.root_dir();
            let mut f = root.open_file("EFI/BOOT/BOOTX64.EFI").unwrap();
            f.read_to_end(&mut got).unwrap();
            assert_eq!(got.len(), 300_000);
        }
    }

    /// Every subdirectory starts with "." (its own cluster) and ".." (the parent's, 0 for the
    /// root), in the first two slots: the invariant fatfs 0.3.6 breaks and we repair.
    fn check_dot_entries(dev: &mut std::fs::File) {
        let geo = FatGeometry::read(dev).unwrap();
        let mut pending = vec![(geo.root, 0u32)];
        let mut checked = 0;
        while let Some((dir, parent_cluster)) = pending.pop() {
            for cluster in geo.subdirectories(dev, dir).unwrap() {
                let mut slots = [0u8; 2 * DIR_ENTRY];
                dev.seek(SeekFrom::Start(geo.cluster_offset(cluster).unwrap()))
                    .unwrap();
                dev.read_exact(&mut slots).unwrap();
                assert_eq!(&slots[..11], DOT);
                assert_eq!(entry_cluster(&slots[..DIR_ENTRY]), cluster);
                assert_eq!(&slots[DIR_ENTRY..DIR_ENTRY + 11], DOTDOT);
                assert_eq!(entry_cluster(&slots[DIR_ENTRY..]), parent_cluster);
                pending.push((DirLocation::Chain(cluster), cluster));
                checked += 1;
            }
        }
        assert_eq!(checked, 4);
    }

    #[test]
    fn timestamps_are_clamped_and_converted() {
        let dt = |ts| {
            let d = fat_date_time(ts);
            (
                d.date.year,
                d.date.month,
                d.date.day,
                d.time.hour,
                d.time.min,
                d.time.sec,
            )
        };
        assert_eq!(dt(FAT_MIN_UNIX), (1980, 1, 1, 0, 0, 0));
        assert_eq!(dt(FAT_MAX_UNIX), (2107, 12, 31, 23, 59, 59));
        assert_eq!(dt(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(dt(951_868_799), (2000, 2, 29, 23, 59, 59));
        assert_eq!(dt(1_709_251_199), (2024, 2, 29, 23, 59, 59));
        assert_eq!(dt(4_107_542_400), (2100, 3, 1, 0, 0, 0)); // 2100 is not a leap year
                                                              // Out-of-range inputs are clamped by fixed_time rather than wrapping.
        assert_eq!(fixed_time(0).0, fat_date_time(FAT_MIN_UNIX));
        assert_eq!(fixed_time(-5).0, fat_date_time(FAT_MIN_UNIX));
        assert_eq!(fixed_time(i64::MAX).0, fat_date_time(FAT_MAX_UNIX));
        // And the provider is shared per timestamp rather than leaked per call.
        assert!(std::ptr::eq(fixed_time(TS), fixed_time(TS)));
        let img = {
            let mut c = Cursor::new(Vec::new());
            build_fat_image(&mut c, 32 * MIB, "", 1, &files(), 0).unwrap();
            c.into_inner()
        };
        let fs = FileSystem::new(Cursor::new(img), FsOptions::new()).unwrap();
        let e = fs.root_dir().iter().next().unwrap().unwrap();
        assert_eq!(e.modified().date.year, 1980);
    }

    #[test]
    fn rejects_bad_arguments_without_writing() {
        let mut img = Cursor::new(Vec::new());
        fn try_build(
            img: &mut Cursor<Vec<u8>>,
            size: u64,
            label: &str,
            files: &[(String, Vec<u8>)],
        ) -> Result<()> {
            build_fat_image(img, size, label, 1, files, TS)
        }
        let f = |p: &str| vec![(p.to_string(), vec![1u8])];
        assert!(matches!(
            try_build(&mut img, 32 * MIB + 1, "X", &[]),
            Err(FatError::BadSize(_))
        ));
        assert!(matches!(
            try_build(&mut img, 0, "X", &[]),
            Err(FatError::BadSize(_))
        ));
        assert!(matches!(
            try_build(&mut img, 32 * MIB, "lower", &[]),
            Err(FatError::BadLabel { .. })
        ));
        assert!(matches!(
            try_build(&mut img, 32 * MIB, "TWELVE_CHARS", &[]),
            Err(FatError::BadLabel { .. })
        ));
        assert!(matches!(
            try_build(&mut img, 32 * MIB, "A.B", &[]),
            Err(FatError::BadLabel { .. })
        ));
        for p in [
            "", "/abs", "a//b", "a/", "a/../b", "./a", "a:b", "a?", "trail.", "x\u{1}",
        ] {
            assert!(
                matches!(
                    try_build(&mut img, 32 * MIB, "X", &f(p)),
                    Err(FatError::BadPath { .. })
                ),
                "{p:?}"
            );
        }
        let case_dup = vec![
            ("boot/A.TXT".to_string(), vec![]),
            ("BOOT/a.txt".to_string(), vec![]),
        ];
        assert!(matches!(
            try_build(&mut img, 32 * MIB, "X", &case_dup),
            Err(FatError::Conflict { .. })
        ));
        let file_and_dir = vec![("a".to_string(), vec![]), ("a/b".to_string(), vec![])];
        assert!(matches!(
            try_build(&mut img, 32 * MIB, "X", &file_and_dir),
            Err(FatError::Conflict { .. })
        ));
        let exact_dup = vec![("a".to_string(), vec![1]), ("a".to_string(), vec![2])];
        assert!(matches!(
            try_build(&mut img, 32 * MIB, "X", &exact_dup),
            Err(FatError::Conflict { .. })
        ));
        assert!(
            img.get_ref().is_empty(),
            "a rejected call wrote to the output"
        );
        // Files that do not fit surface as an error, not a panic or a truncated file.
        let huge = vec![("big".to_string(), vec![7u8; (40 * MIB) as usize])];
        assert!(matches!(
            try_build(&mut img, 32 * MIB, "X", &huge),
            Err(FatError::File { .. })
        ));
    }

    /// Cross-checks with mtools and dosfstools when installed; each part skips otherwise.
    #[test]
    fn host_tools_agree() {
        use std::process::Command;
        let have = |tool: &str, arg: &str| matches!(Command::new(tool).arg(arg).output(), Ok(o) if o.status.success());
        if have("fsck.fat", "--help") {
            // FAT16 and FAT32 (fatfs picks FAT32 from 512 MiB; the file stays sparse).
            for size in [16 * MIB, 64 * MIB, 128 * MIB, 512 * MIB] {
                let file = tempfile::NamedTempFile::new().unwrap();
                build_fat_image(&mut file.reopen().unwrap(), size, "CAIRN", 1, &files(), TS)
                    .unwrap();
                // -n: check only, never repair; any finding is a failure.
                let out = Command::new("fsck.fat")
                    .arg("-n")
                    .arg(file.path())
                    .output()
                    .unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "fsck.fat ({size} bytes): {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(stdout.lines().count(), 2, "fsck.fat findings: {stdout}");
            }
        } else {
            eprintln!("fsck.fat not found; skipping that check");
        }

        let img = build(64 * MIB, &files());
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &img).unwrap();
        let image = file.path().to_str().unwrap().to_string();

        if have("mtype", "-V") && have("mdir", "-V") {
            let mtools = |cmd: &str, path: &str| {
                let out = Command::new(cmd)
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .env("TZ", "UTC")
                    .args(["-i", &image, path])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{cmd} {path}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            };
            assert_eq!(mtools("mtype", "::/config.txt"), b"arm_64bit=1\n");
            assert_eq!(
                mtools("mtype", "::/EFI/BOOT/BOOTX64.EFI"),
                vec![0x4D; 300_000]
            );
            let listing = String::from_utf8(mtools("mdir", "::/overlays")).unwrap();
            assert!(listing.contains("a-long-file-name.dtbo"), "{listing}");
            assert!(listing.contains("2023-11-14"), "{listing}");
            let label = String::from_utf8(mtools("mdir", "::/")).unwrap();
            assert!(label.contains("CAIRN-BOOT"), "{label}");
        } else {
            eprintln!("mtools not found; skipping that check");
        }
    }
}
