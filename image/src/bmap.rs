//! `.bmap` files for disk images, in the format bmaptool reads (version 2.0).
//!
//! A bmap lists the 4096-byte blocks of an image that hold data, so `bmaptool copy` writes
//! only those to an SD card and verifies each range's sha256 on the way. Our images are
//! mostly empty (the data partition, the inactive slot), so this makes flashing much faster.
//!
//! Mapped blocks are found by reading the data and looking for non-zero bytes, not with
//! `SEEK_DATA`/`SEEK_HOLE`: the result must not depend on whether the image file happens to
//! be sparse on the build host's filesystem. A block that is all zeros reads back as zeros
//! from a freshly erased or trimmed medium, or is overwritten by the filesystem that owns it
//! before use; that is the same assumption bmaptool's own hole detection makes.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

pub const BLOCK_SIZE: u64 = 4096;
/// sha256 as lower-case hex is 64 characters; the file checksum is computed with this
/// placeholder in its place, which is how bmaptool verifies it.
const CHECKSUM_PLACEHOLDER: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    #[error("reading image {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("writing bmap: {0}")]
    Write(#[from] io::Error),
    #[error("image {path} is empty; bmaptool cannot describe a zero-length image")]
    EmptyImage { path: String },
}

pub type Result<T, E = BmapError> = std::result::Result<T, E>;

/// An inclusive range of mapped blocks and the sha256 of the image bytes it covers (the
/// last block of the image may be partial; only its real bytes are hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRange {
    pub first: u64,
    pub last: u64,
    pub sha256: String,
}

/// The result of scanning an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    pub image_size: u64,
    pub ranges: Vec<MappedRange>,
}

impl BlockMap {
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(BLOCK_SIZE)
    }

    pub fn mapped_blocks_count(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }
}

/// Scans the image at `image_path` and writes its bmap XML to `out`.
pub fn write_bmap(image_path: &Path, out: &mut impl Write) -> Result<()> {
    let display = image_path.display().to_string();
    let read_err = |source| BmapError::Read {
        path: display.clone(),
        source,
    };
    let file = File::open(image_path).map_err(read_err)?;
    let map = scan(&mut BufReader::with_capacity(1 << 20, file)).map_err(read_err)?;
    if map.image_size == 0 {
        return Err(BmapError::EmptyImage { path: display });
    }
    out.write_all(render(&map).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Reads `image` to its end and returns the ranges of blocks that are not all zeros, with
/// their checksums.
pub fn scan(image: &mut impl Read) -> io::Result<BlockMap> {
    let mut ranges = Vec::new();
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    let mut index = 0u64;
    let mut size = 0u64;
    // The range being built: its first block and the running hash of its bytes.
    let mut open: Option<(u64, Sha256)> = None;
    loop {
        let n = read_full(image, &mut block)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        let data = &block[..n];
        if data.iter().any(|&b| b != 0) {
            open.get_or_insert_with(|| (index, Sha256::new()))
                .1
                .update(data);
        } else if let Some((first, hash)) = open.take() {
            ranges.push(close(first, index - 1, hash));
        }
        index += 1;
        if n < block.len() {
            break;
        }
    }
    if let Some((first, hash)) = open.take() {
        ranges.push(close(first, index - 1, hash));
    }
    Ok(BlockMap {
        image_size: size,
        ranges,
    })
}

fn close(first: u64, last: u64, hash: Sha256) -> MappedRange {
    MappedRange {
        first,
        last,
        sha256: hex::encode(hash.finalize()),
    }
}

/// Fills `buf` unless the end of input comes first; returns the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Renders the XML with its file checksum filled in.
pub fn render(map: &BlockMap) -> String {
    let xml = render_with_checksum(map, CHECKSUM_PLACEHOLDER);
    let checksum = hex::encode(Sha256::digest(xml.as_bytes()));
    // Substituting in the rendered text (rather than rendering twice) guarantees that the
    // two versions differ only in those 64 characters, which is what bmaptool checks.
    xml.replacen(CHECKSUM_PLACEHOLDER, &checksum, 1)
}

fn render_with_checksum(map: &BlockMap, checksum: &str) -> String {
    let blocks = map.blocks_count();
    let mapped = map.mapped_blocks_count();
    // Per-mille in integers: floats would format deterministically too, but this keeps the
    // comment free of any question about rounding across platforms.
    let permille = (mapped * 1000).checked_div(blocks).unwrap_or(0);
    let mut x = String::new();
    // `write!` to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(x, "<?xml version=\"1.0\" ?>");
    let _ = writeln!(
        x,
        "<!-- Block map for an image, in the bmaptool format: the ranges of blocks\n     \
         that hold data. Blocks outside them are all zeros and need not be written. -->"
    );
    let _ = writeln!(x, "<bmap version=\"2.0\">");
    let _ = writeln!(
        x,
        "    <!-- Image size in bytes: {} -->",
        human(map.image_size)
    );
    let _ = writeln!(x, "    <ImageSize> {} </ImageSize>", map.image_size);
    let _ = writeln!(x, "    <!-- Size of a block in bytes -->");
    let _ = writeln!(x, "    <BlockSize> {BLOCK_SIZE} </BlockSize>");
    let _ = writeln!(x, "    <!-- Count of blocks in the image -->");
    let _ = writeln!(x, "    <BlocksCount> {blocks} </BlocksCount>");
    let _ = writeln!(
        x,
        "    <!-- Count of mapped blocks: {} or {}.{}% -->",
        human(mapped * BLOCK_SIZE),
        permille / 10,
        permille % 10
    );
    let _ = writeln!(x, "    <MappedBlocksCount> {mapped} </MappedBlocksCount>");
    let _ = writeln!(x, "    <!-- Checksum type used in this file -->");
    let _ = writeln!(x, "    <ChecksumType> sha256 </ChecksumType>");
    let _ = writeln!(
        x,
        "    <!-- sha256 of this file with the value below replaced by 64 '0' characters -->"
    );
    let _ = writeln!(x, "    <BmapFileChecksum> {checksum} </BmapFileChecksum>");
    let _ = writeln!(
        x,
        "    <!-- Mapped block ranges (inclusive), each with the sha256 of its data -->"
    );
    let _ = writeln!(x, "    <BlockMap>");
    for r in &map.ranges {
        if r.first == r.last {
            let _ = writeln!(
                x,
                "        <Range chksum=\"{}\"> {} </Range>",
                r.sha256, r.first
            );
        } else {
            let _ = writeln!(
                x,
                "        <Range chksum=\"{}\"> {}-{} </Range>",
                r.sha256, r.first, r.last
            );
        }
    }
    let _ = writeln!(x, "    </BlockMap>");
    let _ = writeln!(x, "</bmap>");
    x
}

/// "12.5 MiB"-style sizes for the comments, in integer arithmetic (one decimal, truncated).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scale = 1u64;
    while unit + 1 < UNITS.len() && bytes / scale >= 1024 {
        scale *= 1024;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} bytes");
    }
    let tenths = (bytes as u128 * 10 / scale as u128) as u64;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const B: usize = BLOCK_SIZE as usize;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// 10 blocks: data in 0, 1 (one byte), 4..=6 and a partial last block 9.
    fn sample() -> Vec<u8> {
        let mut img = vec![0u8; 9 * B + 100];
        img[..B].fill(0xAB);
        img[B + B - 1] = 1;
        img[4 * B..7 * B].fill(7);
        img[9 * B + 99] = 0xFF;
        img
    }

    #[test]
    fn ranges_skip_zero_blocks() {
        let img = sample();
        let map = scan(&mut Cursor::new(&img)).unwrap();
        assert_eq!(map.image_size, img.len() as u64);
        assert_eq!(map.blocks_count(), 10);
        let spans: Vec<(u64, u64)> = map.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(spans, [(0, 1), (4, 6), (9, 9)]);
        assert_eq!(map.mapped_blocks_count(), 6);
        assert_eq!(map.ranges[0].sha256, sha(&img[..2 * B]));
        assert_eq!(map.ranges[1].sha256, sha(&img[4 * B..7 * B]));
        // The partial last block hashes only the bytes that exist.
        assert_eq!(map.ranges[2].sha256, sha(&img[9 * B..]));
    }

    #[test]
    fn all_zero_and_all_data() {
        let zeros = scan(&mut Cursor::new(vec![0u8; 3 * B])).unwrap();
        assert!(zeros.ranges.is_empty());
        assert_eq!(zeros.blocks_count(), 3);
        let full = scan(&mut Cursor::new(vec![1u8; 3 * B])).unwrap();
        assert_eq!((full.ranges[0].first, full.ranges[0].last), (0, 2));
    }

    /// A reader that returns at most 1000 bytes per call, to exercise short reads.
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_reads_do_not_change_the_result() {
        let img = sample();
        assert_eq!(
            scan(&mut Dribble(&img)).unwrap(),
            scan(&mut Cursor::new(&img)).unwrap()
        );
    }

    fn write_sample(img: &[u8]) -> (tempfile::NamedTempFile, String) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), img).unwrap();
        let mut out = Vec::new();
        write_bmap(file.path(), &mut out).unwrap();
        (file, String::from_utf8(out).unwrap())
    }

    fn element<'a>(xml: &'a str, name: &str) -> &'a str {
        let open = format!("<{name}>");
        let start = xml.find(&open).unwrap() + open.len();
        let end = xml[start..].find(&format!("</{name}>")).unwrap() + start;
        xml[start..end].trim()
    }

    #[test]
    fn xml_fields() {
        let img = sample();
        let (_file, xml) = write_sample(&img);
        assert!(xml.starts_with("<?xml version=\"1.0\" ?>\n"));
        assert!(xml.contains("<bmap version=\"2.0\">"));
        assert_eq!(element(&xml, "ImageSize"), img.len().to_string());
        assert_eq!(element(&xml, "BlockSize"), "4096");
        assert_eq!(element(&xml, "BlocksCount"), "10");
        assert_eq!(element(&xml, "MappedBlocksCount"), "6");
        assert_eq!(element(&xml, "ChecksumType"), "sha256");
        assert!(xml.contains(&format!(
            "<Range chksum=\"{}\"> 0-1 </Range>",
            sha(&img[..2 * B])
        )));
        assert!(xml.contains("> 4-6 </Range>"));
        assert!(xml.contains("> 9 </Range>"));
        assert!(xml.contains("24.0 KiB or 60.0%"), "{xml}");
        // Comments must not contain "--", which XML forbids inside them.
        for comment in xml.split("<!--").skip(1) {
            let body = comment.split("-->").next().unwrap();
            assert!(!body.contains("--"), "{body}");
        }
    }

    #[test]
    fn file_checksum_is_bmaptools() {
        let (_file, xml) = write_sample(&sample());
        let stored = element(&xml, "BmapFileChecksum").to_string();
        assert_eq!(stored.len(), 64);
        assert_ne!(stored, CHECKSUM_PLACEHOLDER);
        let zeroed = xml.replacen(&stored, CHECKSUM_PLACEHOLDER, 1);
        assert_eq!(sha(zeroed.as_bytes()), stored);
    }

    #[test]
    fn deterministic_and_independent_of_sparseness() {
        let img = sample();
        let (_a, dense) = write_sample(&img);
        // The same content written as a sparse file: holes where the zeros are.
        let sparse = tempfile::NamedTempFile::new().unwrap();
        {
            use std::io::{Seek, SeekFrom};
            let mut f = sparse.reopen().unwrap();
            f.set_len(img.len() as u64).unwrap();
            for (i, chunk) in img.chunks(B).enumerate() {
                if chunk.iter().any(|&b| b != 0) {
                    f.seek(SeekFrom::Start((i * B) as u64)).unwrap();
                    f.write_all(chunk).unwrap();
                }
            }
        }
        let mut out = Vec::new();
        write_bmap(sparse.path(), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), dense);
    }

    #[test]
    fn errors() {
        let empty = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            write_bmap(empty.path(), &mut Vec::new()),
            Err(BmapError::EmptyImage { .. })
        ));
        assert!(matches!(
            write_bmap(Path::new("/nonexistent/cairn.img"), &mut Vec::new()),
            Err(BmapError::Read { .. })
        ));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 bytes");
        assert_eq!(human(1023), "1023 bytes");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(4 * 1024 * 1024 * 1024), "4.0 GiB");
    }

    /// bmaptool, when installed, must accept the file, verify every range and the file
    /// checksum, and reproduce the image. Skipped otherwise.
    #[test]
    fn bmaptool_copies_and_verifies() {
        use std::process::Command;
        if !matches!(Command::new("bmaptool").arg("--version").output(), Ok(o) if o.status.success())
        {
            eprintln!("bmaptool not found; skipping");
            return;
        }
        let img = sample();
        let (file, xml) = write_sample(&img);
        let dir = tempfile::tempdir().unwrap();
        let bmap = dir.path().join("image.bmap");
        std::fs::write(&bmap, &xml).unwrap();
        let dest = dir.path().join("dest.img");
        // The destination starts zeroed, like the image's unmapped blocks, so a correct copy
        // reproduces the image exactly.
        std::fs::write(&dest, vec![0u8; img.len()]).unwrap();
        let out = Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(&bmap)
            .arg(file.path())
            .arg(&dest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), img);

        // A tampered bmap must be rejected by bmaptool's file checksum.
        let tampered = xml.replacen("> 9 </Range>", "> 8 </Range>", 1);
        std::fs::write(&bmap, tampered).unwrap();
        let out = Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(&bmap)
            .arg(file.path())
            .arg(&dest)
            .output()
            .unwrap();
        assert!(!out.status.success(), "bmaptool accepted a tampered bmap");
    }
}
