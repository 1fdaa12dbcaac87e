//! OCI image-layout archives built from a directory, with no registry and no container tool.
//!
//! The tests and the device images need a container image (busybox) that works offline; this
//! writes one as an OCI image-layout tar (`oci-layout`, `index.json`, `blobs/sha256/…`), the
//! format `ctr import`, containerd's importer and cairn's agent all read. The output is a pure
//! function of the inputs: entries are sorted, owners are root, mtimes are zero and the gzip
//! header carries no timestamp, so two builds of the same rootfs give the same bytes and the
//! same image digest.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;
use sha2::{Digest, Sha256};

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Annotation the OCI spec defines for the reference of a manifest in an index.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd's importer reads for the full image name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A fixed creation time: the image must not change with the clock.
const EPOCH: &str = "1970-01-01T00:00:00Z";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unsupported architecture {0:?}: expected amd64 or arm64")]
    Architecture(String),
    #[error("{path}: unsupported file type in the rootfs (only files, directories and symlinks)")]
    FileType { path: PathBuf },
    #[error("{0} does not contain a busybox applet table and could not be run with --list")]
    BusyboxApplets(PathBuf),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = OciError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The runtime defaults an image carries (the `config` object of the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// `port/proto`, e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl ImageConfig {
    /// What a busybox image usually carries: a shell as the command and a PATH.
    pub fn busybox() -> Self {
        ImageConfig {
            cmd: vec!["sh".to_string()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            ..Default::default()
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let mut c = serde_json::Map::new();
        if !self.entrypoint.is_empty() {
            c.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            c.insert("Cmd".into(), json!(self.cmd));
        }
        if !self.env.is_empty() {
            c.insert("Env".into(), json!(self.env));
        }
        if !self.working_dir.is_empty() {
            c.insert("WorkingDir".into(), json!(self.working_dir));
        }
        if !self.user.is_empty() {
            c.insert("User".into(), json!(self.user));
        }
        if !self.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, serde_json::Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            c.insert("ExposedPorts".into(), serde_json::Value::Object(ports));
        }
        if !self.labels.is_empty() {
            c.insert("Labels".into(), json!(self.labels));
        }
        serde_json::Value::Object(c)
    }
}

/// A content-addressed blob of the layout.
struct Blob {
    digest_hex: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        Blob {
            digest_hex: hex::encode(Sha256::digest(&bytes)),
            bytes,
        }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", self.digest_hex)
    }

    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        json!({"mediaType": media_type, "digest": self.digest(), "size": self.bytes.len()})
    }
}

/// Writes an OCI image-layout tar at `out` holding one image named `reference` (a full
/// reference such as `docker.io/library/busybox:latest`) for `linux/<arch>`, whose single gzip
/// layer is the content of `rootfs`.
///
/// The layer is built in memory: this is meant for small images (busybox, test fixtures).
pub fn write_archive(
    rootfs: &Path,
    reference: &str,
    arch: &str,
    config: &ImageConfig,
    out: &Path,
) -> Result<()> {
    if arch != "amd64" && arch != "arm64" {
        return Err(OciError::Architecture(arch.to_string()));
    }
    let layer_tar = layer_tar(rootfs)?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer_tar)));
    let layer = Blob::new(gzip(&layer_tar).map_err(io_err(out))?);

    let config_blob = Blob::new(serde_json::to_vec(&json!({
        "created": EPOCH,
        "architecture": arch,
        "os": "linux",
        "config": config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": EPOCH, "created_by": "cairn-image oci::write_archive"}],
    }))?);
    let manifest = Blob::new(serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config_blob.descriptor(MEDIA_TYPE_CONFIG),
        "layers": [layer.descriptor(MEDIA_TYPE_LAYER_GZIP)],
    }))?);
    let mut manifest_desc = manifest.descriptor(MEDIA_TYPE_MANIFEST);
    manifest_desc["annotations"] = json!({
        ANNOTATION_REF_NAME: reference,
        ANNOTATION_CONTAINERD_NAME: reference,
    });
    manifest_desc["platform"] = json!({"architecture": arch, "os": "linux"});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [manifest_desc],
    }))?;

    let mut blobs = [layer, config_blob, manifest];
    blobs.sort_by(|a, b| a.digest_hex.cmp(&b.digest_hex));
    let file = fs::File::create(out).map_err(io_err(out))?;
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    append_dir(&mut tar, "blobs/").map_err(io_err(out))?;
    append_dir(&mut tar, "blobs/sha256/").map_err(io_err(out))?;
    for blob in &blobs {
        let name = format!("blobs/sha256/{}", blob.digest_hex);
        append_file(&mut tar, &name, 0o644, &blob.bytes).map_err(io_err(out))?;
    }
    append_file(&mut tar, "index.json", 0o644, &index).map_err(io_err(out))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    append_file(&mut tar, "oci-layout", 0o644, layout).map_err(io_err(out))?;
    let mut writer = tar.into_inner().map_err(io_err(out))?;
    writer.flush().map_err(io_err(out))?;
    Ok(())
}

/// A header with everything that varies between machines pinned: owner root, mtime 0.
fn fixed_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str) -> io::Result<()> {
    let mut h = fixed_header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, name, io::empty())
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    mode: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut h = fixed_header(tar::EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut h, name, data)
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    // GzEncoder writes mtime 0 and no file name, which keeps the output reproducible.
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

/// The uncompressed layer: every entry under `rootfs`, parents before children, siblings
/// sorted by name, ownership root and mtime 0; symlinks stay symlinks.
fn layer_tar(rootfs: &Path) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in walkdir::WalkDir::new(rootfs)
        .min_depth(1)
        .sort_by_file_name()
        .follow_links(false)
    {
        let entry = entry.map_err(|e| OciError::Io {
            path: e.path().unwrap_or(rootfs).to_path_buf(),
            source: e.into(),
        })?;
        let path = entry.path();
        let rel = path
            .strip_prefix(rootfs)
            .map_err(|_| OciError::FileType {
                path: path.to_path_buf(),
            })?
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let res = if ft.is_dir() {
            append_dir(&mut tar, &format!("{rel}/"))
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io_err(path))?;
            let mut h = fixed_header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, &rel, &target)
        } else if ft.is_file() {
            let data = fs::read(path).map_err(io_err(path))?;
            append_file(&mut tar, &rel, mode, &data)
        } else {
            return Err(OciError::FileType {
                path: path.to_path_buf(),
            });
        };
        res.map_err(io_err(path))?;
    }
    tar.into_inner().map_err(io_err(rootfs))
}

/// Fills `dir` with a minimal busybox root filesystem: `/bin/busybox` and one symlink per
/// applet in `/bin` (with `/sbin`, `/usr/bin` and `/usr/sbin` pointing at it), `/etc/passwd`
/// and `/etc/group` with root and nobody (65534), and the empty mount points a container
/// runtime expects.
///
/// `busybox` may be for another architecture than the build host (the device build passes
/// the target's binary), so the applet list is read from the binary's own name table and
/// running `busybox --list` is only the fallback.
pub fn busybox_rootfs(busybox: &Path, dir: &Path) -> Result<()> {
    let applets = busybox_applets(busybox)?;
    for d in [
        "bin", "etc", "tmp", "var", "proc", "sys", "dev", "root", "usr",
    ] {
        fs::create_dir_all(dir.join(d)).map_err(io_err(dir))?;
    }
    let tmp = dir.join("tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(io_err(&tmp))?;
    let bin = dir.join("bin/busybox");
    fs::copy(busybox, &bin).map_err(io_err(busybox))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).map_err(io_err(&bin))?;
    for applet in applets.iter().filter(|a| a.as_str() != "busybox") {
        let link = dir.join("bin").join(applet);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("busybox", &link).map_err(io_err(&link))?;
        }
    }
    for (link, target) in [
        ("sbin", "bin"),
        ("usr/bin", "../bin"),
        ("usr/sbin", "../bin"),
    ] {
        let link = dir.join(link);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(target, &link).map_err(io_err(&link))?;
        }
    }
    let files: [(&str, &str); 2] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnobody:x:65534:\n"),
    ];
    for (name, content) in files {
        let p = dir.join(name);
        fs::write(&p, content).map_err(io_err(&p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).map_err(io_err(&p))?;
    }
    Ok(())
}

/// The applet names compiled into a busybox binary.
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let bytes = fs::read(busybox).map_err(io_err(busybox))?;
    if let Some(names) = applet_table(&bytes) {
        return Ok(names);
    }
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(io_err(busybox))?;
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !out.status.success() || names.is_empty() {
        return Err(OciError::BusyboxApplets(busybox.to_path_buf()));
    }
    Ok(names)
}

/// busybox keeps its applet names as one sorted NUL-separated string table that starts with
/// `[` and `[[` in every build that has the test applets; the table ends at a double NUL.
fn applet_table(bytes: &[u8]) -> Option<Vec<String>> {
    const START: &[u8] = b"[\0[[\0";
    let start = bytes.windows(START.len()).position(|w| w == START)?;
    let rest = &bytes[start..];
    let end = rest.windows(2).position(|w| w == b"\0\0")?;
    let names: Vec<String> = rest[..end]
        .split(|b| *b == 0)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    let plausible = names.len() > 10
        && names.windows(2).all(|w| w[0] < w[1])
        && names.iter().all(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"[-_.".contains(&b))
        });
    plausible.then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Read;

    const BUSYBOX: &str = "/bin/busybox";

    fn read_archive(path: &Path) -> HashMap<String, Vec<u8>> {
        let mut files = HashMap::new();
        let mut ar = tar::Archive::new(fs::File::open(path).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.insert(name, data);
        }
        files
    }

    fn blob<'a>(files: &'a HashMap<String, Vec<u8>>, digest: &str, size: u64) -> &'a [u8] {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let data = &files[&format!("blobs/sha256/{hex}")];
        assert_eq!(hex::encode(Sha256::digest(data)), hex, "digest of {digest}");
        assert_eq!(data.len() as u64, size, "size of {digest}");
        data
    }

    fn small_rootfs(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(dir.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("etc/hostname"), b"x\n").unwrap();
        std::os::unix::fs::symlink("tool", dir.join("bin/alias")).unwrap();
    }

    #[test]
    fn archive_links_are_consistent_and_reproducible() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        small_rootfs(&rootfs);
        let reference = "docker.io/library/tool:1";
        let mut config = ImageConfig::busybox();
        config.exposed_ports = vec!["80/tcp".into()];
        let a = tmp.path().join("a.tar");
        let b = tmp.path().join("b.tar");
        write_archive(&rootfs, reference, "arm64", &config, &a).unwrap();
        // A different mtime on the source must not change the output.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(100);
        fs::File::options()
            .append(true)
            .open(rootfs.join("etc/hostname"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        write_archive(&rootfs, reference, "arm64", &config, &b).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());

        let files = read_archive(&a);
        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"][ANNOTATION_CONTAINERD_NAME], reference);
        assert_eq!(m["annotations"][ANNOTATION_REF_NAME], reference);
        assert_eq!(m["platform"]["architecture"], "arm64");
        let manifest: serde_json::Value = serde_json::from_slice(blob(
            &files,
            m["digest"].as_str().unwrap(),
            m["size"].as_u64().unwrap(),
        ))
        .unwrap();
        let c = &manifest["config"];
        let config_json: serde_json::Value = serde_json::from_slice(blob(
            &files,
            c["digest"].as_str().unwrap(),
            c["size"].as_u64().unwrap(),
        ))
        .unwrap();
        assert_eq!(config_json["config"]["Cmd"], json!(["sh"]));
        assert_eq!(config_json["config"]["ExposedPorts"], json!({"80/tcp": {}}));
        let l = &manifest["layers"][0];
        assert_eq!(l["mediaType"], MEDIA_TYPE_LAYER_GZIP);
        let layer = blob(
            &files,
            l["digest"].as_str().unwrap(),
            l["size"].as_u64().unwrap(),
        );
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(layer)
            .read_to_end(&mut plain)
            .unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&plain)));
        assert_eq!(config_json["rootfs"]["diff_ids"], json!([diff_id]));

        let mut entries = Vec::new();
        for e in tar::Archive::new(&plain[..]).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!((h.uid().unwrap(), h.mtime().unwrap()), (0, 0));
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            entries.push((e.path().unwrap().to_string_lossy().into_owned(), link));
        }
        assert_eq!(
            entries,
            vec![
                ("bin/".to_string(), None),
                ("bin/alias".to_string(), Some("tool".to_string())),
                ("bin/tool".to_string(), None),
                ("etc/".to_string(), None),
                ("etc/hostname".to_string(), None),
            ]
        );
    }

    #[test]
    fn rejects_unknown_architecture() {
        let tmp = tempfile::tempdir().unwrap();
        let err = write_archive(
            tmp.path(),
            "x",
            "riscv64",
            &ImageConfig::default(),
            &tmp.path().join("o.tar"),
        )
        .unwrap_err();
        assert!(matches!(err, OciError::Architecture(_)), "{err}");
    }

    #[test]
    fn applet_table_matches_busybox_list() {
        if !Path::new(BUSYBOX).exists() {
            panic!("{BUSYBOX} is missing: install busybox-static (make deps)");
        }
        let table = applet_table(&fs::read(BUSYBOX).unwrap()).expect("applet table");
        let out = Command::new(BUSYBOX).arg("--list").output().unwrap();
        let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(table, listed);
    }

    #[test]
    fn busybox_rootfs_has_applets_and_users() {
        let tmp = tempfile::tempdir().unwrap();
        busybox_rootfs(Path::new(BUSYBOX), tmp.path()).unwrap();
        assert_eq!(
            fs::read_link(tmp.path().join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(tmp.path().join("usr/bin/env").exists());
        let passwd = fs::read_to_string(tmp.path().join("etc/passwd")).unwrap();
        assert!(passwd.contains("nobody:x:65534:65534"), "{passwd}");
        let out = Command::new(tmp.path().join("bin/sh"))
            .args(["-c", "echo ok"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"ok\n");
    }
}
