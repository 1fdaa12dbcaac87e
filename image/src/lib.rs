//! cairn-image: board file in, artifacts out (see ARCHITECTURE.md, Images).

pub mod bmap;
pub mod board;
pub mod bootfiles;
pub mod build;
pub mod bundle;
pub mod cpio;
pub mod cross;
pub mod disk;
pub mod fat;
pub mod initramfs;
pub mod manifest;
pub mod oci;
pub mod packages;
pub mod progress;
pub mod rootfs;
pub mod space;
pub mod squashfs;
pub mod tool;
