//! The signed update bundle of a build, and checking one on the host.

use crate::board::Board;
use anyhow::{bail, Context, Result};
use cairn_update::bundle::{self, BootFile, Manifest, Payload};
use cairn_update::copy::section_digests;
use cairn_update::keys::{PublicKey, SigningKey};
use sha2::{Digest, Sha256};
use std::path::Path;

pub struct Contents<'a> {
    pub board: &'a Board,
    pub version: &'a str,
    pub min_version: &'a str,
    pub created: u64,
    pub squashfs: &'a Path,
    /// (name on the boot partition, bytes)
    pub boot_files: &'a [(&'a str, &'a [u8])],
}

/// Writes `out` (through a temporary file, so a failed build leaves no half bundle).
pub fn write(out: &Path, key: &SigningKey, c: &Contents<'_>) -> Result<Manifest> {
    let mut root = std::fs::File::open(c.squashfs)
        .with_context(|| format!("opening {}", c.squashfs.display()))?;
    let payload = Payload::squashfs(section_digests(&mut root)?);
    let mut boot_files = Vec::new();
    for (name, bytes) in c.boot_files {
        boot_files.push(BootFile::new(name, section_digests(&mut &bytes[..])?));
    }
    let manifest = Manifest {
        format: bundle::FORMAT_VERSION,
        board: c.board.board.name.clone(),
        arch: c.board.board.arch.clone(),
        version: c.version.to_string(),
        min_version: c.min_version.to_string(),
        created: c.created,
        payload,
        boot_files,
    };
    let tmp = out.with_extension("cairnb.tmp");
    {
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        let mut root = std::fs::File::open(c.squashfs)?;
        let boot_files: Vec<&[u8]> = c.boot_files.iter().map(|(_, b)| *b).collect();
        bundle::write(&mut w, key, &manifest, &mut root, &boot_files)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, out)?;
    Ok(manifest)
}

/// Checks a bundle on the host: signature by `key`, every section's length, the hash of
/// each of its chunks (what a device checks) and its whole SHA-256 (what a person compares).
pub fn verify(path: &Path, key: &Path) -> Result<Manifest> {
    let key = PublicKey::load(key)?;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut opened = bundle::open(std::io::BufReader::new(f), &[key])?;
    let manifest = opened.manifest.clone();
    for (i, f) in manifest.boot_files.iter().enumerate() {
        let mut whole = Sha256::new();
        opened.copy_boot_file(i, &mut whole, |_| {})?;
        same_hash(&f.section_name(), whole, &f.sha256)?;
    }
    let mut whole = Sha256::new();
    opened.copy_payload(&mut whole, |_| {})?;
    same_hash("payload", whole, &manifest.payload.sha256)?;
    opened.finish()?;
    Ok(manifest)
}

fn same_hash(section: &str, hasher: Sha256, manifest_says: &str) -> Result<()> {
    let got = hex::encode(hasher.finalize());
    if !got.eq_ignore_ascii_case(manifest_says) {
        bail!(
            "{section}: its chunks match their hashes but the whole hashes to {got}, not the manifest's {manifest_says}: the bundle was built wrong"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_bundle_verifies_with_the_public_key_and_not_with_another() {
        let dir = tempfile::tempdir().unwrap();
        let board =
            Board::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/qemu-aarch64.toml"))
                .unwrap();
        let squashfs = dir.path().join("root.squashfs");
        std::fs::write(&squashfs, vec![3u8; 100_000]).unwrap();
        let key_pem = SigningKey::generate_pem().unwrap();
        let key = SigningKey::from_pem(&key_pem, Path::new("k")).unwrap();
        let public = dir.path().join("k.pub");
        std::fs::write(&public, key.public().to_pem()).unwrap();
        let out = dir.path().join("x.cairnb");
        let written = write(
            &out,
            &key,
            &Contents {
                board: &board,
                version: "0.2.0",
                min_version: "0.1.0",
                created: 7,
                squashfs: &squashfs,
                boot_files: &[("Image", b"kernel"), ("initrd.img", b"initramfs")],
            },
        )
        .unwrap();
        assert_eq!(verify(&out, &public).unwrap(), written);
        assert_eq!(written.boot_files.len(), 2);

        let other =
            SigningKey::from_pem(&SigningKey::generate_pem().unwrap(), Path::new("o")).unwrap();
        std::fs::write(&public, other.public().to_pem()).unwrap();
        let err = verify(&out, &public).unwrap_err().to_string();
        assert!(err.contains("does not trust"), "{err}");

        // Signed, every chunk as its hash says, but a whole-file hash that does not match:
        // a device would install it, so the host check must catch the builder's mistake.
        let mut m = written.clone();
        m.boot_files[0].sha256 = "00".repeat(32);
        let mut bytes = Vec::new();
        let root = std::fs::read(&squashfs).unwrap();
        bundle::write(
            &mut bytes,
            &other,
            &m,
            &mut &root[..],
            &[b"kernel", b"initramfs"],
        )
        .unwrap();
        std::fs::write(&out, bytes).unwrap();
        let err = verify(&out, &public).unwrap_err().to_string();
        assert!(err.contains("boot file Image: its chunks match"), "{err}");
    }
}
