//! The update bundle: one file, read once from start to end (see `update/FORMAT.md`).
//!
//! ```text
//! 0    8   magic "CAIRNBDL"
//! 8    2   format version, u16 LE (4)
//! 10   2   flags, u16 LE (0)
//! 12   4   manifest length M, u32 LE (1..=1048576)
//! 16   32  key id: SHA-256 of the signer's ed25519 public key
//! 48   64  ed25519 signature over bytes 0..48 followed by the manifest
//! 112  M   manifest, UTF-8 JSON
//! 112+M    each boot file of manifest.boot_files, in order, exactly its size
//! ...      payload: exactly manifest.payload.size bytes (a squashfs root); then end of file
//! ```

use crate::copy::{self, Copied, CopyError, Digest, SectionDigests};
use crate::keys::{self, PublicKey, SigningKey};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

pub const MAGIC: &[u8; 8] = b"CAIRNBDL";
pub const FORMAT_VERSION: u16 = 4;
pub const HEADER_LEN: usize = 112;
/// Room for the chunk hashes of a root of several GiB.
pub const MAX_MANIFEST: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u16,
    pub board: String,
    pub arch: String,
    pub version: String,
    /// The anti-rollback floor: once this bundle's slot commits, nothing older installs.
    pub min_version: String,
    /// SOURCE_DATE_EPOCH of the build.
    pub created: u64,
    pub payload: Payload,
    /// Files before the payload that go to the slot's directory on the boot partition (the
    /// kernel and initramfs that boot this root).
    pub boot_files: Vec<BootFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// "squashfs".
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    pub sha256: String,
    /// BLAKE3 digest of each `copy::CHUNK` of the payload, the last one short.
    pub chunk_blake3: Vec<String>,
}

impl Payload {
    pub fn squashfs(d: SectionDigests) -> Payload {
        Payload {
            kind: "squashfs".into(),
            size: d.size,
            sha256: d.sha256,
            chunk_blake3: d.chunk_blake3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// BLAKE3 digest of each `copy::CHUNK` of the file, the last one short.
    pub chunk_blake3: Vec<String>,
}

impl BootFile {
    /// How messages name this section of a bundle.
    pub fn section_name(&self) -> String {
        format!("boot file {}", self.name)
    }

    pub fn new(name: &str, d: SectionDigests) -> BootFile {
        BootFile {
            name: name.to_string(),
            size: d.size,
            sha256: d.sha256,
            chunk_blake3: d.chunk_blake3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a cairn update bundle (no CAIRNBDL magic at the start)")]
    NotABundle,
    #[error(
        "bundle format {0} is not format {FORMAT_VERSION}, the one this cairn reads: build it with a matching cairn-image"
    )]
    UnsupportedFormat(u16),
    #[error("bundle ends inside its {0}: the file is truncated")]
    TruncatedHeader(&'static str),
    #[error("bundle manifest of {0} bytes is out of bounds (1..={MAX_MANIFEST})")]
    ManifestSize(u32),
    #[error("bundle is not signed")]
    Unsigned,
    #[error(
        "bundle is signed by key {0}, which this device does not trust (/etc/cairn/update-keys)"
    )]
    UnknownKey(String),
    #[error("bundle signature does not match its manifest: the bundle was altered or damaged")]
    BadSignature,
    #[error("bundle manifest is not valid: {0}")]
    Manifest(String),
    #[error("{section} truncated: {got} of {expected} bytes arrived")]
    Truncated {
        section: String,
        got: u64,
        expected: u64,
    },
    #[error("payload is longer than the {expected} bytes its manifest declares")]
    PayloadOversized { expected: u64 },
    #[error("{section} hash mismatch in bytes {start}..{end}: the bundle was altered or damaged")]
    PayloadHash {
        section: String,
        start: u64,
        end: u64,
    },
    #[error("{wanted} asked for while the bundle carries {next} next (a bug in the caller)")]
    OutOfOrder { wanted: String, next: String },
    #[error("reading the bundle: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing what the bundle carries: {0}")]
    Write(std::io::Error),
}

/// The fixed part of the header, as signed.
fn signed_prefix(manifest_len: u32, key_id: &[u8; 32]) -> [u8; 48] {
    let mut h = [0u8; 48];
    h[0..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&manifest_len.to_le_bytes());
    h[16..48].copy_from_slice(key_id);
    h
}

/// Writes a signed bundle: header, manifest, the boot files (one per manifest entry, in
/// order; a kernel and an initramfs fit in memory), then the payload copied from `payload`.
pub fn write(
    out: &mut impl Write,
    key: &SigningKey,
    manifest: &Manifest,
    payload: &mut impl Read,
    boot_files: &[&[u8]],
) -> Result<(), BundleError> {
    if boot_files.len() != manifest.boot_files.len() {
        return Err(BundleError::Manifest(format!(
            "{} boot files declared, {} given",
            manifest.boot_files.len(),
            boot_files.len()
        )));
    }
    let json =
        serde_json::to_vec_pretty(manifest).map_err(|e| BundleError::Manifest(e.to_string()))?;
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    if len == 0 || len > MAX_MANIFEST {
        return Err(BundleError::ManifestSize(len));
    }
    let prefix = signed_prefix(len, &key.public().id());
    let mut message = prefix.to_vec();
    message.extend_from_slice(&json);
    let signature = key.sign(&message);
    out.write_all(&prefix)?;
    out.write_all(&signature)?;
    out.write_all(&json)?;
    for (bytes, f) in boot_files.iter().zip(&manifest.boot_files) {
        copy_exact(&mut &bytes[..], out, &f.section_name(), f.size)?;
    }
    copy_exact(payload, out, "payload", manifest.payload.size)?;
    out.flush()?;
    Ok(())
}

fn copy_exact(
    from: &mut (impl Read + ?Sized),
    out: &mut impl Write,
    section: &str,
    size: u64,
) -> Result<(), BundleError> {
    let copied = std::io::copy(&mut from.take(size), out)?;
    if copied != size {
        return Err(BundleError::Truncated {
            section: section.to_string(),
            got: copied,
            expected: size,
        });
    }
    Ok(())
}

/// A bundle whose header and manifest are read and whose signature is verified; its
/// sections are still unread in the stream, to be copied in the order it carries them: each
/// boot file (`copy_boot_file`), then the payload (`copy_payload`).
pub struct Opened<R> {
    pub manifest: Manifest,
    pub key: PublicKey,
    stream: R,
    /// Each boot file, then the payload, as the stream carries them.
    sections: Vec<Section>,
    /// The index in `sections` of the next one in the stream.
    next: usize,
    copier: copy::Copier,
}

/// A section of the stream as its checks need it.
struct Section {
    /// How errors name it: "payload", "boot file vmlinuz".
    name: String,
    size: u64,
    chunk_blake3: Vec<Digest>,
}

impl Section {
    /// Takes a section's chunk hashes as digests, once they are known to be one per chunk.
    fn new(name: String, size: u64, hex: &[String]) -> Result<Section, BundleError> {
        if hex.len() != copy::chunk_count(size) {
            return Err(BundleError::Manifest(format!(
                "{name} has {} chunk hashes for its {} chunks",
                hex.len(),
                copy::chunk_count(size)
            )));
        }
        let chunk_blake3 = hex
            .iter()
            .map(|h| {
                copy::digest_from_hex(h).ok_or_else(|| {
                    BundleError::Manifest(format!(
                        "{name} has a chunk hash that is not 64 hex digits"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Section {
            name,
            size,
            chunk_blake3,
        })
    }
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BundleError::TruncatedHeader(what),
        _ => BundleError::Io(e),
    })
}

/// Reads and verifies the header and manifest against the trusted keys. Nothing of the
/// manifest is believed before its signature checks out.
pub fn open<R: Read>(mut stream: R, trusted: &[PublicKey]) -> Result<Opened<R>, BundleError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact_or(&mut stream, &mut header[..8], "header")?;
    if &header[..8] != MAGIC {
        return Err(BundleError::NotABundle);
    }
    read_exact_or(&mut stream, &mut header[8..], "header")?;
    let format = u16::from_le_bytes([header[8], header[9]]);
    if format != FORMAT_VERSION {
        return Err(BundleError::UnsupportedFormat(format));
    }
    let len = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
    if len == 0 || len > MAX_MANIFEST {
        return Err(BundleError::ManifestSize(len));
    }
    let mut key_id = [0u8; 32];
    key_id.copy_from_slice(&header[16..48]);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&header[48..112]);
    if signature == [0u8; 64] {
        return Err(BundleError::Unsigned);
    }
    let key = trusted
        .iter()
        .find(|k| k.id() == key_id)
        .cloned()
        .ok_or_else(|| BundleError::UnknownKey(keys::short_id(&key_id)))?;
    let mut json = vec![0u8; len as usize];
    read_exact_or(&mut stream, &mut json, "manifest")?;
    let mut message = header[..48].to_vec();
    message.extend_from_slice(&json);
    if !keys::verify(&key, &message, &signature) {
        return Err(BundleError::BadSignature);
    }
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|e| BundleError::Manifest(e.to_string()))?;
    if manifest.payload.kind != "squashfs" {
        return Err(BundleError::Manifest(format!(
            "payload type {:?} is not squashfs",
            manifest.payload.kind
        )));
    }
    let mut sections = Vec::with_capacity(manifest.boot_files.len() + 1);
    for f in &manifest.boot_files {
        sections.push(Section::new(f.section_name(), f.size, &f.chunk_blake3)?);
    }
    let payload = &manifest.payload;
    sections.push(Section::new(
        "payload".into(),
        payload.size,
        &payload.chunk_blake3,
    )?);
    Ok(Opened {
        manifest,
        key,
        stream,
        sections,
        next: 0,
        copier: copy::Copier::default(),
    })
}

impl<R: Read> Opened<R> {
    /// Streams boot file `index` (manifest order, every one before the payload) into `out`,
    /// checking every chunk against its signed hash.
    pub fn copy_boot_file(
        &mut self,
        index: usize,
        out: &mut (impl Write + Send),
        progress: impl FnMut(u64),
    ) -> Result<(), BundleError> {
        if index >= self.manifest.boot_files.len() {
            return Err(BundleError::Manifest(format!("no boot file {index}")));
        }
        self.copy_section(index, out, progress).map(drop)
    }

    /// Streams the payload into `out`, once every boot file is copied, checking every chunk
    /// against its signed hash. `progress` hears the bytes done so far. Returns the
    /// per-chunk checksums of what was written, for checking the destination's read-back.
    pub fn copy_payload(
        &mut self,
        out: &mut (impl Write + Send),
        progress: impl FnMut(u64),
    ) -> Result<Copied, BundleError> {
        self.copy_section(self.sections.len() - 1, out, progress)
    }

    /// Checks that nothing follows the last section.
    pub fn finish(mut self) -> Result<(), BundleError> {
        if self.next < self.sections.len() {
            return Err(self.out_of_order("the end"));
        }
        let mut extra = [0u8; 1];
        loop {
            match self.stream.read(&mut extra) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(BundleError::PayloadOversized {
                        expected: self.manifest.payload.size,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Why `wanted` cannot be read now: the stream carries the next section, or has ended.
    fn out_of_order(&self, wanted: &str) -> BundleError {
        BundleError::OutOfOrder {
            wanted: wanted.to_string(),
            next: self
                .sections
                .get(self.next)
                .map_or_else(|| "nothing".into(), |s| s.name.clone()),
        }
    }

    /// Copies section `index` of `sections` (one per manifest entry, in stream order), which
    /// must be the next one in the stream.
    fn copy_section(
        &mut self,
        index: usize,
        out: &mut (impl Write + Send),
        progress: impl FnMut(u64),
    ) -> Result<Copied, BundleError> {
        let section = &self.sections[index];
        if index != self.next {
            return Err(self.out_of_order(&section.name));
        }
        self.next += 1;
        let size = section.size;
        self.copier
            .copy(&mut self.stream, out, size, &section.chunk_blake3, progress)
            .map_err(|e| match e {
                CopyError::Truncated { got, expected } => BundleError::Truncated {
                    section: section.name.clone(),
                    got,
                    expected,
                },
                CopyError::Mismatch { chunk } => {
                    let start = chunk as u64 * copy::CHUNK as u64;
                    BundleError::PayloadHash {
                        section: section.name.clone(),
                        start,
                        end: size.min(start + copy::CHUNK as u64),
                    }
                }
                CopyError::Read(e) => BundleError::Io(e),
                CopyError::Write(e) => BundleError::Write(e),
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    pub fn key() -> SigningKey {
        SigningKey::from_pem(&SigningKey::generate_pem().unwrap(), Path::new("k")).unwrap()
    }

    pub fn manifest_for(payload: &[u8]) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            board: "qemu-aarch64".into(),
            arch: "arm64".into(),
            version: "0.2.0".into(),
            min_version: "0.2.0".into(),
            created: 0,
            payload: Payload::squashfs(copy::section_digests(&mut &payload[..]).unwrap()),
            boot_files: vec![],
        }
    }

    pub fn boot_file(name: &str, bytes: &[u8]) -> BootFile {
        BootFile::new(name, copy::section_digests(&mut &bytes[..]).unwrap())
    }

    pub fn bundle(key: &SigningKey, m: &Manifest, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, key, m, &mut &payload[..], &[]).unwrap();
        out
    }

    fn install(bytes: &[u8], trusted: &[PublicKey]) -> Result<Vec<u8>, BundleError> {
        let mut opened = open(bytes, trusted)?;
        let mut out = Vec::new();
        opened.copy_payload(&mut out, |_| {})?;
        opened.finish()?;
        Ok(out)
    }

    #[test]
    fn boot_files_precede_the_payload_and_are_checked_too() {
        let k = key();
        let payload = b"root".to_vec();
        let kernel = b"kernel image".to_vec();
        let mut m = manifest_for(&payload);
        m.boot_files.push(boot_file("Image", &kernel));
        let mut out = Vec::new();
        write(&mut out, &k, &m, &mut &payload[..], &[&kernel[..]]).unwrap();
        let mut opened = open(&out[..], &[k.public()]).unwrap();
        let (mut root, mut image) = (Vec::new(), Vec::new());
        opened.copy_boot_file(0, &mut image, |_| {}).unwrap();
        opened.copy_payload(&mut root, |_| {}).unwrap();
        opened.finish().unwrap();
        assert_eq!((root, image), (payload, kernel));
        // The last byte of the kernel, just before the 4 bytes of payload.
        let at = out.len() - 4 - 1;
        out[at] ^= 1;
        let mut opened = open(&out[..], &[k.public()]).unwrap();
        let err = opened
            .copy_boot_file(0, &mut Vec::new(), |_| {})
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "boot file Image hash mismatch in bytes 0..12: the bundle was altered or damaged"
        );
    }

    #[test]
    fn sections_are_copied_in_the_order_the_stream_carries_them() {
        let k = key();
        let payload = b"root".to_vec();
        let mut m = manifest_for(&payload);
        m.boot_files.push(boot_file("Image", b"kernel"));
        let mut out = Vec::new();
        write(&mut out, &k, &m, &mut &payload[..], &[b"kernel"]).unwrap();
        let mut opened = open(&out[..], &[k.public()]).unwrap();
        let err = opened.copy_payload(&mut Vec::new(), |_| {}).unwrap_err();
        assert_eq!(
            err.to_string(),
            "payload asked for while the bundle carries boot file Image next (a bug in the caller)"
        );
        let opened = open(&out[..], &[k.public()]).unwrap();
        assert!(matches!(
            opened.finish(),
            Err(BundleError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn a_signed_bundle_streams_its_payload() {
        let k = key();
        let payload = vec![7u8; 3 * copy::CHUNK + 5];
        let b = bundle(&k, &manifest_for(&payload), &payload);
        assert_eq!(&b[..8], MAGIC);
        assert_eq!(install(&b, &[k.public()]).unwrap(), payload);
    }

    #[test]
    fn every_kind_of_bad_bundle_is_refused_with_its_reason() {
        let k = key();
        let payload = b"squashfs bytes".to_vec();
        let m = manifest_for(&payload);
        let good = bundle(&k, &m, &payload);
        let trusted = [k.public()];

        let mut unsigned = good.clone();
        unsigned[48..112].fill(0);
        assert!(matches!(
            install(&unsigned, &trusted),
            Err(BundleError::Unsigned)
        ));

        let stranger = key();
        assert!(matches!(
            install(&bundle(&stranger, &m, &payload), &trusted),
            Err(BundleError::UnknownKey(_))
        ));

        let mut manifest_edit = good.clone();
        let at = good.windows(7).position(|w| w == b"qemu-aa").unwrap();
        manifest_edit[at] = b'Q';
        assert!(matches!(
            install(&manifest_edit, &trusted),
            Err(BundleError::BadSignature)
        ));

        let mut payload_edit = good.clone();
        *payload_edit.last_mut().unwrap() ^= 1;
        assert!(matches!(
            install(&payload_edit, &trusted),
            Err(BundleError::PayloadHash { .. })
        ));

        assert!(matches!(
            install(&good[..good.len() - 3], &trusted),
            Err(BundleError::Truncated {
                got: 11,
                expected: 14,
                ..
            })
        ));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            install(&longer, &trusted),
            Err(BundleError::PayloadOversized { .. })
        ));
        assert!(matches!(
            install(&good[..40], &trusted),
            Err(BundleError::TruncatedHeader(_))
        ));
        assert!(matches!(
            install(b"PK\x03\x04 a zip file", &trusted),
            Err(BundleError::NotABundle)
        ));
    }

    #[test]
    fn a_manifest_whose_chunk_hashes_do_not_fit_its_sizes_is_refused() {
        let k = key();
        let payload = vec![1u8; copy::CHUNK + 1];
        let mut m = manifest_for(&payload);
        m.payload.chunk_blake3.pop();
        let err = install(&bundle(&k, &m, &payload), &[k.public()]).unwrap_err();
        assert!(
            err.to_string()
                .contains("payload has 1 chunk hashes for its 2 chunks"),
            "{err}"
        );
        let mut m = manifest_for(&payload);
        m.payload.chunk_blake3[1] = "zz".into();
        let err = install(&bundle(&k, &m, &payload), &[k.public()]).unwrap_err();
        assert!(matches!(err, BundleError::Manifest(_)), "{err}");
    }

    #[test]
    fn a_message_names_the_problem_on_one_line() {
        let e = BundleError::UnknownKey("0011223344556677".into()).to_string();
        assert!(e.contains("0011223344556677") && !e.contains('\n'));
    }
}
