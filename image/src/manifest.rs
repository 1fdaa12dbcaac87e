//! `manifest.json`: what went into an image (a software bill of materials) and the sha256 of
//! every artifact.

use crate::packages::Package;
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Artifact {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

impl Artifact {
    pub fn of(path: &Path) -> Result<Artifact> {
        let mut f =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            bytes += n as u64;
        }
        Ok(Artifact {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            bytes,
            sha256: hex::encode(h.finalize()),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub board: String,
    pub arch: String,
    pub version: String,
    pub source_date_epoch: u64,
    pub suite: String,
    pub kernel_version: String,
    pub root_squashfs_bytes: u64,
    pub image_bytes: u64,
    pub init_bytes: u64,
    pub cairn_bytes: u64,
    pub root_packages: Vec<Package>,
    pub boot_packages: Vec<Package>,
    pub artifacts: Vec<Artifact>,
}

impl Manifest {
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}
