//! Finding partitions by their GPT name through sysfs, as the kernel announces them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Partition {
    /// Kernel name, e.g. vda4.
    pub name: String,
    /// The whole disk's kernel name, e.g. vda.
    pub disk: String,
    pub number: u32,
}

impl Partition {
    pub fn dev(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }
    pub fn disk_dev(&self) -> PathBuf {
        Path::new("/dev").join(&self.disk)
    }
}

fn uevent_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// Looks once through `sys/class/block` for a partition whose GPT name is `label`.
pub fn find_by_label(sys: &Path, label: &str) -> Option<Partition> {
    let mut entries: Vec<_> = std::fs::read_dir(sys.join("class/block"))
        .ok()?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let uevent = std::fs::read_to_string(e.path().join("uevent")).unwrap_or_default();
        if uevent_field(&uevent, "DEVTYPE").as_deref() != Some("partition") {
            continue;
        }
        if uevent_field(&uevent, "PARTNAME").as_deref() != Some(label) {
            continue;
        }
        let name = uevent_field(&uevent, "DEVNAME")?;
        let number = uevent_field(&uevent, "PARTN")?.parse().ok()?;
        // The partition's sysfs directory sits inside its disk's directory.
        let disk = std::fs::canonicalize(e.path())
            .ok()?
            .parent()?
            .file_name()?
            .to_string_lossy()
            .to_string();
        return Some(Partition { name, disk, number });
    }
    None
}

/// Waits for a partition to appear (drivers probe asynchronously).
pub fn wait_for_label(label: &str, timeout: Duration) -> Option<Partition> {
    let start = Instant::now();
    loop {
        if let Some(p) = find_by_label(Path::new("/sys"), label) {
            return Some(p);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Size in bytes of a block device by kernel name.
pub fn size_bytes(kernel_name: &str) -> Option<u64> {
    let sectors: u64 = std::fs::read_to_string(format!("/sys/class/block/{kernel_name}/size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(sectors * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_partition_by_gpt_name_in_a_fake_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("devices/virtio0/block/vda");
        let part = disk.join("vda2");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(
            part.join("uevent"),
            "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=root_a\n",
        )
        .unwrap();
        std::fs::write(disk.join("uevent"), "DEVNAME=vda\nDEVTYPE=disk\n").unwrap();
        let class = dir.path().join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&part, class.join("vda2")).unwrap();
        std::os::unix::fs::symlink(&disk, class.join("vda")).unwrap();

        let p = find_by_label(dir.path(), "root_a").expect("found");
        assert_eq!(
            (p.name.as_str(), p.disk.as_str(), p.number),
            ("vda2", "vda", 2)
        );
        assert!(find_by_label(dir.path(), "root_b").is_none());
    }
}
