//! initramfs writer: the "newc" cpio format the Linux kernel unpacks into rootfs at boot.
//!
//! Only what an initramfs needs is supported: directories, regular files, symlinks and
//! character devices (`/dev/console` must exist before init opens it). Every entry gets
//! uid/gid 0, a fixed mtime and a sequential inode number, so the archive is a pure function
//! of the calls made, as reproducible builds require.

use std::collections::BTreeSet;
use std::io::{self, Write};

const MAGIC: &str = "070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
/// Permission bits including setuid/setgid/sticky; the file type is added by the writer.
const PERMISSION_MASK: u32 = 0o7777;

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("I/O error writing the cpio archive: {0}")]
    Io(#[from] io::Error),
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{path:?} added twice")]
    Duplicate { path: String },
    #[error(
        "{path:?} added before its parent directory {parent:?}; the kernel does not create parents"
    )]
    MissingParent { path: String, parent: String },
    #[error("mode {mode:#o} for {path:?} has bits outside the permission bits 0o7777")]
    InvalidMode { path: String, mode: u32 },
    #[error("{path:?} is {len} bytes; newc sizes are 32-bit")]
    TooLarge { path: String, len: usize },
}

pub type Result<T, E = CpioError> = std::result::Result<T, E>;

/// Writes a newc archive entry by entry. Parents must be added before their children (the
/// kernel's unpacker does not create missing directories, it silently skips the entry), and
/// [`CpioWriter::finish`] must be called to append the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    /// Bytes written so far, to compute padding without requiring `Seek`.
    offset: u64,
    /// Every path added, to reject duplicates and check parents.
    paths: BTreeSet<String>,
    /// The subset of `paths` that are directories.
    dirs: BTreeSet<String>,
}

/// One header's worth of fields; the rest (uid, gid, check, dev numbers of the containing
/// filesystem) are constant zeros.
struct Entry<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    data: &'a [u8],
    rdev_major: u32,
    rdev_minor: u32,
}

impl<W: Write> CpioWriter<W> {
    /// `mtime` (seconds since the epoch) is stamped on every entry.
    pub fn new(out: W, mtime: u32) -> Self {
        CpioWriter {
            out,
            mtime,
            // Inode 0 is avoided: some unpackers treat it as "no inode".
            next_ino: 1,
            offset: 0,
            paths: BTreeSet::new(),
            dirs: BTreeSet::new(),
        }
    }

    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.register(path, mode, true)?;
        // nlink 2 ("." and the entry in its parent) is what a fresh, empty directory has; the
        // kernel ignores it for directories, but tools listing the archive show it.
        self.entry(&Entry {
            name: path,
            mode: S_IFDIR | mode,
            nlink: 2,
            data: &[],
            rdev_major: 0,
            rdev_minor: 0,
        })
    }

    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.register(path, mode, false)?;
        self.entry(&Entry {
            name: path,
            mode: S_IFREG | mode,
            nlink: 1,
            data,
            rdev_major: 0,
            rdev_minor: 0,
        })
    }

    /// The target is stored as the entry's data, without a terminator, as the kernel expects.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        if target.is_empty() || target.contains('\0') {
            return Err(CpioError::InvalidPath {
                path: target.to_string(),
                reason: "symlink target must be non-empty and contain no NUL",
            });
        }
        self.register(path, 0o777, false)?;
        self.entry(&Entry {
            name: path,
            mode: S_IFLNK | 0o777,
            nlink: 1,
            data: target.as_bytes(),
            rdev_major: 0,
            rdev_minor: 0,
        })
    }

    pub fn add_char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.register(path, mode, false)?;
        self.entry(&Entry {
            name: path,
            mode: S_IFCHR | mode,
            nlink: 1,
            data: &[],
            rdev_major: major,
            rdev_minor: minor,
        })
    }

    /// Writes the `TRAILER!!!` entry and returns the underlying writer, flushed.
    pub fn finish(mut self) -> Result<W> {
        // Written directly rather than via `entry`: the trailer takes no inode number and its
        // name is not a path.
        self.write_entry(
            0,
            &Entry {
                name: TRAILER,
                mode: 0,
                nlink: 1,
                data: &[],
                rdev_major: 0,
                rdev_minor: 0,
            },
        )?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Validates `path` and `mode` and records the path; done before anything is written so a
    /// rejected call leaves the archive unchanged.
    fn register(&mut self, path: &str, mode: u32, is_dir: bool) -> Result<()> {
        validate_path(path)?;
        if mode & !PERMISSION_MASK != 0 {
            return Err(CpioError::InvalidMode {
                path: path.to_string(),
                mode,
            });
        }
        if self.paths.contains(path) {
            return Err(CpioError::Duplicate {
                path: path.to_string(),
            });
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !self.dirs.contains(parent) {
                return Err(CpioError::MissingParent {
                    path: path.to_string(),
                    parent: parent.to_string(),
                });
            }
        }
        self.paths.insert(path.to_string());
        if is_dir {
            self.dirs.insert(path.to_string());
        }
        Ok(())
    }

    fn entry(&mut self, entry: &Entry<'_>) -> Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.write_entry(ino, entry)
    }

    fn write_entry(&mut self, ino: u32, e: &Entry<'_>) -> Result<()> {
        let size = u32::try_from(e.data.len()).map_err(|_| CpioError::TooLarge {
            path: e.name.to_string(),
            len: e.data.len(),
        })?;
        // namesize counts the terminating NUL. Paths are short, so this cannot overflow u32.
        let namesize = e.name.len() as u32 + 1;
        let fields = [
            ino,
            e.mode,
            0, // uid
            0, // gid
            e.nlink,
            self.mtime,
            size,
            0, // major of the device the file lived on: meaningless here
            0, // minor, likewise
            e.rdev_major,
            e.rdev_minor,
            namesize,
            0, // check: only used by the "crc" variant (070702)
        ];
        let mut header = String::with_capacity(HEADER_LEN);
        header.push_str(MAGIC);
        for field in fields {
            // Upper-case hex as the kernel's own gen_init_cpio writes; the kernel accepts both.
            header.push_str(&format!("{field:08X}"));
        }
        debug_assert_eq!(header.len(), HEADER_LEN);
        self.put(header.as_bytes())?;
        self.put(e.name.as_bytes())?;
        self.put(&[0])?;
        // The header plus name is padded so the data starts on a 4-byte boundary ...
        self.pad()?;
        self.put(e.data)?;
        // ... and the data is padded so the next header does too.
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }
}

fn validate_path(path: &str) -> Result<()> {
    let bad = |reason| {
        Err(CpioError::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') {
        // The kernel unpacks relative to rootfs; "/x" would only work by accident.
        return bad("must be relative (no leading '/')");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    if path == TRAILER {
        // An entry with this name would end the archive early.
        return bad("reserved name");
    }
    for component in path.split('/') {
        match component {
            "" => return bad("empty component (double or trailing '/')"),
            "." | ".." => return bad("'.' and '..' components are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal newc parser, independent of the writer, that checks the format's invariants
    /// while it goes: magic, hex fields, NUL-terminated names, 4-byte padding (as zeros).
    #[derive(Debug, PartialEq)]
    struct Parsed {
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        mtime: u32,
        rdev_major: u32,
        rdev_minor: u32,
        name: String,
        data: Vec<u8>,
    }

    fn parse(archive: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "header at unaligned offset {pos}");
            let h = &archive[pos..pos + HEADER_LEN];
            assert_eq!(&h[..6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            assert_eq!(field(7), 0, "devmajor");
            assert_eq!(field(8), 0, "devminor");
            assert_eq!(field(12), 0, "check");
            let namesize = field(11) as usize;
            let name_start = pos + HEADER_LEN;
            let name = &archive[name_start..name_start + namesize];
            assert_eq!(name[namesize - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&name[..namesize - 1])
                .unwrap()
                .to_string();
            let data_start = (name_start + namesize).next_multiple_of(4);
            assert!(archive[name_start + namesize..data_start]
                .iter()
                .all(|&b| b == 0));
            let size = field(6) as usize;
            let data = archive[data_start..data_start + size].to_vec();
            let next = (data_start + size).next_multiple_of(4);
            assert!(archive[data_start + size..next].iter().all(|&b| b == 0));
            pos = next;
            let done = name == TRAILER;
            out.push(Parsed {
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                rdev_major: field(9),
                rdev_minor: field(10),
                name,
                data,
            });
            if done {
                assert_eq!(pos, archive.len(), "bytes after the trailer");
                return out;
            }
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new(), 1_700_000_000);
        w.add_dir("dev", 0o755).unwrap();
        w.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        w.add_dir("bin", 0o755).unwrap();
        w.add_file("init", 0o755, b"#!/bin/sh\nexec /bin/true\n")
            .unwrap();
        w.add_file("bin/empty", 0o644, b"").unwrap();
        w.add_file("bin/x", 0o4755, b"abc").unwrap();
        w.add_symlink("bin/sh", "busybox").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn header_fields_and_padding() {
        let entries = parse(&sample());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "bin",
                "init",
                "bin/empty",
                "bin/x",
                "bin/sh",
                TRAILER
            ]
        );
        for (i, e) in entries[..7].iter().enumerate() {
            assert_eq!(e.ino, i as u32 + 1, "{}", e.name);
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000), "{}", e.name);
        }
        let dev = &entries[0];
        assert_eq!((dev.mode, dev.nlink), (0o040755, 2));
        let console = &entries[1];
        assert_eq!((console.mode, console.nlink), (0o020600, 1));
        assert_eq!((console.rdev_major, console.rdev_minor), (5, 1));
        assert!(console.data.is_empty());
        let init = &entries[3];
        assert_eq!((init.mode, init.nlink), (0o100755, 1));
        assert_eq!(init.data, b"#!/bin/sh\nexec /bin/true\n");
        assert_eq!(entries[5].mode, 0o104755);
        let sh = &entries[6];
        assert_eq!(sh.mode, 0o120777);
        assert_eq!(sh.data, b"busybox");
        let trailer = &entries[7];
        assert_eq!(
            (trailer.ino, trailer.mode, trailer.nlink, trailer.mtime),
            (0, 0, 1, 1_700_000_000)
        );
    }

    #[test]
    fn exact_bytes_of_one_entry() {
        let mut w = CpioWriter::new(Vec::new(), 0x10);
        w.add_file("ab", 0o644, b"hello").unwrap();
        let bytes = w.finish().unwrap();
        let expected_header = "070701\
            00000001000081A4000000000000000000000001000000100000000500000000\
            00000000000000000000000000000003\
            00000000";
        assert_eq!(&bytes[..110], expected_header.as_bytes());
        // 110 + 3 name bytes = 113, padded to 116; 5 data bytes padded to 8.
        assert_eq!(&bytes[110..116], b"ab\0\0\0\0");
        assert_eq!(&bytes[116..124], b"hello\0\0\0");
        assert_eq!(&bytes[124..130], b"070701");
    }

    #[test]
    fn deterministic() {
        assert!(sample() == sample());
    }

    #[test]
    fn rejects_bad_input_without_writing() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        w.add_dir("etc", 0o755).unwrap();
        let before = w.offset;
        let bad_paths = [
            "",
            "/etc/passwd",
            "etc//x",
            "etc/",
            "etc/../x",
            "./x",
            "a\0b",
            TRAILER,
        ];
        for p in bad_paths {
            assert!(
                matches!(
                    w.add_file(p, 0o644, b""),
                    Err(CpioError::InvalidPath { .. })
                ),
                "{p:?}"
            );
        }
        assert!(matches!(
            w.add_file("etc", 0o644, b""),
            Err(CpioError::Duplicate { .. })
        ));
        assert!(matches!(
            w.add_file("usr/bin/x", 0o755, b""),
            Err(CpioError::MissingParent { .. })
        ));
        assert!(matches!(
            w.add_dir("etc/x", 0o040755),
            Err(CpioError::InvalidMode { .. })
        ));
        assert!(matches!(
            w.add_symlink("etc/l", ""),
            Err(CpioError::InvalidPath { .. })
        ));
        // A file is not a parent.
        w.add_file("etc/f", 0o644, b"").unwrap();
        assert!(matches!(
            w.add_file("etc/f/g", 0o644, b""),
            Err(CpioError::MissingParent { .. })
        ));
        assert!(w.offset > before);
        let entries = parse(&w.finish().unwrap());
        assert_eq!(entries.len(), 3);
        // Failed calls consumed no inode numbers.
        assert_eq!(entries[1].ino, 2);
    }

    /// GNU cpio, when installed, must list the archive the same way; skipped otherwise.
    #[test]
    fn gnu_cpio_reads_it() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        if !matches!(Command::new("cpio").arg("--version").output(), Ok(o) if o.status.success()) {
            eprintln!("cpio not found; skipping");
            return;
        }
        let mut child = Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Vec<&str>> = stdout
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines.len(), 7, "{stdout}");
        let perms: Vec<&str> = lines.iter().map(|l| l[0]).collect();
        assert_eq!(
            perms,
            [
                "drwxr-xr-x",
                "crw-------",
                "drwxr-xr-x",
                "-rwxr-xr-x",
                "-rw-r--r--",
                "-rwsr-xr-x",
                "lrwxrwxrwx"
            ],
            "{stdout}"
        );
        assert!(stdout.contains("dev/console"), "{stdout}");
        assert!(stdout.contains("5,"), "device numbers missing: {stdout}");
        assert!(stdout.contains("bin/sh -> busybox"), "{stdout}");
        for l in &lines {
            // Owner and group columns: uid/gid 0, shown by name where /etc/passwd has it.
            assert!(matches!(l[2], "root" | "0"), "{stdout}");
            assert!(matches!(l[3], "root" | "0"), "{stdout}");
        }
        assert!(stdout.contains("2023"), "mtime not shown as 2023: {stdout}");
    }
}
