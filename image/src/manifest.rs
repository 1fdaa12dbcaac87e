//! `manifest.json`: what went into an image (a software bill of materials) and the sha256 of
//! every artifact.

use crate::packages::Package;
use anyhow::{Context, Result};
use serde::Serialize;
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
        let (sha256, bytes) = cairn_update::copy::hash_stream(&mut f)?;
        Ok(Artifact {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            bytes,
            sha256,
        })
    }
}

/// A container image baked into the root filesystem.
#[derive(Debug, Clone, Serialize)]
pub struct BakedImage {
    /// The name the agent imports it under.
    pub reference: String,
    /// Path inside the root.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

impl BakedImage {
    /// Describes the archive at `file`, which sits at `path` inside the root.
    pub fn of(reference: &str, path: &str, file: &Path) -> Result<BakedImage> {
        let Artifact { bytes, sha256, .. } = Artifact::of(file)?;
        Ok(BakedImage {
            reference: reference.to_string(),
            path: path.to_string(),
            bytes,
            sha256,
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
    /// Container images in the root, imported by the agent at start.
    pub images: Vec<BakedImage>,
    pub artifacts: Vec<Artifact>,
}

impl Manifest {
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}
